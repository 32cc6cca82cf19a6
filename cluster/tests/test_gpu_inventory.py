"""A GPU host's inventory, as a node agent records it.

`data/h200-inventory.json` is what `cluster.inventory.take()` returned on a
real NVIDIA H200 host (written by `scripts/check_gpu.py --out`, which also
checked it against nvidia-smi and that the environment the console gives a
deployment on GPU 0 makes CUDA see that GPU and no other). These tests feed
that record through the services, so the GPU path is checked here on every
run, on machines without a GPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from cluster import services
from cluster.cache import ArtifactCache
from cluster.inventory import Inventory
from cluster.models import Node
from cluster.nvml import Gpu

RECORDED = Path(__file__).parent / "data" / "h200-inventory.json"
GPU_RUNTIME = {"name": "vllm", "package": "vllm", "version": "0.32.0", "device": "cuda", "python": "/v/bin/python"}


def recorded_h200(*, gpus: int = 1) -> Inventory:
    """The recorded inventory, with a vLLM runtime (the host had none installed)
    and, for `gpus` > 1, more GPUs shaped like the recorded one."""
    data = json.loads(RECORDED.read_text())
    first = Gpu(**data.pop("gpus")[0])
    extra = [replace(first, index=i, uuid=f"{first.uuid[:-2]}{i:02d}") for i in range(1, gpus)]
    data["runtimes"] = [GPU_RUNTIME]
    return Inventory(**data, gpus=[first, *extra])


def gpu_node(tmp_path, name: str = "gpu-1", *, gpus: int = 1) -> Node:
    node = services.node_register(
        name=name, address="127.0.0.1", cache_dir=str(tmp_path / name), cache_quota_bytes=100 * 2**30
    )
    return services.node_report(node=node, inventory=recorded_h200(gpus=gpus), cache=ArtifactCache(tmp_path / name))


def test_the_recorded_h200_becomes_one_gpu_accelerator(db, tmp_path):
    node = gpu_node(tmp_path)

    gpu = node.accelerators.get()
    assert (gpu.kind, gpu.index, gpu.name) == ("gpu", 0, "NVIDIA H200")
    assert gpu.uuid == "GPU-5fd42f2a-75bd-f346-1605-d7f706cd586e"
    assert gpu.memory_total_bytes == 150754820096 and gpu.memory_free_bytes == 150109880320
    assert node.cpu_count == 16 and node.vllm_runtimes == [GPU_RUNTIME]
