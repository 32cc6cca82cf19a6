"""Measures what the OpenAI-compatible gateway adds to a streamed chat
completion, against the model server alone and against LiteLLM's proxy.

The same closed-loop load (C workers, each sending one streamed
`/v1/chat/completions` after another) goes, one target after the other:

- direct:  to a local OpenAI-compatible upstream (tests/support/openai_upstream.py,
           32 tokens a stream, as fast as it can);
- gateway: through Plugboard's gateway (`config.asgi:application` under uvicorn,
           one process) with a gateway key: key checks and usage recording on,
           as in production;
- litellm: through LiteLLM's proxy (`.venv-litellm`, one worker, a master key,
           no database), routed to the same upstream.

For each target and concurrency it prints the median and p99 time to first
token (request sent to the first SSE chunk with content), the median and p99
total time (to `data: [DONE]`), requests per second over the measured window,
and the CPU each process used. Then the targets (at the lowest concurrency:
at most +1 ms median TTFT and +2 ms median total against direct; at the
highest: at least 0.5x direct's requests per second), for the gateway and for
LiteLLM, and a JSON summary (also written to --json PATH).

    .venv/bin/python bench/gateway.py [--duration 10] [--warmup 2] [--concurrency 1,64] [--skip-litellm] [--json PATH]

Everything runs on loopback from a fresh temporary folder (SQLite, the
embedded Redis), and every process it starts is stopped at the end.
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
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from bench import scratch
from bench.scratch import log
from tests.support.s3_server import free_port

try:
    import uvloop
except ImportError:  # the plain loop works, it only costs the load generator more CPU
    uvloop = None

ROOT = Path(__file__).resolve().parents[1]
LITELLM_BIN = ROOT / ".venv-litellm" / "bin" / "litellm"
LITELLM_CONFIG = ROOT / "bench" / "litellm_config.yaml"
MODEL = "bench"
TOKENS = 32  # what the upstream streams when max_tokens is absent
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
START_TIMEOUT = 120  # seconds a server may take to listen (LiteLLM imports for a while on 2 cores)
REQUEST_TIMEOUT = 60  # seconds one request may take before it counts as an error

TARGET_ADDED_TTFT_MS = 1.0
TARGET_ADDED_TOTAL_MS = 2.0
TARGET_RPS_RATIO = 0.5
# A measurement during which processes this script did not start used more cores than this is flagged:
# on two cores, someone else's test run moves the figures more than the gateway does.
DISTURBED_CORES = 0.25

# A data event whose delta carries text: `"content":"x` (LiteLLM may send a first chunk with the
# role and an empty or null content, which is not a token yet).
CONTENT = re.compile(rb'"content":\s*"[^"]')
TOKEN = b'"tok "'


class Unavailable(Exception):
    """A target cannot be measured; the message says why (the others still are)."""


# --- Processes ---------------------------------------------------------------------


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Server:
    """A server in a process group of its own (so that stopping it stops its children too)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen | None = None
    # py-spy writes its profile on SIGINT only; uvicorn shuts down the same way on either.
    stop_signal: signal.Signals = signal.SIGTERM

    def profile_with(self, py_spy: str, out: Path) -> None:
        """Runs the server under py-spy, which then leads the group. Launched rather than attached:
        attaching by pid (`py-spy record --pid`) is refused on some VMs where launching works."""
        self.argv = [py_spy, "record", "--nonblocking", "--function", "--format", "raw", "-o", str(out), "--",
                     *self.argv]  # fmt: skip
        self.stop_signal = signal.SIGINT

    def start(self) -> Server:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return self

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise Unavailable(f"{self.name} exited with {self.process.returncode}; its log:\n{tail(self.log_path)}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.name} did not listen within {timeout} s; its log:\n{tail(self.log_path)}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The live processes of its group (LiteLLM, say, may run children)."""
        if self.process is None or self.process.poll() is not None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == self.process.pid:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the group (uvicorn then runs its shutdown: the gateway flushes usage), SIGKILL after `grace` s."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, self.stop_signal)
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        except ProcessLookupError:
            pass
        # Children that outlived the leader.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def uvicorn_argv(app: str, port: int) -> list[str]:
    # uvicorn picks uvloop and httptools by itself when they are installed (uvicorn[standard]).
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning"]  # fmt: skip


# --- CPU accounting ------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def host_cpu() -> float:
    """CPU seconds all processes of the host have used (user, nice, system)."""
    with open("/proc/stat") as f:
        values = f.readline().split()[1:]
    return (int(values[0]) + int(values[1]) + int(values[2])) / CLOCK_TICKS


# --- Load generator ----------------------------------------------------------------


@dataclass
class Sample:
    start: float
    ttft: float | None
    end: float
    error: str | None


@dataclass
class Target:
    name: str
    url: str  # the chat completions URL
    key: str
    servers: list[Server] = field(default_factory=list)  # the processes on this target's path, proxy first


async def one_request(session: aiohttp.ClientSession, target: Target, headers: dict) -> Sample:
    """Sends one streamed request; times the first chunk with content and the `[DONE]` event."""
    start = time.perf_counter()
    ttft = done = None
    try:
        async with session.post(target.url, data=BODY, headers=headers) as response:
            if response.status != 200:
                text = (await response.read())[:200].decode(errors="replace")
                return Sample(start, None, time.perf_counter(), f"HTTP {response.status}: {text}")
            seen = []  # everything read; a stream is a few KiB, and one join at the end costs less than parsing lines
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                seen.append(chunk)
                if ttft is None and CONTENT.search(chunk if len(seen) == 1 else b"".join(seen)):
                    ttft = now - start
                if b"[DONE]" in (chunk if len(seen) == 1 else seen[-2][-8:] + chunk):
                    done = now - start
                    # The server ends the response right after; read to the end so the connection is reused.
            body = b"".join(seen)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(start, ttft, time.perf_counter(), f"{exc.__class__.__name__}: {exc}")
    end = time.perf_counter()
    if done is None:
        return Sample(start, ttft, end, "the stream ended without data: [DONE]")
    if (tokens := body.count(TOKEN)) != TOKENS:
        return Sample(start, ttft, end, f"{tokens} tokens, not {TOKENS}")
    return Sample(start, ttft, start + done, None)


async def closed_loop(target: Target, concurrency: int, warmup: float, duration: float, watched: list[Server]) -> dict:
    """C workers each send one request after another for warmup + duration seconds. Latencies are of
    the requests started in the measured window; throughput counts those that ended in it. The CPU
    of every server in `watched` is reported, idle ones too: they share the two cores."""
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    samples: list[Sample] = []
    cpu_pids = {server.name: server.pids() for server in watched}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
    ) as session:
        began = time.perf_counter()
        window_start, window_end = began + warmup, began + warmup + duration

        async def worker() -> None:
            while time.perf_counter() < window_end:
                samples.append(await one_request(session, target, headers))

        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        cpu_before = _cpu_snapshot(cpu_pids)
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        cpu_after = _cpu_snapshot(cpu_pids)
        measured_s = cpu_after["at"] - cpu_before["at"]
        await asyncio.wait_for(asyncio.gather(*workers), REQUEST_TIMEOUT + 5)
    inside = [s for s in samples if window_start <= s.start < window_end]
    good = [s for s in inside if s.error is None]
    errors = [s.error for s in inside if s.error is not None]
    ended = sum(1 for s in samples if s.error is None and window_start <= s.end < window_end)
    ttfts = [s.ttft * 1000 for s in good if s.ttft is not None]
    totals = [(s.end - s.start) * 1000 for s in good]
    cores = {name: (cpu_after[name] - cpu_before[name]) / measured_s for name in cpu_pids}
    cores["loadgen"] = (cpu_after["loadgen"] - cpu_before["loadgen"]) / measured_s
    cores["others"] = max(0.0, (cpu_after["host"] - cpu_before["host"]) / measured_s - sum(cores.values()))
    return {
        "concurrency": concurrency, "requests": len(good), "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": ended / duration,
        "ttft_ms_p50": _median(ttfts), "ttft_ms_p99": _p99(ttfts),
        "total_ms_p50": _median(totals), "total_ms_p99": _p99(totals),
        "cpu_cores": {name: round(value, 3) for name, value in cores.items()},
        "disturbed": cores["others"] > DISTURBED_CORES,
    }  # fmt: skip


