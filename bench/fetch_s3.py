"""Measures the artifact cache's S3 download throughput against boto3's own.

Starts moto's S3 server on loopback, uploads a 1 GiB artifact of random bytes
(4 files of 256 MiB by default), then alternately downloads it with boto3's
`client.download_file` (default TransferConfig) and fetches it with
`ArtifactCache.fetch` (chunked, parallel, resumable, verified against the
objects' ETags) into a fresh cache. Prints every run, the best of each side
and the ratio cache / boto3 (target: >= 1). Cleans up after itself.

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
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator

from cluster.cache import ArtifactCache, FetchReport, Wanted, checksums
from cluster.cache.checksums import Verifier
from cluster.cache.partial import Job
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


def group_cpu_seconds(pgid: int) -> float:
    """Returns the CPU seconds (user + system) used so far by the processes of a process group."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] is pgrp; utime and stime are fields[11] and fields[12]
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Wall seconds, this process's CPU seconds (every thread) and the store's CPU seconds over a block."""

    def __init__(self, server: S3Server | S3rver) -> None:
        self.pgid = server.process.pid  # started in a session of its own: its pid is the group's id

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), time.process_time(), group_cpu_seconds(self.pgid))
        return self

    def __exit__(self, *exc) -> None:
        end = (time.perf_counter(), time.process_time(), group_cpu_seconds(self.pgid))
        self.wall, self.cpu, self.server_cpu = (b - a for a, b in zip(self._start, end, strict=True))

    def line(self) -> str:
        return f"wall {self.wall:5.2f} s, client CPU {self.cpu:5.2f} s, store CPU {self.server_cpu:5.2f} s"


class StageClock:
    """With --profile: the CPU seconds the cache's threads spend hashing and writing, summed over threads
    (time.thread_time around the sha256 pass, the manifest's digest, which runs in a thread of its own, and
    Job.write), to tell what the client's CPU goes to."""

    def __init__(self) -> None:
        self.seconds = {"sha256": 0.0, "manifest digest": 0.0, "write": 0.0}
        self.last_write = 0.0  # when the last byte from the store was written (time.perf_counter)
        self._lock = threading.Lock()

    def wrap(self, owner, method: str, stage: str) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[stage] += time.thread_time() - started
                    if stage == "write":
                        self.last_write = max(self.last_write, time.perf_counter())

        setattr(owner, method, timed)

    def take(self, ended: float) -> str:
        """The CPU seconds per stage, and how long the fetch went on after its last byte arrived: the
        verification that did not overlap the download."""
        line = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.seconds.items())
        line += f"; after the last byte: {ended - self.last_write:.2f} s"
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return line


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
) -> tuple[float, FetchReport, float]:
    """Fetches the artifact into a fresh cache at `into`; returns the seconds it took, the report, and when it
    ended (time.perf_counter)."""
    # One pooled connection per fetching thread, or threads queue for connections.
    client = server.client(max_pool_connections=max(parallel, 10))
    cache = ArtifactCache(into, chunk_size=chunk, parallel=parallel)
    started = time.perf_counter()
    report = cache.fetch("bench", wanted, s3_reader(client, BUCKET, PREFIX))
    ended = time.perf_counter()
    shutil.rmtree(into)
    return ended - started, report, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--chunk-mib", type=float, default=DEFAULTS["chunk_size"].default / MiB)
    parser.add_argument("--parallel", type=int, default=DEFAULTS["parallel"].default)
    parser.add_argument("--sweep", action="store_true", help="then time the cache once per setting in SWEEP")
    parser.add_argument("--profile", action="store_true", help="also sum the cache threads' CPU in hashing and writing")
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
        if sum(w.size for w in wanted) != total:  # the store kept something other than what was uploaded
            raise SystemExit(f"{args.store} holds {sum(w.size for w in wanted)} bytes, not the {total} uploaded")

        print(f"cache settings: chunk_size={chunk / MiB:g} MiB, parallel={args.parallel}", flush=True)
        clock = StageClock()
        if args.profile:
            clock.wrap(Verifier, "update", "sha256")  # its own thread's CPU only: the sha256
            clock.wrap(checksums._Hashlib, "update", "manifest digest")
            clock.wrap(checksums._MultipartETag, "update", "manifest digest")
            clock.wrap(Job, "write", "write")
        boto_runs: list[float] = []
        cache_runs: list[float] = []
        for run in range(args.runs):
            with CpuMeter(server) as meter:
                boto_runs.append(run_boto3(client, list(sources), work / f"boto3-{run}"))
            print(f"  boto3 download_file  run {run + 1}: {total / MiB / boto_runs[-1]:7.1f} MB/s  ({meter.line()})")
            with CpuMeter(server) as meter:
                elapsed, report, ended = run_cache(
                    server, wanted, work / f"cache-{run}", chunk=chunk, parallel=args.parallel
                )
            cache_runs.append(elapsed)
            assert report.bytes_transferred == total and not report.unverified, report
            print(
                f"  ArtifactCache.fetch  run {run + 1}: {total / MiB / elapsed:7.1f} MB/s  ({meter.line()}, verified)"
            )
            if args.profile:
                print(f"    cache threads' CPU: {clock.take(ended)}")
            sys.stdout.flush()

        boto_best = total / MiB / min(boto_runs)
        cache_best = total / MiB / min(cache_runs)
        boto_median = total / MiB / statistics.median(boto_runs)
        cache_median = total / MiB / statistics.median(cache_runs)
        print()
        print(f"artifact: {args.files} x {args.file_mib} MiB = {total / MiB:.0f} MiB; MB/s = MiB/s")
        print(f"boto3 download_file (default TransferConfig): best {boto_best:.1f} MB/s, median {boto_median:.1f}")
        print(
            f"ArtifactCache.fetch (chunk {chunk / MiB:g} MiB, parallel {args.parallel}): "
            f"best {cache_best:.1f} MB/s, median {cache_median:.1f}"
        )
        print(f"ratio cache / boto3: best {cache_best / boto_best:.2f}, median {cache_median / boto_median:.2f}")
        if args.sweep:
            print("\nsweep (one run each):", flush=True)
            for sweep_chunk, sweep_parallel in SWEEP:
                elapsed, _, _ = run_cache(
                    server, wanted, work / "sweep", chunk=sweep_chunk * MiB, parallel=sweep_parallel
                )
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
