"""What Django's request cycle costs per request, against the gateway's lean
ASGI path, in the same uvicorn process: the measurement behind serving /v1/
beside Django rather than through it (see inference/gateway/app.py).

Both requests do no database work and answer at once: `GET /inference/` as
a signed-out visitor runs Django's whole middleware stack and URL resolver
and answers a redirect to the sign-in page; `GET /v1/models` without a key
runs the gateway's path and answers 401. The difference is the per-request
price Django would add to every gateway request before any proxying.

    .venv/bin/python bench/asgi_overhead.py [--requests 3000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time

import aiohttp

from config import keys
from tests.support.s3_server import free_port

ROOT = Path(__file__).resolve().parent.parent


async def measure(url: str, expect: int, count: int) -> list[float]:
    """Sequential requests over one kept-alive connection; milliseconds each."""
    timings = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(count + count // 10):
            started = time.perf_counter()
            async with session.get(url, allow_redirects=False) as response:
                await response.read()
                assert response.status == expect, (url, response.status)
            if i >= count // 10:  # the first tenth warms up
                timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="asgi-overhead-"))
    env = {**os.environ, "PLUGBOARD_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "config.settings"}
    os.environ.update(PLUGBOARD_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="config.settings")
    keys.ensure_files(var)  # the console's keys, as `make run` writes them
    import django

    django.setup()
    from django.conf import settings

    from config import embedded_redis

    embedded_redis.ensure_running(settings.REDIS_URL)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--no-access-log",
         "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        results = {}
        for name, path, status in (("django", "/inference/", 302), ("gateway", "/v1/models", 401)):
            timings = asyncio.run(measure(base + path, status, args.requests))
            results[name] = (statistics.median(timings), statistics.quantiles(timings, n=100)[98])
        print(f"{'path':<40} {'median ms':>10} {'p99 ms':>10}")
        print(
            f"{'Django cycle (GET /inference/ -> 302)':<40} {results['django'][0]:>10.3f} {results['django'][1]:>10.3f}"
        )
        print(
            f"{'gateway path (GET /v1/models -> 401)':<40} {results['gateway'][0]:>10.3f} {results['gateway'][1]:>10.3f}"
        )
        print(f"Django's cycle costs {results['django'][0] - results['gateway'][0]:.3f} ms more per request (median).")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        embedded_redis.stop(settings.REDIS_URL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
