"""What every source (S3, the hub, a local folder) offers to inspection and,
later, to the node's artifact cache."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.conf import settings

CHUNK = 1024 * 1024  # what a stream yields at a time
ERROR_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.]{0,63}$")  # `NoSuchKey`, `SlowDown`, `RepoNotFound`


class SourceError(Exception):
    """The source could not be read; the message says what a person can do about it."""


class StalledError(SourceError):
    """A stream brought too few bytes for too long: no byte within the read timeout, or a drip under the
    minimum rate."""


@dataclass(frozen=True)
class StallLimits:
    """How long a stream may keep a reader waiting (the settings PLUGBOARD_FETCH_*)."""

    read_timeout: float  # seconds without a byte: the sockets' read timeout
    min_bytes_per_second: int  # 0: no minimum rate
    window: float  # seconds of waiting over which the minimum rate is measured

    @classmethod
    def from_settings(cls) -> StallLimits:
        return cls(
            read_timeout=settings.PLUGBOARD_FETCH_READ_TIMEOUT,
            min_bytes_per_second=settings.PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND,
            window=settings.PLUGBOARD_FETCH_RATE_WINDOW,
        )


class StallGuard:
    """Counts what one stream brings and the time spent waiting for it, and raises StalledError once
    `limits.window` seconds of waiting brought fewer than min_bytes_per_second × window bytes.

    A read timeout alone does not end a stream that drips a byte every few seconds: each read returns in
    time, and a reader that fills a megabyte buffer waits for days. So every network read is counted as it
    returns (see `took`), the status line and headers included, and since a drip brings reads, the check
    runs; a stream that brings nothing at all is ended by the read timeout instead. Only time spent waiting
    on the network counts, not the time the consumer holds the stream back (a bandwidth cap, a slow disk).
    The window restarts each time its quota is reached, so a stream that slows to a drip fails at most one
    window later: within window + read timeout in all."""

    def __init__(self, what: str, limits: StallLimits) -> None:
        self.what = what
        self.limits = limits
        self.quota = limits.min_bytes_per_second * limits.window
        self.waited = 0.0
        self.got = 0

    def took(self, n: int, seconds: float) -> None:
        """Counts one read that brought `n` bytes after `seconds` of waiting."""
        self.waited += seconds
        self.got += n
        if self.got >= self.quota:
            self.waited, self.got = 0.0, 0
        elif self.waited >= self.limits.window:
            raise StalledError(
                f"Reading {self.what} stalled: {self.got} bytes came in {self.waited:.0f} s, under the minimum of "
                f"{self.limits.min_bytes_per_second} bytes a second (PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND, over "
                f"PLUGBOARD_FETCH_RATE_WINDOW = {self.limits.window:g} s). The source or the network in between is "
                "failing or overloaded: check them and fetch again, or lower the minimum for a slow link."
            )


_guarded = threading.local()


@contextmanager
def guarding(guard: StallGuard) -> Iterator[None]:
    """Makes `guard` count every network read this thread makes meanwhile (current_guard)."""
    previous = getattr(_guarded, "guard", None)
    _guarded.guard = guard
    try:
        yield
    finally:
        _guarded.guard = previous


def current_guard() -> StallGuard | None:
    """The guard of the stream this thread is reading now, for the connection classes of s3.py and hf.py."""
    return getattr(_guarded, "guard", None)


def read_timed_out(what: str, limits: StallLimits) -> StalledError:
    """The error of a stream that brought no byte within the read timeout."""
    return StalledError(
        f"Reading {what} stalled: no byte came for {limits.read_timeout:g} s (PLUGBOARD_FETCH_READ_TIMEOUT). "
        "The source or the network in between is failing or overloaded: check them and fetch again, or raise "
        "the timeout for a slow link."
    )


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
