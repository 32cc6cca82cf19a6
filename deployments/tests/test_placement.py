"""Automatic placement and checks of a manual one, over a made-up cluster."""

from __future__ import annotations

import re

import pytest

from deployments.memory import CUDA_CONTEXT_BYTES, GiB
from deployments.placement import AcceleratorState, Placement, PlacementError, check_manual, decide, place


def gpu(node: str, index: int, free_gib: float, *, total_gib: float = 80, online: bool = True, busy: bool = False):
    return AcceleratorState(
        node=node,
        node_online=online,
        kind="gpu",
        index=index,
        memory_total=int(total_gib * GiB),
        memory_free=int(free_gib * GiB),
        busy=busy,
    )


def cpu(node: str, free_gib: float, *, online: bool = True, busy: bool = False):
    return AcceleratorState(
        node=node,
        node_online=online,
        kind="cpu",
        index=0,
        memory_total=64 * GiB,
        memory_free=int(free_gib * GiB),
        busy=busy,
    )


CLUSTER = [
    gpu("gpu-1", 0, 79),
    gpu("gpu-1", 1, 30),
    gpu("gpu-1", 2, 79, busy=True),
    gpu("gpu-2", 0, 22.1, total_gib=24),
    gpu("gpu-2", 1, 23.5, total_gib=24),
    gpu("gpu-2", 3, 22.1, total_gib=24),
    gpu("gpu-3", 0, 79, online=False),
    gpu("gpu-3", 1, 79, online=False),
    cpu("gpu-1", 40),
    cpu("gpu-2", 12),
    cpu("gpu-3", 60, online=False),
]


def test_it_picks_the_gpu_that_leaves_the_least_free_memory():
    assert place(CLUSTER, device="cuda", count=1, need_bytes=20 * GiB) == Placement("gpu-2", (0,))


def test_ties_go_to_the_node_name_then_the_lowest_indices():
    cluster = [gpu("b", 5, 40), gpu("b", 4, 40), gpu("a", 7, 40), gpu("a", 6, 40)]

    assert place(cluster, device="gpu", count=1, need_bytes=10 * GiB) == Placement("a", (6,))
    assert place(cluster, device="cuda", count=2, need_bytes=10 * GiB) == Placement("a", (6, 7))


def test_a_larger_need_moves_to_the_bigger_gpus():
    assert place(CLUSTER, device="cuda", count=1, need_bytes=25 * GiB) == Placement("gpu-1", (1,))
    assert place(CLUSTER, device="cuda", count=1, need_bytes=40 * GiB) == Placement("gpu-1", (0,))


def test_busy_gpus_are_skipped_whatever_memory_they_report():
    with pytest.raises(PlacementError, match=re.escape("1 GPU(s) busy with other deployments")):
        place(CLUSTER, device="cuda", count=2, need_bytes=40 * GiB)


def test_offline_nodes_are_skipped():
    # gpu-3 has the only pair of 79 GiB GPUs, but its node agent is offline.
    with pytest.raises(PlacementError, match="offline: gpu-3"):
        place(CLUSTER, device="cuda", count=2, need_bytes=70 * GiB)


def test_tensor_parallel_gpus_must_all_be_on_one_node():
    cluster = [gpu("a", 0, 40), gpu("b", 0, 40), gpu("c", 0, 40), gpu("c", 1, 10)]

    with pytest.raises(PlacementError) as exc:
        place(cluster, device="cuda", count=2, need_bytes=20 * GiB)
    assert str(exc.value) == (
        "No online node has 2 free GPUs with 20.0 GiB each; the closest is a with 1 (GPU 0: 40.0 GiB free)."
    )


def test_two_gpus_on_one_node_are_placed_together():
    assert place(CLUSTER, device="cuda", count=2, need_bytes=20 * GiB) == Placement("gpu-2", (0, 3))
    assert place(CLUSTER, device="cuda", count=3, need_bytes=20 * GiB) == Placement("gpu-2", (0, 1, 3))


def test_the_error_names_the_closest_node_and_its_gpus():
    cluster = [gpu("gpu-1", 0, 10), gpu("gpu-2", 3, 22.1), gpu("gpu-2", 1, 5)]

    with pytest.raises(PlacementError) as exc:
        place(cluster, device="cuda", count=2, need_bytes=40 * GiB)
    assert str(exc.value) == (
        "No online node has 2 free GPUs with 40.0 GiB each; the closest is gpu-2 with 0 "
        "(GPU 3: 22.1 GiB free, GPU 1: 5.0 GiB free)."
    )


def test_with_a_utilization_a_gpu_must_have_room_for_vllms_whole_claim():
    cluster = [gpu("a", 0, 30), gpu("b", 0, 79), gpu("c", 0, 22.5, total_gib=24), gpu("c", 1, 22.5, total_gib=24)]

    # vLLM claims 0.9 × 80 GiB = 72 GiB, so 30 GiB free is not enough even for a 20 GiB model.
    assert place(cluster[:2], device="cuda", count=1, need_bytes=20 * GiB, gpu_memory_utilization=0.9) == Placement(
        "b", (0,)
    )
    # On the 24 GiB cards 0.9 claims 21.6 GiB, which fits 22.5 GiB free after the CUDA context,
    # and leaves less behind than 72 GiB of 79 would.
    assert place(cluster, device="cuda", count=1, need_bytes=10 * GiB, gpu_memory_utilization=0.9) == Placement(
        "c", (0,)
    )
    with pytest.raises(PlacementError, match=re.escape("and room for vLLM to claim 0.95 of each")):
        place(cluster[2:], device="cuda", count=2, need_bytes=10 * GiB, gpu_memory_utilization=0.95)


