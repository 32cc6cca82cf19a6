"""Holds 200 streamed chats open through the gateway for a minute and watches
the web process's memory: the load benchmark of issue 12.

It starts the console's web process as `make run` does (`uvicorn
config.asgi:application`, one process) on PostgreSQL and the Redis server,
and the small OpenAI-compatible upstream (tests/support/openai_upstream.py,
32 tokens a stream, as fast as it can); registers a ready deployment served
by that upstream and a gateway key (the rows bench/gateway.py makes); then
S workers (200) each send one streamed `/v1/chat/completions` after another
for a warm-up and D seconds (60), and it prints:

- requests completed in the measured window, errors by kind, requests and
  tokens per second, time to first token and total time (p50/p95/p99);
- the web process's resident memory (VmRSS of /proc/<pid>/status, sampled
  every second): at the start of the measured window (after the warm-up),
  its peak, at the end, and 10 s after the load stopped; and its growth.

Targets: zero errors, and growth (end minus start) under 50 MB. Exit status 0
when both are met.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/plugboard REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/gateway_load.py [--streams 200] [--duration 60] [--warmup 10]

With a PostgreSQL DATABASE_URL it uses a database of its own on that server
(the name plus `_bench_gateway`, created afresh and dropped at the end unless
--keep); without one, SQLite and the embedded Redis in a temporary folder (not
production's topology: it says so). The gateway's rate limits are raised far
above what the load reaches (still counted, so their cost is in the figures),
or 200 streams from one address and one key would be refused with 429s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import statistics
import time
from collections import Counter

import aiohttp

from bench import scratch
from bench.gateway import (
    REQUEST_TIMEOUT,
    TOKENS,
    Sample,
    Server,
    Target,
    Unavailable,
    check_once,
    create_rows,
    host_cpu,
    log,
    one_request,
    process_cpu,
    run_async,
    usage_records,
    uvicorn_argv,
)
from tests.support.s3_server import free_port

TARGET_GROWTH_MB = 50.0
RATE_LIMIT = "100000000/60"
IDLE_AFTER_S = 10  # how long after the load the memory is read once more


def rss_mb(pid: int) -> float | None:
    """The process's resident set (VmRSS) in MB (10^6 bytes); None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


def error_kind(error: str) -> str:
    """ "HTTP 429: {...}" -> "HTTP 429"; "ClientPayloadError: ..." -> "ClientPayloadError"; the rest as is."""
    head = error.split(":", 1)[0]
    return head if head.startswith("HTTP ") or head.isidentifier() else error


async def hold_streams(
    target: Target, *, streams: int, warmup: float, duration: float, web_pid: int, upstream_pid: int
) -> dict:
    """`streams` workers send one streamed request after another for warmup + duration seconds, while the
    web process's RSS is read every second. Latencies are of the requests started in the measured window,
    throughput counts those that ended in it (errors: those started in it)."""
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=streams, limit_per_host=streams, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    samples: list[Sample] = []
    rss: list[tuple[float, float]] = []  # (seconds since the measured window began, MB)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
    ) as session:
        began = time.perf_counter()
        window_start, window_end = began + warmup, began + warmup + duration

        async def worker() -> None:
            while time.perf_counter() < window_end:
                samples.append(await one_request(session, target, headers))

        async def sampler() -> None:
            while True:
                if (mb := rss_mb(web_pid)) is not None:
                    rss.append((time.perf_counter() - window_start, mb))
                await asyncio.sleep(1.0)

        watcher = asyncio.ensure_future(sampler())
        workers = [asyncio.ensure_future(worker()) for _ in range(streams)]
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        pids = {"web": web_pid, "upstream": upstream_pid, "loadgen": os.getpid()}
        cpu_before = {name: process_cpu(pid) for name, pid in pids.items()} | {"host": host_cpu()}
        rss_start = rss_mb(web_pid)
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        cpu_after = {name: process_cpu(pid) for name, pid in pids.items()} | {"host": host_cpu()}
        measured_s = time.perf_counter() - window_start
        rss_end = rss_mb(web_pid)
        await asyncio.wait_for(asyncio.gather(*workers), REQUEST_TIMEOUT + 5)
        await asyncio.sleep(IDLE_AFTER_S)
        watcher.cancel()
        rss_idle = rss_mb(web_pid)

    inside = [s for s in samples if window_start <= s.start < window_end]
    good = [s for s in inside if s.error is None]
    errors = Counter(error_kind(s.error) for s in inside if s.error is not None)
    examples = {}
    for s in inside:
        if s.error is not None:
            examples.setdefault(error_kind(s.error), s.error[:300])
    ended = sum(1 for s in samples if s.error is None and window_start <= s.end < window_end)
    ttfts = [1000 * s.ttft for s in good if s.ttft is not None]
    totals = [1000 * (s.end - s.start) for s in good]
    in_window = [mb for at, mb in rss if 0 <= at <= duration] + ([rss_end] if rss_end is not None else [])
    cores = {name: (cpu_after[name] - cpu_before[name]) / measured_s for name in pids}
    cores["others"] = max(0.0, (cpu_after["host"] - cpu_before["host"]) / measured_s - sum(cores.values()))
    return {
        "streams": streams, "duration_s": duration, "warmup_s": warmup,
        "requests_completed": ended, "requests_started": len(inside), "errors": sum(errors.values()),
        "errors_by_kind": dict(errors), "error_examples": examples, "all_samples": len(samples),
        "rps": ended / duration, "tokens_per_s": ended * TOKENS / duration,
        "ttft_ms": _percentiles(ttfts), "total_ms": _percentiles(totals),
        "rss_mb": {
            "start": rss_start, "peak": max(in_window, default=None), "end": rss_end, "idle_after": rss_idle,
            "growth": rss_end - rss_start if rss_start is not None and rss_end is not None else None,
            "peak_over_start": max(in_window) - rss_start if in_window and rss_start is not None else None,
            "samples": [(round(at, 1), round(mb, 1)) for at, mb in rss],
        },
        "cpu_cores": {name: round(value, 3) for name, value in cores.items()},
    }  # fmt: skip


