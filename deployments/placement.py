"""Choosing where a deployment runs: which node, which GPUs (or the node's CPU).

Pure functions over a snapshot of the cluster's accelerators; no Django, no
I/O. The deployment services read the inventory, call these, and record the
result. Rules:

- All accelerators of one deployment are on one node, and the node is online.
- A GPU serves one deployment: busy GPUs (given to another deployment) are
  skipped, whatever memory they report free. A node's CPU is shared.
- Each GPU placed must have `need_bytes` free. When the caller passes
  `gpu_memory_utilization`, a GPU must also let vLLM claim that share of its
  total memory: vLLM refuses to start when utilization × total is more than
  the memory free after its own CUDA context (see deployments.memory).
- Choice is deterministic best fit: the placement that leaves the least free
  memory on the accelerators it takes (so large GPUs stay free for large
  models), then the node name, then the lowest indices. Contiguous GPU
  numbers are not preferred: inventory numbers follow the PCI bus, which says
  little about NVLink pairs; topology-aware placement would need NVML's
  topology queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deployments.memory import CUDA_CONTEXT_BYTES, GiB

GPU_KINDS = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu"}


@dataclass(frozen=True)
class AcceleratorState:
    node: str
    node_online: bool
    kind: str  # "gpu" or "cpu"
    index: int
    memory_total: int
    memory_free: int
    busy: bool = False  # a GPU already given to another deployment


@dataclass(frozen=True)
class Placement:
    node: str
    indices: tuple[int, ...]  # GPU numbers on the node; on CPU, the CPU accelerator's index


class PlacementError(ValueError):
    """No placement fits, or a manual one is wrong; the message says what to change."""


def _kind(device: str) -> str:
    try:
        return GPU_KINDS[device]
    except KeyError:
        raise PlacementError(f"The device must be cpu or cuda, not “{device}”.") from None


def _gib(value: float) -> str:
    return f"{value / GiB:.1f} GiB"


def _claim(acc: AcceleratorState, need_bytes: int, utilization: float | None) -> int | None:
    """Returns the bytes a deployment would take on `acc`, or None if it does not fit there."""
    if acc.kind == "gpu" and utilization is not None:
        claim = math.ceil(acc.memory_total * utilization)  # vLLM claims this share, whatever it needs
        if claim < need_bytes or claim > acc.memory_free - CUDA_CONTEXT_BYTES:
            return None
        return claim
    return need_bytes if acc.memory_free >= need_bytes else None


def place(
    accelerators: Iterable[AcceleratorState],
    *,
    device: str,
    count: int,
    need_bytes: int,
    gpu_memory_utilization: float | None = None,
) -> Placement:
    """Returns the best placement for `count` accelerators of `device` ("cuda"
    or "gpu", or "cpu") needing `need_bytes` each, or raises PlacementError
    saying what is missing. On CPU `count` must be 1."""
    kind = _kind(device)
    if count < 1 or (kind == "cpu" and count != 1):
        raise PlacementError("A CPU deployment uses one node's CPU." if kind == "cpu" else "Place at least one GPU.")
    accelerators = [a for a in accelerators if a.kind == kind]
    best: tuple[int, str, tuple[int, ...]] | None = None
    for node in sorted({a.node for a in accelerators if a.node_online}):
        fitting = []
        for acc in accelerators:
            if acc.node != node or (kind == "gpu" and acc.busy):
                continue
            claim = _claim(acc, need_bytes, gpu_memory_utilization)
            if claim is not None:
                fitting.append((acc.memory_free - claim, acc.index))
        if len(fitting) < count:
            continue
        # The `count` tightest fits leave the least free memory on this node.
        chosen = sorted(fitting)[:count]
        candidate = (sum(left for left, _ in chosen), node, tuple(sorted(i for _, i in chosen)))
        if best is None or candidate < best:
            best = candidate
    if best is None:
        raise PlacementError(_nothing_fits(accelerators, kind, count, need_bytes, gpu_memory_utilization))
    return Placement(node=best[1], indices=best[2])


def _nothing_fits(
    accelerators: Sequence[AcceleratorState], kind: str, count: int, need_bytes: int, utilization: float | None
) -> str:
    """Returns why no placement fits, naming the closest candidate."""
    online = [a for a in accelerators if a.node_online]
    offline_nodes = sorted({a.node for a in accelerators} - {a.node for a in online})
    idle = [a for a in online if kind == "cpu" or not a.busy]
    notes = []
    if len(idle) < len(online):
        notes.append(f"{len(online) - len(idle)} GPU(s) busy with other deployments")
    if offline_nodes:
        notes.append(f"offline: {', '.join(offline_nodes)}")
    aside = f" ({'; '.join(notes)})" if notes else ""
    if kind == "cpu":
        wanted = f"{_gib(need_bytes)} of memory available"
    else:
        wanted = f"{count} free GPU{'s' if count > 1 else ''} with {_gib(need_bytes)} each"
        if utilization is not None:
            wanted += f" and room for vLLM to claim {utilization:g} of each"
    if not idle:
        return f"No online node has {wanted}{aside}."

    def fitting(node: str) -> int:
        return sum(1 for a in idle if a.node == node and _claim(a, need_bytes, utilization) is not None)

    def most_free(node: str) -> int:
        return max(a.memory_free for a in idle if a.node == node)

    closest = max(sorted({a.node for a in idle}), key=lambda n: (fitting(n), most_free(n)))
    if kind == "cpu":
        return f"No online node has {wanted}; the most is {closest} with {_gib(most_free(closest))}{aside}."
    gpus = sorted((a for a in idle if a.node == closest), key=lambda a: (-a.memory_free, a.index))
    listed = ", ".join(f"GPU {a.index}: {_gib(a.memory_free)} free" for a in gpus[:4])
    return f"No online node has {wanted}; the closest is {closest} with {fitting(closest)} ({listed}){aside}."


def check_manual(
    accelerators: Iterable[AcceleratorState],
    *,
    node: str,
    indices: Sequence[int],
    device: str,
    need_bytes: int,
    gpu_memory_utilization: float | None = None,
) -> None:
    """Checks a placement a person chose; returns nothing, raises
    PlacementError naming every problem (node offline, GPU missing or busy, not
    enough memory). On CPU, `indices` may be empty (the node's CPU)."""
    kind = _kind(device)
    on_node = [a for a in accelerators if a.node == node and a.kind == kind]
    if not on_node:
        raise PlacementError(f"Node {node} has no {kind.upper()} in the inventory.")
    problems = []
    if not all(a.node_online for a in on_node):
        problems.append(f"Node {node} is offline.")
    by_index = {a.index: a for a in on_node}
    if kind == "cpu":
        chosen = list(indices) or [min(by_index)]
        if len(chosen) != 1:
            problems.append("A CPU deployment uses one CPU.")
    else:
        chosen = list(indices)
        if not chosen:
            problems.append("Choose at least one GPU.")
        if len(set(chosen)) != len(chosen):
            problems.append(f"GPU numbers repeat in {chosen}.")
    for index in dict.fromkeys(chosen):
        acc = by_index.get(index)
        label = f"GPU {index}" if kind == "gpu" else f"CPU {index}"
        if acc is None:
            problems.append(f"Node {node} has no {label}.")
            continue
        if kind == "gpu" and acc.busy:
            problems.append(f"{label} is given to another deployment.")
            continue
        if acc.memory_free < need_bytes:
            problems.append(f"{label} has {_gib(acc.memory_free)} free, less than the {_gib(need_bytes)} needed.")
        elif _claim(acc, need_bytes, gpu_memory_utilization) is None:
            problems.append(
                f"{label} has {_gib(acc.memory_free)} free of {_gib(acc.memory_total)}, too little for vLLM "
                f"to claim {gpu_memory_utilization:g} of it at start."
            )
    if problems:
        raise PlacementError(" ".join(problems))


def decide(
    accelerators: Iterable[AcceleratorState],
    *,
    device: str,
    node: str | None,
    indices: Sequence[int] = (),
    count: int = 1,
    need_bytes: int,
    gpu_memory_utilization: float | None = None,
) -> Placement:
    """Where a deployment runs: on `node` and its `indices` when a person chose them
    (checked), or, when `node` is None, the best fit for `count` accelerators. The one
    placement every path (the API, the wizard, an edit) goes through; raises
    PlacementError saying what is wrong or missing."""
    accelerators = list(accelerators)
    if node is None:
        return place(
            accelerators, device=device, count=count, need_bytes=need_bytes,
            gpu_memory_utilization=gpu_memory_utilization,
        )  # fmt: skip
    check_manual(
        accelerators, node=node, indices=indices, device=device, need_bytes=need_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
    )  # fmt: skip
    return Placement(node=node, indices=tuple(indices) if _kind(device) == "gpu" else ())
