"""The checksums a manifest can carry, and the one-pass verifier of a downloaded file.

Each source names the kind of its checksums (registry/sources: S3 gives ETags,
a Hugging Face hub sha256 for LFS files and git blob ids for the rest, a local
folder sha256). Each kind here knows what a well-formed value looks like (which
then is safe as a file name) and how to compute one over a file's bytes, so the
cache never asks which source a file came from.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

MiB = 1024 * 1024
MULTIPART_PART_SIZES = (8 * MiB, 16 * MiB, 5 * MiB, 64 * MiB, 100 * MiB)  # common uploader defaults, most likely first

_ETAG = re.compile(r"([0-9a-f]{32})(?:-([1-9][0-9]{0,5}))?")


class Digest(Protocol):
    def update(self, data: bytes) -> None: ...

    def result(self, expected: str) -> tuple[bool | None, str]:
        """Returns (True, False, or None when the bytes cannot tell; the checksum actually computed)."""
        ...


@dataclass(frozen=True)
class Kind:
    name: str
    pattern: re.Pattern[str]
    # Starts the digest of a file of `size` bytes against the expected value; None when the checksum is the
    # file's sha256, which the verifier computes for every file anyway.
    start: Callable[[str, int], Digest | None]


class _Hashlib:
    """A checksum that is one hashlib digest of the whole file."""

    def __init__(self, digest: hashlib._Hash) -> None:
        self.digest = digest

    def update(self, data: bytes) -> None:
        self.digest.update(data)

    def result(self, expected: str) -> tuple[bool | None, str]:
        actual = self.digest.hexdigest()
        return actual == expected, actual


class _PartHasher:
    """The multipart ETag of a file under one guess of its part size: md5 of the parts' binary md5s, "-N"."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.current = hashlib.md5(usedforsecurity=False)
        self.filled = 0
        self.digests: list[bytes] = []

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self.filled)
            self.current.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self.digests.append(self.current.digest())
                self.current = hashlib.md5(usedforsecurity=False)
                self.filled = 0

    def etag(self) -> str:
        digests = self.digests + ([self.current.digest()] if self.filled else [])
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class _MultipartETag:
    """A multipart upload's ETag depends on the uploader's part size, which S3 does not tell: every likely
    part size is tried at once."""

    def __init__(self, size: int, count: int) -> None:
        self.parts = [_PartHasher(part) for part in part_sizes(size, count)]

    def update(self, data: bytes) -> None:
        for part in self.parts:
            part.update(data)

    def result(self, expected: str) -> tuple[bool | None, str]:
        actuals = [part.etag() for part in self.parts]
        if expected in actuals:
            return True, expected
        # A wrong guess of the uploader's part size looks exactly like corruption, so this cannot fail the file.
        return None, " or ".join(actuals)


def _etag(value: str, size: int) -> Digest:
    match = _ETAG.fullmatch(value)
    if match is None:
        raise ValueError(f"Not an S3 ETag: {value!r}")
    if match.group(2) is None:
        return _Hashlib(hashlib.md5(usedforsecurity=False))  # a single-part upload: the md5 of the bytes
    return _MultipartETag(size, int(match.group(2)))


KINDS = {
    kind.name: kind
    for kind in (
        Kind("sha256", re.compile(r"[0-9a-f]{64}"), lambda value, size: None),
        # git's blob id: sha1 of a "blob <size>\0" header and the bytes
        Kind("git-sha1", re.compile(r"[0-9a-f]{40}"), lambda value, size: _Hashlib(_git_blob(size))),
        Kind("etag", _ETAG, _etag),
    )
}


def _git_blob(size: int) -> hashlib._Hash:
    return hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)


def blob_ident(path: str, checksum: str, kind_name: str) -> tuple[str, str] | None:
    """Returns (kind, normalised checksum) when the manifest's checksum can name and verify a blob, else None.
    The checksum is validated against its kind's pattern, so it is safe as a file name."""
    if kind_name == "":
        return None
    kind = KINDS.get(kind_name)
    if kind is None:
        raise ValueError(f"Unknown checksum kind {kind_name!r} for {path}")
    value = checksum.strip().strip('"').lower()  # S3 hands ETags out quoted
    return (kind_name, value) if kind.pattern.fullmatch(value) else None


def part_sizes(size: int, count: int) -> list[int]:
    """Returns the part sizes worth trying for a multipart ETag of `count` parts: the common ones that give
    exactly `count` parts, then size/count rounded up to a whole MiB."""
    if size == 0:
        return []
    even = math.ceil(math.ceil(size / count) / MiB) * MiB
    sizes = []
    for part in (*MULTIPART_PART_SIZES, even):
        if part not in sizes and math.ceil(size / part) == count:
            sizes.append(part)
    return sizes


class Verifier:
    """Computes, in one sequential pass, the sha256 of a file (its name in the store) and whatever its
    manifest's checksum needs."""

    def __init__(self, ident: tuple[str, str] | None, size: int) -> None:
        self.ident = ident
        self.sha256 = hashlib.sha256()
        self.check = KINDS[ident[0]].start(ident[1], size) if ident is not None else None
        self._side: ThreadPoolExecutor | None = None

    def update(self, data: bytes) -> None:
        """Feeds `data` to every digest. The manifest's (md5 for an ETag, sha1 for a git blob) runs in a
        thread of its own beside the sha256, at the same time: hashlib lets go of the GIL on large
        blocks, so the two take as long as the slower one instead of their sum (md5 is the slower, at
        about 750 MB/s against sha256's 1.7 GB/s here)."""
        side = None
        if self.check is not None:
            if self._side is None:
                self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")
            side = self._side.submit(self.check.update, data)
        self.sha256.update(data)
        if side is not None:
            side.result()

    def result(self) -> tuple[bool | None, str, str]:
        """Returns (verified: True, False or None when it cannot tell, the actual checksum, the sha256 hex)."""
        if self._side is not None:
            self._side.shutdown()
            self._side = None
        sha256 = self.sha256.hexdigest()
        if self.ident is None:
            return None, "", sha256
        expected = self.ident[1]
        if self.check is None:
            return sha256 == expected, sha256, sha256
        verified, actual = self.check.result(expected)
        return verified, actual, sha256
