"""Checks the console's GPU path on a real NVIDIA host; run it by hand there.

    python3 scripts/check_gpu.py [--out DIR]

What it checks, printing each figure:
1. `cluster.nvml.gpus()` (what a node agent reports) names the same GPUs as
   `nvidia-smi`: index, UUID, name, total memory.
2. The environment `deployments.vllm_args.build_command` gives a GPU deployment
   placed on GPU i makes a CUDA process (PyTorch) see exactly one GPU, and it
   is GPU i (same UUID), not another.
3. Memory a model server takes shows up in the next inventory: the free memory
   NVML reports drops by what a CUDA process allocates, which is what
   placement reads.
4. A placement on a GPU number the host lacks leaves the CUDA process with no
   GPU (vLLM would fail at start; the console's placement never asks for one).

Needs only the standard library, nvidia-ml-py and, for 2-4, torch. Writes the
inventory as JSON to DIR/inventory.json when --out is given. Exits 1 on any
mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster import inventory, nvml
from deployments import vllm_args

MiB = 1024**2
GiB = 1024**3
ALLOCATE_BYTES = 8 * GiB

# Runs in a child process with the deployment's environment: it reports what
# CUDA sees, holds ALLOCATE_BYTES on device 0 until its stdin closes.
CHILD = """
import sys, torch
count = torch.cuda.device_count()
print(count, flush=True)
if count:
    print(str(torch.cuda.get_device_properties(0).uuid), flush=True)
    block = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    print("holding", flush=True)
    sys.stdin.read()
"""

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def smi_gpus() -> list[dict]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=index,uuid,name,memory.total,memory.free",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        index, uuid, name, total, free = (part.strip() for part in line.split(","))
        rows.append({"index": int(index), "uuid": uuid, "name": name, "total_mib": int(total), "free_mib": int(free)})
    return rows


def deployment_env(gpu_index: int) -> dict[str, str]:
    """The environment additions the node agent would give a deployment on this GPU."""
    spec = vllm_args.ServerSpec(
        model_path="/models/base",
        served_name="check",
        host="127.0.0.1",
        port=8000,
        api_key="k",
        device="cuda",
        max_loras=1,
        max_lora_rank=8,
        gpu_indices=(gpu_index,),
    )
    vllm_args.validate(spec)
    _, env = vllm_args.build_command(sys.executable, spec)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    smi = smi_gpus()
    found = nvml.gpus()
    print(f"nvidia-smi: {len(smi)} GPU(s); cluster.nvml: {len(found)} GPU(s)")
    check(len(found) == len(smi) and len(found) > 0, "NVML finds the GPUs nvidia-smi lists")
    for gpu, row in zip(found, smi, strict=False):
        print(
            f"  GPU {gpu.index}: {gpu.name} {gpu.uuid} total {gpu.memory_total_bytes / GiB:.1f} GiB, "
            f"free {gpu.memory_free_bytes / GiB:.1f} GiB, utilization {gpu.utilization_percent}%"
        )
        check(gpu.index == row["index"] and gpu.uuid == row["uuid"], f"GPU {gpu.index}: index and UUID match")
        check(gpu.name == row["name"], f"GPU {gpu.index}: name {gpu.name!r} matches")
        check(gpu.memory_total_bytes // MiB == row["total_mib"], f"GPU {gpu.index}: total memory matches in MiB")

    taken = inventory.take(runtimes=[])
    report = taken.as_dict()
    check(len(report["gpus"]) == len(found), "the node inventory carries every GPU")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "inventory.json").write_text(json.dumps(report, indent=2))

    for gpu in found:
        env = deployment_env(gpu.index)
        print(f"GPU {gpu.index}: deployment environment {env}")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ALLOCATE_BYTES)],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        count = int(child.stdout.readline())
        check(count == 1, f"GPU {gpu.index}: the CUDA process sees exactly one GPU (saw {count})")
        if count:
            uuid = child.stdout.readline().strip()
            check(gpu.uuid == f"GPU-{uuid}", f"GPU {gpu.index}: it is that GPU ({uuid})")
            check(child.stdout.readline().strip() == "holding", f"GPU {gpu.index}: allocated 8 GiB")
            during = next(g for g in nvml.gpus() if g.index == gpu.index)
            dropped = gpu.memory_free_bytes - during.memory_free_bytes
            print(f"GPU {gpu.index}: free memory dropped by {dropped / GiB:.2f} GiB while 8 GiB were held")
            check(dropped >= ALLOCATE_BYTES, f"GPU {gpu.index}: the next inventory shows the memory in use")
        child.stdin.close()
        child.wait(timeout=60)
        after = next(g for g in nvml.gpus() if g.index == gpu.index)
        print(f"GPU {gpu.index}: free after the process ended {after.memory_free_bytes / GiB:.1f} GiB")
        check(
            after.memory_free_bytes >= gpu.memory_free_bytes - GiB,
            f"GPU {gpu.index}: the memory is free again after the process ends",
        )

    missing = len(found)
    env = deployment_env(missing)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "0"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    check(out.stdout.split()[:1] == ["0"], f"GPU {missing} (absent): the CUDA process sees no GPU")

    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
