"""A GPU host's inventory, as a node agent records it.

`data/h200-inventory.json` is what `cluster.inventory.take()` returned on a
real NVIDIA H200 host (written by `scripts/check_gpu.py --out`, which also
checked it against nvidia-smi and that the environment the console gives a
deployment on GPU 0 makes CUDA see that GPU and no other). These tests feed
that record through the services, so the GPU path is checked here on every
run, on machines without a GPU."""

from __future__ import annotations

from tests.support.nodes import GPU_RUNTIME, gpu_node


def test_the_recorded_h200_becomes_one_gpu_accelerator(db, tmp_path):
    node = gpu_node(tmp_path)

    gpu = node.accelerators.get()
    assert (gpu.kind, gpu.index, gpu.name) == ("gpu", 0, "NVIDIA H200")
    assert gpu.uuid == "GPU-5fd42f2a-75bd-f346-1605-d7f706cd586e"
    assert gpu.memory_total_bytes == 150754820096 and gpu.memory_free_bytes == 150109880320
    assert node.cpu_count == 16 and node.vllm_runtimes == [GPU_RUNTIME]
