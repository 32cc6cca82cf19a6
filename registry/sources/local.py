"""Local or NFS folders, confined to the roots an administrator lists in
PLUGBOARD_LOCAL_ROOTS."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from registry.sources.base import CHUNK, RemoteFile, Source, SourceError


def confined_root(root_path: str) -> Path:
    """Returns the connection's folder resolved, if it lies under an allowed root."""
    if not root_path:
        raise SourceError("A local-path connection needs a folder.")
    path = Path(root_path).resolve()
    for allowed in settings.PLUGBOARD_LOCAL_ROOTS:
        if path == allowed.resolve() or allowed.resolve() in path.parents:
            return path
    roots = ", ".join(str(r) for r in settings.PLUGBOARD_LOCAL_ROOTS) or "none"
    raise SourceError(
        f"{root_path} is outside the folders an administrator allows for local paths ({roots}); "
        "ask them to add it to PLUGBOARD_LOCAL_ROOTS."
    )


def check(connection) -> str:
    root = confined_root(connection.root_path)
    if not root.is_dir():
        raise SourceError(f"The folder {root} does not exist on this server.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"The folder {root} exists but this server may not read it (permission denied).")
    return f"The folder {root} is readable."


class LocalSource(Source):
    def __init__(self, connection, *, subpath: str) -> None:
        super().__init__()
        root = confined_root(connection.root_path)
        self.folder = (root / subpath.strip("/")).resolve()
        if self.folder != root and root not in self.folder.parents:
            raise SourceError(f"{subpath} leads outside the connection's folder {root}.")

    def resolve(self) -> tuple[str, list[RemoteFile]]:
        if not self.folder.is_dir():
            raise SourceError(f"Nothing found at {self.folder}: the folder does not exist.")
        files = []
        stamp = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                full = Path(dirpath) / filename
                rel = full.relative_to(self.folder).as_posix()
                if self.folder not in full.resolve().parents:
                    raise SourceError(f"{rel} is a link that leads outside {self.folder}; refusing to read it.")
                stat = full.stat()
                files.append(RemoteFile(path=rel, size=stat.st_size))
                stamp.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        # No checksum without reading every byte: the revision is a digest of names, sizes and times.
        return "files:" + stamp.hexdigest()[:16], files

    def stream_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        with open(self.folder / path, "rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0 and (data := f.read(min(CHUNK, remaining))):
                self.bytes_read += len(data)
                remaining -= len(data)
                yield data

    def local_path(self, wanted) -> Path:
        """Where a manifest file lies on this host, so a node's cache can hard-link or copy it."""
        return self.folder / wanted.path

    def current(self, path: str) -> RemoteFile:
        try:
            return RemoteFile(path=path, size=(self.folder / path).stat().st_size)
        except FileNotFoundError:
            raise SourceError(f"{self.folder / path} no longer exists.") from None
