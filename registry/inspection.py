"""Inspection: learn what an artifact is from its configuration and its
safetensors headers, without downloading weights. Works on any Source."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from registry.safetensors import HeaderError, Tensor, header_length, parse_header
from registry.sources import RemoteFile, Source, SourceError, is_safe_relative_path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONFIG_LIMIT = 4 * 1024 * 1024  # a config.json larger than this is not a config
FIRST_READ = 64 * 1024  # one ranged read usually covers the length and the whole header


@dataclass
class Inspection:
    kind: str
    revision: str = ""
    files: list[RemoteFile] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def dtype(self) -> str:
        """The dtype most of the weight bytes are in."""
        counts: Counter[str] = Counter()
        for t in self.tensors.values():
            counts[t.dtype] += t.nbytes
        return counts.most_common(1)[0][0] if counts else ""


def inspect_source(
    source: Source, *, kind: str, allow_pickle: bool, max_header: int, max_files: int = 10_000
) -> Inspection:
    """Returns what `source` holds as a base model (`kind="base"`) or LoRA
    adapter (`kind="adapter"`), with every problem found. Reads only the
    config file and the safetensors headers. More than `max_files` files is
    refused before any is read: the manifest is kept in the database."""
    result = Inspection(kind=kind)
    try:
        result.revision, result.files = source.resolve()
    except SourceError as exc:
        result.problems.append(str(exc))
        return result
    finally:
        result.bytes_read = source.bytes_read
    if len(result.files) > max_files:
        result.problems.append(
            f"It holds {len(result.files):,} files, more than the {max_files:,} an artifact may have. "
            "Point the location at the model's own folder, or ask an administrator to raise "
            "PLUGBOARD_MAX_ARTIFACT_FILES."
        )
        result.files = []
        return result

    by_path = {f.path: f for f in result.files}
    for f in result.files:
        if not is_safe_relative_path(f.path):
            result.problems.append(f"The file name {f.path!r} would escape the artifact's folder; refusing it.")
    safe = [f for f in result.files if is_safe_relative_path(f.path)]

    pickles = [f.path for f in safe if f.path.lower().endswith(PICKLE_SUFFIXES)]
    weights = [f for f in safe if f.path.endswith(".safetensors")]
    if pickles and not allow_pickle:
        result.problems.append(
            "Pickle-based weights can run code when loaded and are refused: "
            + ", ".join(pickles)
            + ". Convert them to safetensors, or ask an administrator to allow pickle weights."
        )
    if not weights and not (pickles and allow_pickle):
        result.problems.append("No weights found: there is no .safetensors file.")

    config_name = "config.json" if kind == "base" else "adapter_config.json"
    if config_name not in by_path:
        result.problems.append(
            f"{config_name} is missing, so the {'model' if kind == 'base' else 'adapter'} cannot be described."
        )
    else:
        result.config = _read_json(source, by_path[config_name], result.problems) or {}

    for f in weights:
        _read_tensors(source, f, result, max_header=max_header)

    index = by_path.get("model.safetensors.index.json")
    if index is not None:
        _check_index(source, index, by_path, result)

    if kind == "adapter" and result.config:
        _check_adapter_tensors(result)
    result.bytes_read = source.bytes_read
    return result


def _read_json(source: Source, f: RemoteFile, problems: list[str]) -> dict | None:
    if f.size > CONFIG_LIMIT:
        problems.append(f"{f.path} is {f.size:,} bytes, too large to be a configuration file.")
        return None
    try:
        data = json.loads(source.read_range(f.path, 0, f.size) if f.size else b"")
    except SourceError as exc:
        problems.append(str(exc))
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{f.path} is not valid JSON: {exc}.")
        return None
    if not isinstance(data, dict):
        problems.append(f"{f.path} is not a JSON object.")
        return None
    return data


def _read_tensors(source: Source, f: RemoteFile, result: Inspection, *, max_header: int) -> None:
    try:
        head = source.read_range(f.path, 0, min(FIRST_READ, f.size)) if f.size else b""
        length = header_length(head, file_size=f.size, max_header=max_header)
        raw = head[8 : 8 + length]
        if len(raw) < length:
            raw += source.read_range(f.path, len(head), 8 + length - len(head))
        tensors = parse_header(raw, file_size=f.size)
    except HeaderError as exc:
        result.problems.append(f"{f.path}: malformed safetensors header: {exc}.")
        return
    except SourceError as exc:
        result.problems.append(str(exc))
        return
    for t in tensors:
        if t.name in result.tensors:
            result.problems.append(f"Tensor {t.name} appears in more than one file.")
        result.tensors[t.name] = t


def _check_index(source: Source, index: RemoteFile, by_path: dict[str, RemoteFile], result: Inspection) -> None:
    data = _read_json(source, index, result.problems)
    if data is None:
        return
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        result.problems.append(f"{index.path} has no weight_map.")
        return
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or not is_safe_relative_path(shard):
            result.problems.append(f"{index.path} names a shard {shard!r} that would escape the artifact's folder.")
        elif shard not in by_path:
            result.problems.append(f"{index.path} names the shard {shard}, which is missing.")
    missing = [name for name in weight_map if name not in result.tensors]
    if missing and not result.problems:
        result.problems.append(f"{len(missing)} tensors listed in {index.path} are in no shard, e.g. {missing[0]}.")


def _check_adapter_tensors(result: Inspection) -> None:
    """Every lora_A has its lora_B and their ranks agree."""
    if not result.tensors:
        return
    pairs = lora_pairs(result.tensors)
    if not pairs:
        result.problems.append("The adapter's weights hold no lora_A/lora_B tensors.")
    for module, (a, b) in sorted(pairs.items()):
        if a is None or b is None:
            result.problems.append(f"{module} has a lora_{'A' if a else 'B'} but no lora_{'B' if a else 'A'}.")
        elif len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            result.problems.append(f"{module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} disagree on the rank.")


def lora_pairs(tensors: dict[str, Tensor]) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """Returns {module path in the base model: (lora_A, lora_B)} for an adapter's tensors."""
    pairs: dict[str, list[Tensor | None]] = {}
    for name, tensor in tensors.items():
        for marker, slot in ((".lora_A.", 0), (".lora_B.", 1), (".lora_embedding_A", 0), (".lora_embedding_B", 1)):
            if marker in name:
                module = base_module_name(name.split(marker)[0])
                pairs.setdefault(module, [None, None])[slot] = tensor
                break
    return {module: (a, b) for module, (a, b) in pairs.items()}


def base_module_name(adapter_module: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj` -> `model.layers.0.self_attn.q_proj`."""
    return adapter_module.removeprefix("base_model.model.")
