"""Reading safetensors headers: 8 bytes of little-endian header length, then a
JSON object {tensor name: {dtype, shape, data_offsets}} (and "__metadata__").
Pure functions over bytes, so the rules are tested without any store."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}  # fmt: skip


class HeaderError(ValueError):
    """The header is malformed; the message says how."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def header_length(prefix: bytes, *, file_size: int, max_header: int) -> int:
    """Returns the JSON header's length from a file's first 8 bytes."""
    if len(prefix) < 8:
        raise HeaderError(f"the file is {len(prefix)} bytes long, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length == 0:
        raise HeaderError("the header length is zero")
    if length > max_header:
        raise HeaderError(f"the header claims {length:,} bytes, more than the {max_header:,} allowed")
    if 8 + length > file_size:
        raise HeaderError(
            f"the header claims {length:,} bytes but the file has only {file_size - 8:,} after the length"
        )
    return length


def parse_header(raw: bytes, *, file_size: int) -> list[Tensor]:
    """Returns the tensors a header describes, checking each one's offsets
    against its dtype, shape and the file's size."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object")
    data_size = file_size - 8 - len(raw)
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"tensor {name!r} lacks dtype, shape or data_offsets") from None
        if dtype not in DTYPE_BYTES:
            raise HeaderError(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise HeaderError(f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_size):
            raise HeaderError(
                f"tensor {name!r} has data offsets {begin}..{end} outside the file's {data_size:,} data bytes"
            )
        nbytes = end - begin
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if not dtype.startswith(("F4", "F6")) and nbytes != expected:
            raise HeaderError(f"tensor {name!r} spans {nbytes:,} bytes but {dtype}{shape} needs {expected:,}")
        tensors.append(Tensor(name=name, dtype=dtype, shape=tuple(shape), nbytes=nbytes))
    return tensors
