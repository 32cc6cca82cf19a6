"""What a fetch is asked for: an artifact's key and its files, checked before anything touches the disk."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.cache.checksums import blob_ident


@dataclass(frozen=True)
class Wanted:
    path: str  # relative path inside the artifact's folder, already checked safe by the caller ("a/b.json")
    size: int
    checksum: str  # in the form its kind gives it: hex, or an S3 ETag ("<md5hex>" or "<md5hex>-<N>"); or ""
    checksum_kind: str  # a name in checksums.KINDS ("sha256", "git-sha1", "etag"), or "" for none

    def ident(self) -> tuple[str, str] | None:
        """Returns (kind, normalised checksum) when the checksum can name and verify a blob, else None."""
        return blob_ident(self.path, self.checksum, self.checksum_kind)


class FetchError(Exception):
    """A fetch failed for a reason a person can act on (checksum mismatch, disk full, ...)."""


class FetchCancelled(Exception):
    """Raised by a progress callback to stop a fetch; the fetch deletes its partial files, then raises it."""


def check_key(key: str) -> None:
    if (
        not isinstance(key, str)
        or not key
        or len(key) > 200
        or key.startswith(".")
        or any(bad in key for bad in ("/", "\\", "..", "\x00"))
    ):
        raise ValueError(f"Invalid artifact key {key!r}: use a folder-safe name, without '/' or '..'.")


def check_files(files: list[Wanted]) -> None:
    """Raises ValueError for a manifest that cannot be laid out as a folder."""
    paths = set()
    folders = set()
    for w in files:
        parts = w.path.split("/")
        if not w.path or w.path.startswith("/") or "\\" in w.path or "\x00" in w.path:
            raise ValueError(f"Unsafe path in the artifact's manifest: {w.path!r}")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"Unsafe path in the artifact's manifest: {w.path!r}")
        if not isinstance(w.size, int) or w.size < 0:
            raise ValueError(f"Bad size for {w.path}: {w.size!r}")
        if w.path in paths:
            raise ValueError(f"{w.path} appears twice in the artifact's manifest")
        paths.add(w.path)
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = paths & folders
    if clash:
        raise ValueError(f"{sorted(clash)[0]} is both a file and a folder in the artifact's manifest")
