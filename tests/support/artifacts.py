"""Builds real safetensors files and configs for small Llama-shaped models and
LoRA adapters, byte-exact to the format, without torch. Tests write them to S3,
a hub repository or a folder and register them."""

from __future__ import annotations

import json
import struct

DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}


def safetensors_bytes(tensors: dict[str, tuple[list[int], str]], *, metadata: dict | None = None) -> bytes:
    """Returns a safetensors file holding zero-filled tensors of the given shapes and dtypes."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (shape, dtype) in tensors.items():
        size = DTYPE_SIZE[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def llama_config(
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    intermediate: int = 128,
    name: str = "tiny-llama",
) -> dict:
    return {
        "_name_or_path": name,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": True,
    }


def llama_tensors(config: dict) -> dict[str, tuple[list[int], str]]:
    """The weight shapes of a Llama model with this config (tied embeddings)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    tensors = {"model.embed_tokens.weight": ([v, h], "BF16"), "model.norm.weight": ([h], "BF16")}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        tensors |= {
            f"{p}.self_attn.q_proj.weight": ([h, h], "BF16"),
            f"{p}.self_attn.k_proj.weight": ([kv, h], "BF16"),
            f"{p}.self_attn.v_proj.weight": ([kv, h], "BF16"),
            f"{p}.self_attn.o_proj.weight": ([h, h], "BF16"),
            f"{p}.mlp.gate_proj.weight": ([i, h], "BF16"),
            f"{p}.mlp.up_proj.weight": ([i, h], "BF16"),
            f"{p}.mlp.down_proj.weight": ([h, i], "BF16"),
            f"{p}.input_layernorm.weight": ([h], "BF16"),
            f"{p}.post_attention_layernorm.weight": ([h], "BF16"),
        }
    return tensors


def base_model_files(**config_overrides) -> dict[str, bytes]:
    """config.json and model.safetensors of a small Llama model."""
    config = llama_config(**config_overrides)
    return {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors_bytes(llama_tensors(config)),
    }


def sharded_base_model_files(**config_overrides) -> dict[str, bytes]:
    """The same model split over two shards with model.safetensors.index.json."""
    config = llama_config(**config_overrides)
    tensors = list(llama_tensors(config).items())
    half = len(tensors) // 2
    shards = {
        "model-00001-of-00002.safetensors": dict(tensors[:half]),
        "model-00002-of-00002.safetensors": dict(tensors[half:]),
    }
    weight_map = {name: shard for shard, part in shards.items() for name in part}
    files = {"config.json": json.dumps(config).encode()}
    files |= {shard: safetensors_bytes(part) for shard, part in shards.items()}
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


def adapter_config(*, r: int = 8, targets=("q_proj", "v_proj"), base: str = "tiny-llama", **overrides) -> dict:
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "base_model_name_or_path": base,
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
    }
    config.update(overrides)
    return config


def lora_tensors(
    *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, r: int = 8, targets=("q_proj", "v_proj")
) -> dict:
    kv = hidden // heads * kv_heads
    out_features = {"q_proj": hidden, "k_proj": kv, "v_proj": kv, "o_proj": hidden}
    tensors = {}
    for n in range(layers):
        for target in targets:
            p = f"base_model.model.model.layers.{n}.self_attn.{target}"
            tensors[f"{p}.lora_A.weight"] = ([r, hidden], "F32")
            tensors[f"{p}.lora_B.weight"] = ([out_features[target], r], "F32")
    return tensors


def adapter_files(
    *, hidden: int = 64, r: int = 8, targets=("q_proj", "v_proj"), **config_overrides
) -> dict[str, bytes]:
    """adapter_config.json and adapter_model.safetensors of a LoRA adapter for the small model."""
    return {
        "adapter_config.json": json.dumps(adapter_config(r=r, targets=targets, **config_overrides)).encode(),
        "adapter_model.safetensors": safetensors_bytes(lora_tensors(hidden=hidden, r=r, targets=targets)),
    }


def random_safetensors(size: int) -> bytes:
    """A valid safetensors file holding one F16 tensor of `size` random bytes (size even)."""
    import os

    header = safetensors_bytes({"w": ([size // 2], "F16")})
    prefix = header[: len(header) - size]
    return prefix + os.urandom(size)
