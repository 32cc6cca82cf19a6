"""The node-local artifact cache: content-addressed, verified, resumable.

Pure Python and the standard library, with no Django and no project import,
so the node agent can wrap it and its tests can run it alone. Its modules:

    store.py       the content-addressed store: fetch, sharing, link, garbage collection, tidying, usage, LRU eviction
    download.py    the parallel ranged download of missing blobs, hashed as chunks land
    partial.py     one file being downloaded: its partial file and the record that lets it resume
    checksums.py   the kinds of checksum a manifest carries (sha256, git blob ids, S3 ETags) and the verifier
    manifest.py    what a fetch is asked for (Wanted), its errors, and the checks of keys and paths
    layout.py      the version of the layout on disk, and the move up from the first one
    locks.py       flock-based locks between processes, and the safe removal of their files
    disk.py        hard links, walking and disk accounting

On disk, under `root`:

    layout                             the layout's version (2)
    blobs/sha256/<sha256>              one verified file per content, named by the sha256 the node computed over
                                       its bytes as it stored them, never by a checksum a source claimed
    records/blobs/<sha256>/<scope>     one empty file per sharing scope whose fetch downloaded and verified it
    records/artifacts/<key>.json       per file of a complete artifact: the claim it was verified against, the
                                       blob it links to, whether it was verified or checked by size only
    artifacts/<key>/<path>             hard links to blobs; the folder appears by rename once it is complete
    partial/<kind>.<checksum>.<owner>.part   a file being downloaded, written chunk by chunk at its offsets;
                                       <owner> is a digest of the scope (and of the key, for a claim weaker
                                       than sha256), so one scope never resumes from another's chunks
    partial/<...>.part.json            which chunks of the .part file are on disk (written after an fsync)
    staging/<key>/<random>/            an artifact folder being assembled, renamed into artifacts/ when whole
    locks/                             flock files: one per content being downloaded, one per artifact key, and
                                       gc.lock; those of contents and keys that are gone are removed (tidy)

A file has a final name under blobs/ only after its size and checksum were
verified, so nothing partial or corrupt is ever reachable from artifacts/.

Bounded growth. A fetch that fails (the source's error, a stall, a mismatch, a
full disk) or is cancelled deletes the partial files it was writing before it
raises; only a killed process leaves them, and the next fetch of the same
content resumes them (one nobody resumes for a week is deleted by tidy). The
disk usage a node reports every heartbeat is a running total kept as blobs are
stored and deleted, counted by a walk of the whole cache only at start and
once a day.

Sharing. Every fetch is made for a *scope*, a string its caller chooses (the
console passes `workspace:<id>`, or `hub:<endpoint>` for a hub read without
credentials, whose files anyone may download). A fetch takes a file from the
store without downloading it only when (1) the manifest states a sha256 for
it, (2) a blob of that sha256 exists, which the node itself computed over the
bytes, and (3) a fetch of the same scope downloaded and verified that blob.
An S3 ETag, a git blob id, a missing checksum or a size never lets one
artifact receive bytes it did not download; such a file is downloaded,
verified against its claim, and only then stored (once: the same bytes under
the same sha256 keep one copy on disk). Without (3), a source that merely
claims the sha256 of another team's private file would be handed that file.
Files of local folders are copied into the store and hashed, never
hard-linked, so editing the original changes no cached artifact.
"""

from cluster.cache.download import RangeReader
from cluster.cache.manifest import FetchCancelled, FetchError, Wanted
from cluster.cache.store import ArtifactCache, FetchReport, evict_lru

__all__ = ["ArtifactCache", "FetchCancelled", "FetchError", "FetchReport", "RangeReader", "Wanted", "evict_lru"]
