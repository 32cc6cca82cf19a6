"""Whether an adapter can be served on a base model: decided from tensor
shapes and from what the runtime (vLLM) supports, never from the adapter's
`base_model_name_or_path` alone. Pure functions over inspected data."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry.inspection import lora_pairs
from registry.safetensors import Tensor

# The ranks vLLM's --max-lora-rank accepts; an adapter's rank is rounded up to one of them.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class Verdict:
    compatible: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def vllm_rank(rank: int) -> int | None:
    """Returns the smallest rank vLLM accepts that covers `rank`, or None above 512."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def adapter_rank(config: dict, tensors: dict[str, Tensor]) -> int:
    """The largest rank the adapter uses: from its weights, else from its config."""
    ranks = [a.shape[0] for a, _ in lora_pairs(tensors).values() if a is not None and a.shape]
    declared = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max([*ranks, *(int(r) for r in declared if isinstance(r, (int, float)))], default=0)


def runtime_problems(config: dict, tensors: dict[str, Tensor]) -> list[str]:
    """Returns why vLLM cannot serve this adapter on any base model (empty if it can)."""
    problems = []
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        problems.append(f"It is a {peft_type or 'unnamed'} adapter; vLLM serves LoRA adapters only.")
    if config.get("use_dora"):
        problems.append("It uses DoRA (use_dora: true), which vLLM cannot serve.")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        problems.append(f'It trains biases (bias: {bias!r}); vLLM needs bias "none".')
    if config.get("modules_to_save"):
        problems.append(
            "It saves whole modules besides LoRA weights (modules_to_save: "
            f"{', '.join(map(str, config['modules_to_save']))}), which vLLM cannot load."
        )
    rank = adapter_rank(config, tensors)
    if rank > VLLM_LORA_RANKS[-1]:
        problems.append(f"Its rank is {rank}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}.")
    return problems


def _base_weight(module: str, base_tensors: dict[str, Tensor], base_config: dict) -> Tensor | None:
    weight = base_tensors.get(module + ".weight")
    if weight is None and module == "lm_head" and base_config.get("tie_word_embeddings"):
        weight = base_tensors.get("model.embed_tokens.weight")
    return weight


def check_fit(
    *,
    adapter_config: dict,
    adapter_tensors: dict[str, Tensor],
    base_name: str,
    base_config: dict,
    base_tensors: dict[str, Tensor],
) -> Verdict:
    """Returns whether the adapter fits the base, with every reason it does not."""
    reasons = runtime_problems(adapter_config, adapter_tensors)
    warnings = []
    pairs = lora_pairs(adapter_tensors)
    for module, (a, b) in sorted(pairs.items()):
        if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2:
            continue  # inspection already refused such an adapter
        weight = _base_weight(module, base_tensors, base_config)
        if weight is None:
            reasons.append(f"It adapts {module}, which {base_name} does not have.")
            continue
        if len(weight.shape) != 2:
            reasons.append(f"{module} in {base_name} has shape {list(weight.shape)}, not a matrix.")
            continue
        if "embed_tokens" in module and "lora_embedding" in _names(adapter_tensors, module):
            # Embedding LoRA: A is [r, vocab], B is [hidden, r] against a [vocab, hidden] table.
            want_in, want_out = weight.shape[0], weight.shape[1]
        else:
            # Linear LoRA: A is [r, in], B is [out, r] against a [out, in] weight.
            want_out, want_in = weight.shape
        if a.shape[1] != want_in or b.shape[0] != want_out:
            reasons.append(
                f"{module}: the adapter maps {a.shape[1]} → {b.shape[0]} features but {base_name}'s "
                f"module is {want_in} → {want_out} (hidden size {base_config.get('hidden_size', '?')})."
            )
    wanted = str(adapter_config.get("base_model_name_or_path") or "")
    if wanted and not _names_same_model(wanted, base_name, base_config):
        # "The shapes fit" only when nothing refused the pair: beside reasons it would read as a contradiction.
        fit = "; the shapes fit." if not reasons else "."
        warnings.append(f"The adapter was trained on “{wanted}”, a different name from {base_name}{fit}")
    return Verdict(compatible=not reasons, reasons=reasons, warnings=warnings)


def _names(tensors: dict[str, Tensor], module: str) -> str:
    return " ".join(name for name in tensors if module in name)


def _names_same_model(wanted: str, base_name: str, base_config: dict) -> bool:
    def norm(s: str) -> str:
        return s.rstrip("/").rsplit("/", 1)[-1].lower()

    candidates = {norm(base_name), norm(str(base_config.get("_name_or_path", "")))}
    return norm(wanted) in candidates
