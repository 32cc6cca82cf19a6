"""What every source (S3, the hub, a local folder) offers to inspection and,
later, to the node's artifact cache."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

CHUNK = 1024 * 1024  # what a stream yields at a time
ERROR_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.]{0,63}$")  # `NoSuchKey`, `SlowDown`, `RepoNotFound`


class SourceError(Exception):
    """The source could not be read; the message says what a person can do about it."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the artifact's location, with / separators
    size: int
    checksum: str = ""
    checksum_kind: str = ""  # sha256, git-sha1, etag, or blank


def error_code(text) -> str:
    """`text` if it has the shape of a store's or hub's error code, else "". A code comes from the failed
    answer (its body or a header); nothing else of a failed answer is ever stored or shown, since a hostile
    server writes there whatever it wants a page to show."""
    return text if isinstance(text, str) and ERROR_CODE.match(text) else ""


def is_safe_relative_path(path: str) -> bool:
    """Whether `path` stays inside the folder it will be written to: no `..`,
    no absolute path, no backslashes, no empty or `.` segments."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts) and not PurePosixPath(path).is_absolute()


class Source:
    """Reads one artifact's files. Subclasses count every byte they read from
    the store in `bytes_read`, so inspection can prove it stayed small."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def resolve(self) -> tuple[str, list[RemoteFile]]:
        """Returns the content's revision and the file manifest."""
        raise NotImplementedError

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Returns up to `length` bytes of `path` from offset `start`."""
        return b"".join(self.stream_range(path, start, start + length))

    def stream_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        """Yields the bytes [start, end) of `path` as they arrive, counting them in `bytes_read`."""
        raise NotImplementedError

    def supports_ranges(self, path: str) -> bool:
        """Whether the store answers ranged reads of `path` (parallel, resumable downloads need them)."""
        return True

    def current(self, path: str) -> RemoteFile:
        """Returns the file as the source has it now (size and checksum), to tell whether it changed."""
        raise NotImplementedError
