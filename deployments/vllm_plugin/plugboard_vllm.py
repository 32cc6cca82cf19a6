"""A vLLM general plugin the console puts on every server's PYTHONPATH (vllm_args.build_command).

vLLM's CPU LoRA ops pick each token's adapter weights by indexing the stacked
slots with the token's slot number, and a token without an adapter has the
number -1: Python indexing turns that into the *last* slot. Once an adapter
sits in the last slot, base-model answers batched beside it carry its output
("The capital of France is Paris. Arrr!", VLLM_NOTES.md). With more adapters
attached than slots, vLLM's LRU fills every slot, the last one included, so a
deployment with many adapters needs this fixed.

The fix zeroes the input rows of tokens without an adapter before each op,
which gives exactly what an empty slot gives: nothing added. It runs in this
runtime's own Python (torch and vLLM), never in the console's.
"""

from __future__ import annotations

import functools
import importlib

# The ops whose third positional argument is the output and fourth the per-token slot numbers.
OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
# Where the ops are looked up when called: their module (the sgmv ops call the bgmv ones there),
# the package that re-exports them, and the CPU wrapper that imported them by name.
MODULES = (
    "vllm.lora.ops.torch_ops.lora_ops",
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)


def without_adapter_rows(op):
    """Wraps a bgmv op so that rows whose slot number is negative (no adapter) contribute nothing."""

    @functools.wraps(op)
    def wrapped(inputs, weights, output, indices, *args, **kwargs):
        none = indices < 0
        if inputs.dim() == 2 and inputs.shape[0] == indices.shape[0] and bool(none.any()):
            inputs = inputs.masked_fill(none.unsqueeze(-1), 0)
        return op(inputs, weights, output, indices, *args, **kwargs)

    wrapped.plugboard_fixed = True
    return wrapped


def register() -> None:
    """vLLM calls this in every process it starts; patching twice is a no-op. A vLLM laid out
    otherwise (another version) is left as it is rather than kept from starting."""
    modules = []
    for module_name in MODULES:
        try:
            modules.append(importlib.import_module(module_name))
        except ImportError:
            continue
    if not modules or modules[0].__name__ != MODULES[0]:
        return
    for name in OPS:
        original = getattr(modules[0], name, None)
        if original is None or getattr(original, "plugboard_fixed", False):
            continue
        fixed = without_adapter_rows(original)
        for module in modules:
            if getattr(module, name, None) is original:
                setattr(module, name, fixed)