def _percentiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"p50": values[0] if values else None, "p95": None, "p99": None}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p95": q[94], "p99": q[98]}


def print_report(r: dict) -> None:
    def ms(d: dict) -> str:
        return "  ".join(f"{k} {v:8.1f}" if v is not None else f"{k}      n/a" for k, v in d.items())

    m = r["rss_mb"]
    print(f"\n{r['streams']} streams, {r['warmup_s']:g} s warm-up + {r['duration_s']:g} s measured")
    print(f"  requests completed   {r['requests_completed']}  ({r['rps']:.1f}/s; {r['requests_started']} started)")
    print(f"  tokens per second    {r['tokens_per_s']:.0f}  ({TOKENS} a stream)")
    print(f"  errors               {r['errors']}  {r['errors_by_kind'] or ''}")
    for kind, example in r["error_examples"].items():
        print(f"    {kind}: e.g. {example}")
    print(f"  time to first token  {ms(r['ttft_ms'])}  (ms)")
    print(f"  total time           {ms(r['total_ms'])}  (ms)")
    print(
        f"  web process RSS      start {m['start']:.1f}  peak {m['peak']:.1f}  end {m['end']:.1f}  "
        f"{IDLE_AFTER_S} s after {m['idle_after']:.1f}  (MB)"
    )
    print(f"  RSS growth           {m['growth']:+.1f} MB (end - start), peak {m['peak_over_start']:+.1f} MB over start")
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores"].items())
    print(f"  CPU cores used       {cpu} (others: processes this benchmark did not start)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200, help="concurrent streamed chats (200)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds (60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the measurement (10)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and the database")
    args = parser.parse_args()

    os.environ.update(
        PLUGBOARD_RATE_LIMIT_GATEWAY_PER_ADDRESS=RATE_LIMIT, PLUGBOARD_RATE_LIMIT_GATEWAY_PER_KEY=RATE_LIMIT
    )
    world = scratch.prepare("plugboard-bench-load-", database_suffix="_bench_gateway")
    tmp = world.tmp
    if world.database:
        where = f"{world.where} (created for this run)"
    else:
        where = f"{world.where} (NOT production's topology: set DATABASE_URL and REDIS_URL)"

    def terminate(signum, _frame):
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    servers: list[Server] = []
    try:
        world.start()
        from django.conf import settings

        log(f"database: {where}; Redis: {settings.REDIS_URL}")
        print(f"rate limits: gateway per address and per key set to {RATE_LIMIT} for this run (still counted)")

        upstream_key = secrets.token_urlsafe(16)
        port = free_port()
        upstream = Server(
            "upstream", uvicorn_argv("tests.support.openai_upstream:app", port),
            {**os.environ, "UPSTREAM_API_KEY": upstream_key}, tmp / "upstream.log", port,
        )  # fmt: skip
        servers.append(upstream.start())
        gateway_key = create_rows(upstream.port, upstream_key, tmp / "cache")
        port = free_port()
        web = Server("web", uvicorn_argv("config.asgi:application", port), dict(os.environ), tmp / "web.log", port)
        servers.append(web.start())
        upstream.wait_listening()
        web.wait_listening()
        target = Target("gateway", f"http://127.0.0.1:{web.port}/v1/chat/completions", gateway_key, [web, upstream])
        note = run_async(check_once(target))
        log(
            f"web process pid {web.process.pid} answers 200 with {TOKENS} tokens ({note}); RSS {rss_mb(web.process.pid):.1f} MB"
        )

        log(f"{args.streams} streams: {args.warmup:g} s warm-up + {args.duration:g} s measured")
        result = run_async(
            hold_streams(
                target, streams=args.streams, warmup=args.warmup, duration=args.duration,
                web_pid=web.process.pid, upstream_pid=upstream.process.pid,
            )
        )  # fmt: skip
        time.sleep(1.5)  # the gateway writes its usage records once a second
        usage = usage_records()
        print_report(result)
        print(f"  usage records        {usage['count']} written, by status {usage['by_status']}")
        growth = result["rss_mb"]["growth"]
        met = {
            "zero_errors": result["errors"] == 0,
            "growth_under_50_mb": growth is not None and growth < TARGET_GROWTH_MB,
        }
        print(
            f"\ntargets: zero errors: {'met' if met['zero_errors'] else 'NOT MET'}; RSS growth {growth:+.1f} MB "
            f"< {TARGET_GROWTH_MB:g} MB: {'met' if met['growth_under_50_mb'] else 'NOT MET'}"
        )
        print(f"load average: {Path('/proc/loadavg').read_text().strip()}; cores: {os.cpu_count()}; database: {where}")
        summary = {"result": result, "usage_records": usage, "met": met, "database": where, "rate_limit": RATE_LIMIT}
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
            log(f"wrote {args.json}")
        return 0 if all(met.values()) else 1
    except Unavailable as exc:
        log(f"ABORTED: {exc}")
        return 2
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'})")
        return 130
    finally:
        log("stopping the servers")
        for server in reversed(servers):
            server.stop()
        world.close(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
