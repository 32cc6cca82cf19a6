"""Measures time to first token on one vLLM server with more adapters than it keeps in memory.

Starts the vLLM CPU runtime (`.venv-vllm`) on the demo model the way the
console does for a deployment made with the defaults and two adapters
(`vllm_args.build_command`: two slots, and vLLM's default of as many adapters
kept in memory), then serves five: the three demo adapters and copies of two
under new names. Each round, in turn:

- the base model;
- an adapter in memory: one asked a moment ago, asked again;
- an adapter attached but evicted: the one asked longest ago after two
  others took the memory, which vLLM loads again from disk.

Each request streams a chat completion and counts the time until the first
token arrives. Prints every round and the medians; stops the server.

    .venv/bin/python bench/adapter_ttft.py [--rounds 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time

import django
import requests

from config import keys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
keys.ensure_files(Path(os.environ.get("PLUGBOARD_VAR_DIR", Path(__file__).resolve().parents[1] / "var")))  # as make run
django.setup()  # vllm_args reads the registry's rules, which live beside its models

from deployments import vllm_args  # noqa: E402
from tests.support.s3_server import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "var" / "demo-store"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# Five adapters from three trained ones: vLLM tells adapters apart by name, not by their files.
ADAPTERS = {
    "pirate": "pirate",
    "json-answer": "json-answer",
    "robot": "robot",
    "pirate-2": "pirate",
    "robot-2": "robot",
}
PROMPT = "What is the capital of France?"


def start_server(port: int, api_key: str, log_path: Path) -> subprocess.Popen:
    spec = vllm_args.ServerSpec(
        model_path=str(STORE / "smollm2-135m-instruct"), served_name="demo", host="127.0.0.1", port=port,
        api_key=api_key, device="cpu", max_loras=vllm_args.default_max_loras(2, device="cpu"), max_lora_rank=8,
        adapters=tuple(vllm_args.AdapterSpec(f"demo:{name}", str(STORE / "adapters" / folder), 8)
                       for name, folder in ADAPTERS.items()),
        dtype="bfloat16", max_model_len=2048,
    )  # fmt: skip
    argv, env = vllm_args.build_command(str(VLLM_PYTHON), spec)
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def first_token_seconds(session: requests.Session, url: str, model: str) -> float:
    """Streams one chat completion and returns the seconds until its first token arrives."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 8,
            "stream": True}  # fmt: skip
    started = time.perf_counter()
    with session.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith(b"data: {") and b'"content":"' in line:
                return time.perf_counter() - started
    raise RuntimeError(f"{model} sent no token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not VLLM_PYTHON.exists() or not (STORE / "adapters" / "robot").is_dir():
        raise SystemExit("Needs `make vllm demo` first.")

    port, api_key = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="adapter-ttft-", suffix=".log")[1])
    server = start_server(port, api_key, log_path)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"vLLM exited; see {log_path}")
            try:
                if session.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - started > 600:
                raise SystemExit(f"vLLM did not start in 10 minutes; see {log_path}")
            time.sleep(0.5)
        print(f"vLLM ready in {time.monotonic() - started:.1f} s: 2 slots (--max-loras), 2 adapters in memory "
              f"(--max-cpu-loras, vLLM's default), {len(ADAPTERS)} adapters served", flush=True)  # fmt: skip
        for model in ("demo", *(f"demo:{name}" for name in ADAPTERS)):  # warm up every path once
            first_token_seconds(session, url, model)

        figures: dict[str, list[float]] = {"base model": [], "adapter in memory": [], "adapter evicted": []}
        names = list(ADAPTERS)
        for round_ in range(args.rounds):
            evicted, *others = (names[(round_ + i) % len(names)] for i in range(3))
            first_token_seconds(session, url, f"demo:{evicted}")
            for name in others:  # two others take the two places in memory: `evicted` is out
                first_token_seconds(session, url, f"demo:{name}")
            figures["adapter in memory"].append(first_token_seconds(session, url, f"demo:{others[-1]}"))
            figures["adapter evicted"].append(first_token_seconds(session, url, f"demo:{evicted}"))
            figures["base model"].append(first_token_seconds(session, url, "demo"))
            print(f"  round {round_ + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in figures.items()),
                  flush=True)  # fmt: skip
        print("\nmedian time to first token (ms):")
        for what, values in figures.items():
            print(f"  {what:18s} {statistics.median(values) * 1000:7.1f}   (min {min(values) * 1000:.1f}, "
                  f"max {max(values) * 1000:.1f})")  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
