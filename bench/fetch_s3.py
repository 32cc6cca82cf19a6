"""Measures the artifact cache's S3 download throughput against boto3's own.

Starts moto's S3 server on loopback, uploads a 1 GiB artifact of random bytes
(4 files of 256 MiB by default), then alternately downloads it with boto3's
`client.download_file` (default TransferConfig) and fetches it with
`ArtifactCache.fetch` (chunked, parallel, resumable, verified against the
objects' ETags) into a fresh cache. Prints every run, the best of each side
and the ratio cache / boto3 (target: >= 0.9). Cleans up after itself.

    .venv/bin/python bench/fetch_s3.py [--files 4] [--file-mib 256] [--runs 2]
                                       [--chunk-mib 16] [--parallel 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import argparse
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

from cluster.cache import ArtifactCache, FetchReport, Wanted
from tests.support.s3_server import S3Server
from tests.support.s3rver import S3rver

MiB = 1024 * 1024
BUCKET = "plugboard-bench"
PREFIX = "bench-artifact/"
# (chunk MiB, parallel) pairs for --sweep; 8 MiB x 10 is boto3's own default TransferConfig.
SWEEP = [(8, 10), (8, 4), (8, 8), (8, 16), (16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16), (64, 4), (64, 8)]
DEFAULTS = inspect.signature(ArtifactCache).parameters  # the engine's own chunk_size and parallel


def make_files(folder: Path, count: int, size: int) -> dict[str, Path]:
    """Writes `count` files of `size` random bytes under `folder`; returns {artifact path: file}."""
    files = {}
    for i in range(count):
        path = folder / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        with open(path, "wb") as f:
            for _ in range(0, size, 16 * MiB):
                f.write(os.urandom(min(16 * MiB, size)))
            f.truncate(size)
        files[path.name] = path
    return files


def s3_reader(client, bucket: str, prefix: str):
    """Returns a RangeReader streaming ranged GETs in 1 MiB pieces, as registry.sources.s3 does."""

    def read(path: str, start: int, end: int) -> Iterator[bytes]:
        body = client.get_object(Bucket=bucket, Key=prefix + path, Range=f"bytes={start}-{end - 1}")["Body"]
        try:
            yield from body.iter_chunks(MiB)
        finally:
            body.close()

    return read


def run_boto3(client, names: list[str], into: Path) -> float:
    """Downloads every object with client.download_file, one after another; returns the seconds it took."""
    into.mkdir()
    started = time.perf_counter()
    for name in names:
        client.download_file(BUCKET, PREFIX + name, str(into / name))
    elapsed = time.perf_counter() - started
    shutil.rmtree(into)
    return elapsed


def run_cache(
    server: S3Server | S3rver, wanted: list[Wanted], into: Path, *, chunk: int, parallel: int
) -> tuple[float, FetchReport]:
    """Fetches the artifact into a fresh cache at `into`; returns the seconds it took and the report."""
    # One pooled connection per fetching thread, or threads queue for connections.
    client = server.client(max_pool_connections=max(parallel, 10))
    cache = ArtifactCache(into, chunk_size=chunk, parallel=parallel)
    started = time.perf_counter()
    report = cache.fetch("bench", wanted, s3_reader(client, BUCKET, PREFIX))
    elapsed = time.perf_counter() - started
    shutil.rmtree(into)
    return elapsed, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--chunk-mib", type=float, default=DEFAULTS["chunk_size"].default / MiB)
    parser.add_argument("--parallel", type=int, default=DEFAULTS["parallel"].default)
    parser.add_argument("--sweep", action="store_true", help="then time the cache once per setting in SWEEP")
    parser.add_argument(
        "--store", choices=["moto", "s3rver"], default="moto",
        help="moto's server over HTTP, or s3rver (npm) over TLS with a private CA",
    )  # fmt: skip
    args = parser.parse_args()
    chunk = int(args.chunk_mib * MiB)
    total = args.files * args.file_mib * MiB

    work = Path(tempfile.mkdtemp(prefix="plugboard-bench-"))
    server = S3Server() if args.store == "moto" else S3rver()
    try:
        print(f"Writing {args.files} x {args.file_mib} MiB of random bytes under {work} ...", flush=True)
        (work / "source").mkdir()
        sources = make_files(work / "source", args.files, args.file_mib * MiB)
        server.start()
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        started = time.perf_counter()
        for name, path in sources.items():
            client.upload_file(str(path), BUCKET, PREFIX + name)
        print(f"Uploaded to {args.store} in {time.perf_counter() - started:.1f} s", flush=True)
        shutil.rmtree(work / "source")  # the store holds its own copy; keep the disk free for the downloads
        wanted = []
        for name in sources:
            head = client.head_object(Bucket=BUCKET, Key=PREFIX + name)
            wanted.append(Wanted(name, head["ContentLength"], head["ETag"].strip('"'), "etag"))
        print(f"ETag of the first file: {wanted[0].checksum}")

        print(f"cache settings: chunk_size={chunk / MiB:g} MiB, parallel={args.parallel}", flush=True)
        boto_runs: list[float] = []
        cache_runs: list[float] = []
        for run in range(args.runs):
            boto_runs.append(run_boto3(client, list(sources), work / f"boto3-{run}"))
            print(f"  boto3 download_file  run {run + 1}: {total / MiB / boto_runs[-1]:7.1f} MB/s", flush=True)
            elapsed, report = run_cache(server, wanted, work / f"cache-{run}", chunk=chunk, parallel=args.parallel)
            cache_runs.append(elapsed)
            assert report.bytes_transferred >= total and not report.unverified, report
            extra = report.bytes_transferred - total  # a piece read again after a dropped connection
            note = f", {extra} bytes read twice" if extra else ""
            print(
                f"  ArtifactCache.fetch  run {run + 1}: {total / MiB / elapsed:7.1f} MB/s (verified{note})", flush=True
            )

        boto_best = total / MiB / min(boto_runs)
        cache_best = total / MiB / min(cache_runs)
        print()
        print(f"artifact: {args.files} x {args.file_mib} MiB = {total / MiB:.0f} MiB; MB/s = MiB/s")
        print(f"boto3 download_file (default TransferConfig): best {boto_best:.1f} MB/s")
        print(f"ArtifactCache.fetch (chunk {chunk / MiB:g} MiB, parallel {args.parallel}): best {cache_best:.1f} MB/s")
        print(f"ratio cache / boto3: {cache_best / boto_best:.2f} (target >= 0.9)")
        if args.sweep:
            print("\nsweep (one run each):", flush=True)
            for sweep_chunk, sweep_parallel in SWEEP:
                elapsed, _ = run_cache(server, wanted, work / "sweep", chunk=sweep_chunk * MiB, parallel=sweep_parallel)
                rate = total / MiB / elapsed
                print(
                    f"  chunk {sweep_chunk:3d} MiB, parallel {sweep_parallel:2d}: {rate:7.1f} MB/s, "
                    f"ratio {rate / boto_best:.2f}",
                    flush=True,
                )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