def test_the_claim_must_also_hold_what_the_model_needs():
    with pytest.raises(PlacementError):
        place([gpu("a", 0, 80)], device="cuda", count=1, need_bytes=50 * GiB, gpu_memory_utilization=0.5)


def test_a_cpu_deployment_takes_the_tightest_online_cpu_and_shares_it():
    cluster = [*CLUSTER, cpu("gpu-4", 12, busy=True)]

    assert place(cluster, device="cpu", count=1, need_bytes=4 * GiB) == Placement("gpu-2", (0,))
    assert place(cluster, device="cpu", count=1, need_bytes=13 * GiB) == Placement("gpu-1", (0,))


def test_no_cpu_with_enough_memory_says_where_the_most_is():
    with pytest.raises(PlacementError) as exc:
        place(CLUSTER, device="cpu", count=1, need_bytes=50 * GiB)
    assert str(exc.value) == (
        "No online node has 50.0 GiB of memory available; the most is gpu-1 with 40.0 GiB (offline: gpu-3)."
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu", "count": 2}, "uses one node's CPU"),
        ({"device": "cuda", "count": 0}, "at least one GPU"),
        ({"device": "tpu", "count": 1}, "cpu or cuda, not “tpu”"),
    ],
)
def test_place_refuses_impossible_requests(kwargs, message):
    with pytest.raises(PlacementError, match=message):
        place(CLUSTER, need_bytes=1, **kwargs)


def test_no_online_node_at_all_is_said_plainly():
    with pytest.raises(PlacementError, match=r"^No online node has 1 free GPU with 1.0 GiB each \(offline: a\)\.$"):
        place([gpu("a", 0, 80, online=False)], device="cuda", count=1, need_bytes=GiB)


# --- manual placement --------------------------------------------------------------


def test_a_good_manual_choice_passes():
    check_manual(CLUSTER, node="gpu-1", indices=[0, 1], device="cuda", need_bytes=20 * GiB)
    check_manual(CLUSTER, node="gpu-2", indices=[], device="cpu", need_bytes=10 * GiB)


@pytest.mark.parametrize(
    ("node", "indices", "need_gib", "message"),
    [
        ("gpu-3", [0], 10, "Node gpu-3 is offline."),
        ("gpu-1", [5], 10, "Node gpu-1 has no GPU 5."),
        ("gpu-1", [2], 10, "GPU 2 is given to another deployment."),
        ("gpu-1", [0, 1], 40, "GPU 1 has 30.0 GiB free, less than the 40.0 GiB needed."),
        ("gpu-1", [0, 0], 10, "GPU numbers repeat in [0, 0]."),
        ("gpu-1", [], 10, "Choose at least one GPU."),
        ("gpu-9", [0], 10, "Node gpu-9 has no GPU in the inventory."),
        (
            "gpu-3",
            [0, 7],
            90,
            "Node gpu-3 is offline. GPU 0 has 79.0 GiB free, less than the 90.0 GiB needed. Node gpu-3 has no GPU 7.",
        ),
    ],
)
def test_a_manual_gpu_choice_is_refused_with_every_problem(node, indices, need_gib, message):
    with pytest.raises(PlacementError) as exc:
        check_manual(CLUSTER, node=node, indices=indices, device="cuda", need_bytes=need_gib * GiB)
    assert str(exc.value).startswith(message)


def test_a_manual_gpu_choice_checks_vllms_claim_when_given_a_utilization():
    with pytest.raises(
        PlacementError, match=re.escape("GPU 1 has 30.0 GiB free of 80.0 GiB, too little for vLLM to claim 0.9 of it")
    ):
        check_manual(CLUSTER, node="gpu-1", indices=[1], device="cuda", need_bytes=GiB, gpu_memory_utilization=0.9)

    free = 0.5 * 80 + CUDA_CONTEXT_BYTES / GiB
    check_manual([gpu("a", 0, free)], node="a", indices=[0], device="cuda", need_bytes=GiB, gpu_memory_utilization=0.5)


def test_a_manual_cpu_choice_needs_the_memory_but_not_an_idle_cpu():
    check_manual([cpu("a", 8, busy=True)], node="a", indices=[0], device="cpu", need_bytes=4 * GiB)
    with pytest.raises(PlacementError, match=re.escape("CPU 0 has 12.0 GiB free, less than the 20.0 GiB needed.")):
        check_manual(CLUSTER, node="gpu-2", indices=[0], device="cpu", need_bytes=20 * GiB)
    with pytest.raises(PlacementError, match="Node gpu-3 is offline"):
        check_manual(CLUSTER, node="gpu-3", indices=[], device="cpu", need_bytes=GiB)


def test_decide_places_automatically_without_a_node_and_checks_a_chosen_one():
    cluster = [gpu("a", 0, 30), gpu("a", 1, 70), cpu("b", 20)]
    assert decide(cluster, device="cuda", node=None, need_bytes=20 * GiB) == Placement(node="a", indices=(0,))
    assert decide(cluster, device="cuda", node="a", indices=[1], need_bytes=20 * GiB) == Placement("a", (1,))
    assert decide(cluster, device="cpu", node="b", indices=[0], need_bytes=10 * GiB) == Placement("b", ())
    with pytest.raises(PlacementError, match=re.escape("GPU 0 has 30.0 GiB free")):
        decide(cluster, device="cuda", node="a", indices=[0], need_bytes=40 * GiB)
