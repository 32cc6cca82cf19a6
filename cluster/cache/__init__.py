"""The node-local artifact cache: content-addressed, verified, resumable.

Pure Python and the standard library, with no Django and no project import,
so the node agent can wrap it and its tests can run it alone. Its modules:

    store.py       the content-addressed store: fetch, link, garbage collection, accounting, LRU eviction
    download.py    the parallel ranged download of missing blobs, hashed as chunks land
    partial.py     one file being downloaded: its partial file and the record that lets it resume
    checksums.py   the kinds of checksum a manifest carries (sha256, git blob ids, S3 ETags) and the verifier
    manifest.py    what a fetch is asked for (Wanted), its errors, and the checks of keys and paths
    locks.py       flock-based locks between processes
    disk.py        hard links, walking and disk accounting

On disk, under `root`:

    blobs/<kind>/<checksum>            one verified file per content; kind is sha256, git-sha1 or etag
    blobs/etag/<etag>.unverified       a multipart ETag whose part size could not be guessed (size-checked only)
    blobs/sha256/<sha256>              every stored content also has this name (a hard link to the same inode)
    artifacts/<key>/<path>             hard links to blobs; the folder appears by rename once it is complete
    partial/<kind>.<checksum>.part     a file being downloaded, written chunk by chunk at its offsets
    partial/<kind>.<checksum>.part.json   which chunks of the .part file are on disk (written after an fsync)
    staging/<key>/<random>/            an artifact folder being assembled, renamed into artifacts/ when whole
    locks/                             flock files: one per blob, one per artifact key, and gc.lock

A file has a final name under blobs/ only after its size and checksum were
verified, so nothing partial or corrupt is ever reachable from artifacts/.
"""

from cluster.cache.download import RangeReader
from cluster.cache.manifest import FetchCancelled, FetchError, Wanted
from cluster.cache.store import ArtifactCache, FetchReport, evict_lru

__all__ = ["ArtifactCache", "FetchCancelled", "FetchError", "FetchReport", "RangeReader", "Wanted", "evict_lru"]