def _cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    snapshot = {name: sum(process_cpu(pid) for pid in group) for name, group in pids.items()}
    snapshot["loadgen"] = process_cpu(os.getpid())
    snapshot["host"] = host_cpu()
    snapshot["at"] = time.perf_counter()
    return snapshot


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def check_once(target: Target) -> str:
    """One request before measuring: 200, 32 tokens, `[DONE]`. Returns a note on what came back."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
        headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
        async with session.post(target.url, data=BODY, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise Unavailable(f"{target.name} answered {response.status}: {body[:500].decode(errors='replace')}")
    text = ""
    for line in body.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            for choice in json.loads(line[6:]).get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
    if text != "tok " * TOKENS:
        raise Unavailable(f"{target.name} streamed {text!r}, not {TOKENS} tokens")
    if not body.rstrip().endswith(b"data: [DONE]"):
        raise Unavailable(f"{target.name}'s stream does not end with data: [DONE]")
    # The gateway asks the upstream for usage and must strip that event again when the client did not ask.
    return "usage event passed through (not asked for)" if b'"usage"' in body else "no usage event (as asked)"


def find_py_spy() -> str | None:
    for candidate in (
        shutil.which("py-spy"),
        ROOT / ".venv" / "bin" / "py-spy",
        ROOT / ".venv-litellm" / "bin" / "py-spy",
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


# Frames every busy stack of a server passes through (its event loop, a worker thread's loop): what is
# above them is the same in every sample and only hides what differs.
LOOP_FRAMES = ("Runner.run (asyncio/runners.py", "_worker (concurrent/futures/thread.py")


def summarize_profile(path: Path, top: int = 15) -> str:
    """The busiest functions and packages in py-spy's raw output (one `frame;frame;... count` line per
    stack, idle threads left out) while serving: by own time, and by time in them or what they call.
    Stacks outside an event loop or worker thread (the start: imports, set-up) are only counted."""
    own, inclusive, packages, total, outside = Counter(), Counter(), Counter(), 0, 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        loops = [i for i, frame in enumerate(frames) if frame.startswith(LOOP_FRAMES)]
        if not loops:
            outside += n
            continue
        frames = frames[loops[-1] + 1 :] or frames[loops[-1] :]
        total += n
        own[frames[-1]] += n
        # "name (package/module.py:line)": the package is the first part of the path.
        packages[frames[-1].rpartition("(")[2].split("/")[0].split(":")[0]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return f"{path}: no samples"

    def share(counter: Counter, limit: int) -> list[str]:
        return [f"    {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(limit)]

    return "\n".join([
        f"{path}: {total} samples while serving (100 a second while busy), {outside} more outside (the start)",
        "  own time by package:", *share(packages, 8),
        "  own time:", *share(own, top),
        "  in it or below (under the event loop):", *share(inclusive, top),
    ])  # fmt: skip


def run_async(coroutine):
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


# --- Set-up ------------------------------------------------------------------------


def create_rows(upstream_port: int, upstream_key: str, cache_dir: Path) -> str:
    """The rows the gateway routes by: a workspace, a node, a base model, a ready deployment served by the
    upstream, and a gateway key for the workspace. Returns the raw key."""
    from django.contrib.auth import get_user_model

    from accounts.services import workspace_create
    from cluster.models import Node
    from config.vault import seal
    from deployments.models import Deployment
    from inference.services import inference_key_create
    from registry.models import Artifact, Connection

    user = get_user_model().objects.create_user(username="bench", password=secrets.token_urlsafe(16))
    workspace = workspace_create(name="Bench", owner=user)
    node = Node.objects.create(name="bench", address="127.0.0.1", cache_dir=str(cache_dir), cache_quota_bytes=1 << 30)
    connection = Connection.objects.create(workspace=workspace, name="local", kind="local", root_path="/")
    base = Artifact.objects.create(
        workspace=workspace, name="base", kind="base", connection=connection, location="m", status="ready"
    )
    Deployment.objects.create(
        workspace=workspace, name=MODEL, base=base, node=node, device="cpu", status="ready", port=upstream_port,
        launched_node=node, launched_revision=1, encrypted_api_key=seal({"api_key": upstream_key}),
        settings={"max_model_len": 2048}, created_by=user,
    )  # fmt: skip
    return inference_key_create(workspace=workspace, name="bench", user=user)[1]


def litellm_server(port: int, upstream_port: int, upstream_key: str, master_key: str, log_path: Path) -> Server:
    if not LITELLM_BIN.exists():
        raise Unavailable(f"{LITELLM_BIN} is not installed (make .venv-litellm/.installed)")
    # A minimal environment: none of Plugboard's variables (DATABASE_URL would make LiteLLM look for Prisma).
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
        "BENCH_UPSTREAM_BASE": f"http://127.0.0.1:{upstream_port}/v1", "BENCH_UPSTREAM_KEY": upstream_key,
        "LITELLM_MASTER_KEY": master_key,
        # No network at start (the model cost map is otherwise fetched from GitHub) and no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY_DISABLED": "true",
        "LITELLM_LOG": "ERROR", "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    }  # fmt: skip
    argv = [str(LITELLM_BIN), "--config", str(LITELLM_CONFIG), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    return Server("litellm", argv, env, log_path, port)


def usage_records() -> dict:
    from django.db.models import Count, Sum

    from inference.models import UsageRecord

    totals = UsageRecord.objects.aggregate(n=Count("pk"), completion=Sum("completion_tokens"))
    by_status = dict(UsageRecord.objects.values_list("status").annotate(n=Count("pk")).order_by())
    return {"count": totals["n"], "completion_tokens": totals["completion"] or 0, "by_status": by_status}


# --- Report ------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "     n/a"


def print_table(results: dict[str, dict[int, dict]]) -> None:
    print()
    print(
        f"{'target':<8} {'streams':>7} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'TTFT p50':>8} {'TTFT p99':>8} {'total p50':>9} {'total p99':>9}   CPU cores used"
    )
    for name, by_concurrency in results.items():
        for c, r in by_concurrency.items():
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores"].items())
            print(
                f"{name:<8} {c:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} "
                f"{_ms(r['ttft_ms_p50'])} {_ms(r['ttft_ms_p99'])} {_ms(r['total_ms_p50']):>9} "
                f"{_ms(r['total_ms_p99']):>9}   {cpu}"
            )
            if r["first_error"]:
                print(f"{'':<8} first error: {r['first_error']}")
            if r["disturbed"]:
                print(f"{'':<8} DISTURBED: other processes used {r['cpu_cores']['others']:.2f} cores meanwhile")
    print("(times in ms; 'others' is CPU used by processes this benchmark did not start)")


def compare(results: dict[str, dict[int, dict]], name: str, low: int | None, high: int | None) -> dict | None:
    """The proxy's added median latencies at `low` streams and its throughput ratio at `high`, against
    direct (None: that target is not judged in this run). `met` holds only the targets judged."""
    direct, proxy = results.get("direct", {}), results.get(name, {})
    levels = [c for c in (low, high) if c is not None]
    if not levels or any(c not in direct or c not in proxy for c in levels):
        return None
    comparison: dict = {"low_concurrency": low, "high_concurrency": high, "met": {}}
    if low is not None:
        for metric, key, limit in (("ttft_ms_p50", "ttft", TARGET_ADDED_TTFT_MS),
                                   ("total_ms_p50", "total", TARGET_ADDED_TOTAL_MS)):  # fmt: skip
            a, b = proxy[low][metric], direct[low][metric]
            added = a - b if a is not None and b is not None else None
            comparison[f"added_{metric}"] = added
            comparison["met"][key] = added is not None and added <= limit
    if high is not None:
        ratio = proxy[high]["rps"] / direct[high]["rps"] if direct[high]["rps"] else None
        comparison["rps_ratio"] = ratio
        comparison["met"]["rps"] = ratio is not None and ratio >= TARGET_RPS_RATIO
    comparison["disturbed"] = any(r[c]["disturbed"] for r in (direct, proxy) for c in levels)
    return comparison


def print_comparison(name: str, c: dict) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    low, high = c["low_concurrency"], c["high_concurrency"]
    print(f"\n{name} against direct:")
    if c.get("added_ttft_ms_p50") is not None:
        print(
            f"  {low} stream(s): median TTFT {c['added_ttft_ms_p50']:+.2f} ms "
            f"(target <= +{TARGET_ADDED_TTFT_MS:g} ms: {verdict(c['met']['ttft'])})"
        )
    if c.get("added_total_ms_p50") is not None:
        print(
            f"  {low} stream(s): median total {c['added_total_ms_p50']:+.2f} ms "
            f"(target <= +{TARGET_ADDED_TOTAL_MS:g} ms: {verdict(c['met']['total'])})"
        )
    if c.get("rps_ratio") is not None:
        print(
            f"  {high} streams: req/s {c['rps_ratio']:.2f}x direct "
            f"(target >= {TARGET_RPS_RATIO:g}x: {verdict(c['met']['rps'])})"
        )
    if c["disturbed"]:
        print("  (other processes were busy during some of these measurements: run again on a quiet host)")


# --- Main ------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per target and concurrency (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement (2)")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated stream counts (1,64)")
    parser.add_argument("--skip-litellm", action="store_true", help="measure direct and the gateway only")
    parser.add_argument("--json", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs, database)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=("gateway", "litellm", "upstream"),
        help="run this server under py-spy (repeatable) and print its busiest functions; "
        "it then costs more CPU, so read the figures of such a run as a profile only",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "plugboard-bench-gateway-profiles",
        help="where --profile writes <server>.txt (py-spy's raw format; flamegraph.pl or speedscope read it)",
    )
    args = parser.parse_args()
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not levels or levels[0] < 1:
        parser.error("--concurrency takes positive integers, e.g. 1,64")
    py_spy = find_py_spy() if args.profile else None
    if args.profile and py_spy is None:
        parser.error("--profile needs py-spy (pip install py-spy, into .venv-litellm for instance)")
    profiles: dict[str, Path] = {}

    # Before Django is imported: a fresh SQLite file and embedded Redis in a folder of its own, for this process
    # and the gateway; and rate limits far above what the load reaches, which are still counted, so the figures
    # include the limiter's cost.
    world = scratch.prepare("plugboard-bench-gateway-", database_suffix=None)
    tmp = world.tmp
    os.environ.update(
        PLUGBOARD_RATE_LIMIT_GATEWAY_PER_ADDRESS="100000000", PLUGBOARD_RATE_LIMIT_GATEWAY_PER_KEY="100000000"
    )

    def terminate(signum, _frame):
        # The load generator's tasks die with the interrupt inside them; asyncio would print each one.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell without job control starts background jobs with it ignored, and the servers must go.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    servers: list[Server] = []

    def launch(server: Server) -> Server:
        if server.name in args.profile:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            profiles[server.name] = args.profile_dir / f"{server.name}.txt"
            profiles[server.name].unlink(missing_ok=True)
            server.profile_with(py_spy, profiles[server.name])
        servers.append(server.start())
        return server

    problems: dict[str, str] = {}
    checks: dict[str, str] = {}
    results: dict[str, dict[int, dict]] = {}
    try:
        before, at = host_cpu(), time.monotonic()
        time.sleep(1)
        if (busy := (host_cpu() - before) / (time.monotonic() - at)) > DISTURBED_CORES:
            log(f"WARNING: the host is busy ({busy:.2f} cores used by other processes); the figures will be noisy")
        world.start()
        upstream_key, master_key = secrets.token_urlsafe(16), "sk-" + secrets.token_urlsafe(16)

        upstream_port = free_port()
        upstream = Server(
            "upstream", uvicorn_argv("tests.support.openai_upstream:app", upstream_port),
            {**os.environ, "UPSTREAM_API_KEY": upstream_key}, tmp / "upstream.log", upstream_port,
        )  # fmt: skip
        launch(upstream)
        gateway_key = create_rows(upstream.port, upstream_key, tmp / "cache")
        gateway_port = free_port()
        gateway = Server(
            "gateway", uvicorn_argv("config.asgi:application", gateway_port), dict(os.environ),
            tmp / "gateway.log", gateway_port,
        )  # fmt: skip
        launch(gateway)
        upstream.wait_listening()

        targets: list[Target] = [
            Target("direct", f"http://127.0.0.1:{upstream.port}/v1/chat/completions", upstream_key, [upstream]),
            Target("gateway", f"http://127.0.0.1:{gateway_port}/v1/chat/completions", gateway_key, [gateway, upstream]),
        ]
        if args.skip_litellm:
            problems["litellm"] = "skipped (--skip-litellm)"
        else:
            try:
                litellm = litellm_server(free_port(), upstream.port, upstream_key, master_key, tmp / "litellm.log")
                launch(litellm)
                targets.append(
                    Target(
                        "litellm", f"http://127.0.0.1:{litellm.port}/v1/chat/completions", master_key,
                        [litellm, upstream],
                    )
                )  # fmt: skip
            except (Unavailable, OSError) as exc:
                problems["litellm"] = str(exc)

        ready: list[Target] = []
        for target in targets:
            try:
                proxy = target.servers[0]
                proxy.wait_listening()
                started = time.monotonic()
                note = checks[target.name] = run_async(check_once(target))
                pids = ", ".join(f"{s.name} pid {s.process.pid}" for s in target.servers)
                log(f"{target.name}: answers 200 with {TOKENS} tokens, {note} ({pids}); "
                    f"first request {1000 * (time.monotonic() - started):.0f} ms")  # fmt: skip
                ready.append(target)
            except (Unavailable, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                problems[target.name] = (
                    f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, Unavailable) else str(exc)
                )
                log(f"{target.name}: NOT MEASURED: {problems[target.name]}")
        if not any(t.name == "direct" for t in ready):
            raise Unavailable(f"the upstream does not answer: {problems.get('direct')}")

        # Targets take turns at each concurrency, so a disturbance on the host (two cores, shared) hits
        # neighbouring measurements rather than one target's whole series.
        for concurrency in levels:
            for target in ready:
                log(f"{target.name}: {concurrency} stream(s), {args.warmup:g} s warm-up + {args.duration:g} s")
                r = run_async(closed_loop(target, concurrency, args.warmup, args.duration, servers))
                results.setdefault(target.name, {})[concurrency] = r
                log(f"  {r['rps']:.1f} req/s, TTFT p50 {_ms(r['ttft_ms_p50']).strip()} ms, "
                    f"total p50 {_ms(r['total_ms_p50']).strip()} ms, {r['errors']} errors")  # fmt: skip

        usage = None
        if "gateway" in results:
            time.sleep(2.5)  # the gateway writes its usage records once a second
            usage = usage_records()

        results = {name: results[name] for name in ("direct", "gateway", "litellm") if name in results}
        print_table(results)
        # The latency targets are about one stream alone (the lowest level), the throughput target about
        # many (the highest); a run at a single level judges only the one that fits it.
        low = levels[0] if len(levels) > 1 or levels[0] == 1 else None
        high = levels[-1] if len(levels) > 1 or levels[0] > 1 else None
        comparisons = {name: compare(results, name, low, high) for name in ("gateway", "litellm")}
        for name, c in comparisons.items():
            if c is not None:
                print_comparison(name, c)
            else:
                print(f"\n{name}: not measured: {problems.get(name, 'no results')}")
        if usage is not None:
            sent = sum(r["requests"] + r["errors"] for r in results["gateway"].values())
            print(
                f"\ngateway usage records written: {usage['count']} ({usage['completion_tokens']} completion tokens, "
                f"by status {usage['by_status']}); requests started in the measured windows: {sent} "
                "(the records also count warm-up and the check)"
            )
            if not usage["count"]:
                problems["usage"] = "the gateway wrote no usage records"
                print("WARNING: no usage records: usage recording is not working")
        summary = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loop": "uvloop" if uvloop else "asyncio"},
            "duration_s": args.duration, "warmup_s": args.warmup, "concurrency": levels, "tokens_per_stream": TOKENS,
            "targets": {"added_ttft_ms_p50": TARGET_ADDED_TTFT_MS, "added_total_ms_p50": TARGET_ADDED_TOTAL_MS,
                        "rps_ratio": TARGET_RPS_RATIO},
            "results": {name: {str(c): r for c, r in by.items()} for name, by in results.items()},
            "comparisons": comparisons, "usage_records": usage, "checks": checks, "not_measured": problems,
        }  # fmt: skip
        print("\nJSON summary:")
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
            log(f"wrote {args.json}")
        met = all(c is not None and all(c["met"].values()) for name, c in comparisons.items() if name == "gateway")
        return 0 if met and not problems.get("usage") else 1
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
        for name, path in profiles.items():
            print(f"\nprofile of {name} (py-spy):")
            print(summarize_profile(path) if path.exists() else f"{path}: py-spy wrote nothing")
        world.close(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
