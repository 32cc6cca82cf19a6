"""NVIDIA GPUs through NVML (nvidia-ml-py): the one place that talks to the driver."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_free_bytes: int
    utilization_percent: int | None


def gpus() -> list[Gpu]:
    """Returns the GPUs NVML sees; an empty list where there is no driver or no GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        # No driver (a CPU host) is the common case, not an error.
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except pynvml.NVMLError:
                utilization = None  # not every GPU (or MIG slice) reports it
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            found.append(
                Gpu(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else name,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    memory_total_bytes=int(memory.total),
                    memory_free_bytes=int(memory.free),
                    utilization_percent=utilization,
                )
            )
        return found
    finally:
        pynvml.nvmlShutdown()
