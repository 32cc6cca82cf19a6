"""Local or NFS folders, confined to the roots an administrator lists in
PLUGBOARD_LOCAL_ROOTS and gives to each workspace."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from registry.sources.base import CHUNK, RemoteFile, Source, SourceError


def granted_roots(workspace) -> list[Path]:
    """The folders of PLUGBOARD_LOCAL_ROOTS that `workspace` may read, resolved.

    An entry is a folder, open to every workspace, or "folder=slug|slug", given to
    those workspaces only (a slug holds no "/" or "=", so the last "=" of an entry
    followed by slugs is never part of a folder's name)."""
    granted = []
    for entry in settings.PLUGBOARD_LOCAL_ROOTS:
        folder, _, slugs = str(entry).rpartition("=")
        if not folder or "/" in slugs:
            folder, slugs = str(entry), ""
        if not slugs or workspace.slug in {s.strip() for s in slugs.split("|")}:
            granted.append(Path(folder).resolve())
    return granted


def confined_root(root_path: str, *, workspace) -> Path:
    """Returns the connection's folder resolved, if it lies under a root given to its workspace."""
    if not root_path:
        raise SourceError("A local-path connection needs a folder.")
    path = Path(root_path).resolve()
    roots = granted_roots(workspace)
    for allowed in roots:
        if path == allowed or allowed in path.parents:
            return path
    # Only this workspace's own roots are named: another team's folders are not this one's business.
    named = ", ".join(str(r) for r in roots) or "none"
    raise SourceError(
        f"{root_path} is outside the folders an administrator gives this workspace for local paths ({named}); "
        "ask them to add it to PLUGBOARD_LOCAL_ROOTS for this workspace."
    )


def check(connection) -> str:
    root = confined_root(connection.root_path, workspace=connection.workspace)
    if not root.is_dir():
        raise SourceError(f"The folder {root} does not exist on this server.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"The folder {root} exists but this server may not read it (permission denied).")
    return f"The folder {root} is readable."


class LocalSource(Source):
    def __init__(self, connection, *, subpath: str) -> None:
        super().__init__()
        root = confined_root(connection.root_path, workspace=connection.workspace)
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
