"""The version of the cache's layout on disk, and the move up from the first one.

Layout 1 (before the `layout` marker existed) named blobs by the checksums their sources claimed
(blobs/etag/<etag>, blobs/git-sha1/<id>, blobs/sha256/<sha256>), reused any blob whose name a manifest
repeated, whichever workspace had fetched it, and hard-linked the files of local folders, so that an
artifact file could be the user's own file. Layout 2 names a blob only by the sha256 the node computed
while writing it and shares it only within the scopes that stored it (see store.py).

Moving up drops every layout-1 blob name and partial file (nothing of layout 1 says who may share it, so
nothing of it is reused), and replaces each artifact file that is still a hard link to a file outside the
cache by a copy of itself, so that editing the original no longer changes what a deployment loads.
Artifact folders stay where they are (what runs keeps running); having no layout-2 record, each is rebuilt,
with its files downloaded again, the next time it is fetched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.cache import disk
from cluster.cache.manifest import FetchError

if TYPE_CHECKING:  # the store calls this on itself
    from cluster.cache.store import ArtifactCache

VERSION = 2
FOLDERS = ("artifacts", "blobs/sha256", "records/blobs", "records/artifacts", "partial", "locks", "staging")


def version(root: Path) -> int | None:
    """Returns the layout version recorded in root/layout, or None when there is no marker."""
    try:
        return int((root / "layout").read_text().strip())
    except (OSError, ValueError):
        return None


def ensure(cache: ArtifactCache) -> None:
    """Makes `cache.root` a layout-2 cache: creates its folders, moves a layout-1 cache up (see above) and
    writes the marker. Raises FetchError for a cache written by a newer layout, which this code would misread."""
    root = cache.root
    if version(root) == VERSION:
        return
    (root / "locks").mkdir(parents=True, exist_ok=True)
    with cache.gc_lock(shared=False):  # nothing links or stores while the layout changes
        found = version(root)
        if found == VERSION:
            return  # another process moved it up meanwhile
        if found is not None and found > VERSION:
            raise FetchError(
                f"The artifact cache {root} has layout {found}, newer than this node agent knows ({VERSION}): "
                "upgrade the node agent, or give it another cache folder."
            )
        if found is None and any((root / sub).exists() for sub in ("blobs", "artifacts", "partial")):
            _upgrade_from_1(root)
        for sub in FOLDERS:
            (root / sub).mkdir(parents=True, exist_ok=True)
        temp = root / f"layout.{uuid.uuid4().hex}.tmp"
        temp.write_text(f"{VERSION}\n")
        os.replace(temp, root / "layout")


def _upgrade_from_1(root: Path) -> None:
    shutil.rmtree(root / "blobs", ignore_errors=True)
    shutil.rmtree(root / "partial", ignore_errors=True)
    names: dict[tuple[int, int], int] = {}
    found = list(disk.walk(root / "artifacts"))
    for _, st in found:
        names[(st.st_dev, st.st_ino)] = names.get((st.st_dev, st.st_ino), 0) + 1
    for path, st in found:
        if st.st_nlink > names[(st.st_dev, st.st_ino)]:  # a name outside the cache: a local source's own file
            _copy_over(path)


def _copy_over(path: Path) -> None:
    """Replaces `path` by a copy of its bytes under the same name, atomically (copy, then rename over)."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(path, temp)
        os.replace(temp, path)
    finally:
        with suppress(FileNotFoundError):
            temp.unlink()
