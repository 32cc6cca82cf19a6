"""The file-system helpers of the cache: hard links, walking, disk accounting."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileNotFoundError):
        dst.unlink()
    os.link(src, dst)


def link_replace(src: Path, dst: Path) -> None:
    """Makes `dst` another name of `src`'s inode, atomically (link to a temp name, then rename over)."""
    temp = dst.with_name(f"{dst.name}.{uuid.uuid4().hex}.tmp")
    os.link(src, temp)
    os.replace(temp, dst)


def walk(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Yields (path, lstat) for every regular file under `top`; entries that vanish meanwhile are skipped."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield Path(entry.path), entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue


def usage(st: os.stat_result) -> int:
    return st.st_blocks * 512


def free_bytes(path: Path) -> int:
    """Returns the bytes an unprivileged process may still write on the file system holding `path` (or, while
    `path` does not exist yet, its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
