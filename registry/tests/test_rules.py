"""Pure rules, tested without any store: safetensors headers, path safety,
rank rounding and the compatibility verdict."""

from __future__ import annotations

import struct

import pytest

from registry.compatibility import check_fit, vllm_rank
from registry.models import tensors_from_json
from registry.safetensors import HeaderError, header_length, parse_header
from registry.sources import is_safe_relative_path
from tests.support import artifacts as build


@pytest.mark.parametrize(
    ("path", "safe"),
    [("model.safetensors", True), ("sub/dir/x.json", True), ("../x", False), ("a/../../b", False), ("/etc/passwd", False),
     ("a//b", False), ("a\\..\\b", False), ("./x", False), ("", False)],
)  # fmt: skip
def test_only_paths_that_stay_inside_are_safe(path, safe):
    assert is_safe_relative_path(path) is safe


def test_a_header_is_parsed_into_tensors():
    data = build.safetensors_bytes({"a": ([2, 3], "BF16"), "b": ([4], "F32")})
    length = header_length(data[:8], file_size=len(data), max_header=1 << 20)
    tensors = {t.name: t for t in parse_header(data[8 : 8 + length], file_size=len(data))}

    assert (tensors["a"].shape, tensors["a"].nbytes, tensors["a"].numel) == ((2, 3), 12, 6)
    assert tensors["b"].dtype == "F32"


@pytest.mark.parametrize(
    ("header", "file_size", "message"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 200, "spans 4 bytes but F32[2] needs 8"),
        ({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 4]}}, 200, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8000]}}, 200, "outside the file's"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 200, "invalid shape"),
        ({"w": {"shape": [2]}}, 200, "lacks dtype, shape or data_offsets"),
    ],
)
def test_a_malformed_header_says_what_is_wrong(header, file_size, message):
    import json

    with pytest.raises(HeaderError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_header(json.dumps(header).encode(), file_size=file_size)


def test_a_header_longer_than_the_file_is_refused():
    with pytest.raises(HeaderError, match="but the file has only"):
        header_length(struct.pack("<Q", 1000), file_size=100, max_header=1 << 20)


@pytest.mark.parametrize(
    ("rank", "expected"), [(1, 1), (2, 8), (8, 8), (9, 16), (300, 320), (321, 512), (512, 512), (513, None)]
)
def test_ranks_round_up_to_what_vllm_accepts(rank, expected):
    assert vllm_rank(rank) == expected


def _tensors(spec: dict) -> dict:
    return tensors_from_json({name: [shape, dtype, 0] for name, (shape, dtype) in spec.items()})


def test_an_adapter_for_a_module_the_base_lacks_does_not_fit():
    base = build.llama_config(layers=1)
    verdict = check_fit(
        adapter_config=build.adapter_config(),
        adapter_tensors=_tensors(build.lora_tensors(layers=2)),
        base_name="tiny",
        base_config=base,
        base_tensors=_tensors(build.llama_tensors(base)),
    )

    assert not verdict.compatible
    assert "It adapts model.layers.1.self_attn.q_proj, which tiny does not have." in verdict.reasons


def test_another_base_name_is_a_warning_not_a_verdict():
    base = build.llama_config()
    verdict = check_fit(
        adapter_config=build.adapter_config(base="someone/else-1B"),
        adapter_tensors=_tensors(build.lora_tensors()),
        base_name="tiny",
        base_config=base,
        base_tensors=_tensors(build.llama_tensors(base)),
    )

    assert verdict.compatible
    assert verdict.warnings == [
        "The adapter was trained on “someone/else-1B”, a different name from tiny; the shapes fit."
    ]


@pytest.mark.parametrize(
    ("why", "adapter", "tensors"),
    [
        ("shapes", build.adapter_config(base="someone/else-1B", targets=["k_proj"]),
         build.lora_tensors(targets=("k_proj",), kv_heads=4)),
        ("runtime", build.adapter_config(base="someone/else-1B", use_dora=True), build.lora_tensors()),
    ],
)  # fmt: skip
def test_an_incompatible_verdict_never_says_the_shapes_fit(why, adapter, tensors):
    base = build.llama_config()
    verdict = check_fit(
        adapter_config=adapter,
        adapter_tensors=_tensors(tensors),
        base_name="tiny",
        base_config=base,
        base_tensors=_tensors(build.llama_tensors(base)),
    )

    assert not verdict.compatible, why
    assert verdict.warnings == ["The adapter was trained on “someone/else-1B”, a different name from tiny."]


def test_kv_projections_are_checked_against_grouped_query_shapes():
    base = build.llama_config(kv_heads=4)  # k/v out = 64, the adapter below was made for 32
    verdict = check_fit(
        adapter_config=build.adapter_config(targets=["k_proj"]),
        adapter_tensors=_tensors(build.lora_tensors(targets=("k_proj",), kv_heads=2)),
        base_name="tiny",
        base_config=base,
        base_tensors=_tensors(build.llama_tensors(base)),
    )

    assert not verdict.compatible
    assert "k_proj: the adapter maps 64 → 32 features but tiny's module is 64 → 64" in verdict.reasons[0]
