"""Unit tests of who may share the artifact cache's bytes (cluster/cache/store.py): a blob reaches a fetch
without a download only when the manifest states its sha256, the node computed that sha256 itself, and a
fetch of the same scope downloaded and verified it. Also the move up from the first layout."""

from __future__ import annotations

import hashlib
import os

import pytest

from cluster.cache import ArtifactCache, FetchError, Wanted, layout
from cluster.tests.test_cache import (
    KiB,
    MemorySource,
    MiB,
    blob_files,
    md5,
    partial_files,
    sha256,
    wanted,
)

A, B = "workspace:1", "workspace:2"


@pytest.fixture
def cache(tmp_path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache", chunk_size=256 * KiB, parallel=4)


def test_a_sha256_another_scope_stored_is_downloaded_not_linked(cache):
    private = os.urandom(MiB)
    cache.fetch("a-model", [wanted("secret.bin", private)], MemorySource({"secret.bin": private}), scope=A)
    # B's source claims the sha256 and size of A's file, but holds other bytes.
    claim = wanted("weights.bin", private)
    impostor = MemorySource({"weights.bin": os.urandom(MiB)})

    with pytest.raises(FetchError, match="checksum mismatch"):
        cache.fetch("b-model", [claim], impostor, scope=B)

    assert impostor.bytes_read == MiB, "B's fetch downloads from B's source"
    assert not cache.has_artifact("b-model")
    assert not list((cache.root / "staging").rglob("*.bin"))
    assert blob_files(cache.root) == [cache.root / "blobs" / "sha256" / sha256(private)]


def test_the_same_bytes_downloaded_by_two_scopes_are_stored_once_and_then_shared_by_both(cache):
    data = os.urandom(MiB)
    cache.fetch("a-model", [wanted("model.bin", data)], MemorySource({"model.bin": data}), scope=A)
    b_source = MemorySource({"model.bin": data})

    first = cache.fetch("b-model", [wanted("model.bin", data)], b_source, scope=B)
    again = cache.fetch("b-other", [wanted("model.bin", data)], MemorySource({}), scope=B)

    assert first.bytes_transferred == MiB and b_source.bytes_read == MiB
    assert again.bytes_transferred == 0
    assert os.path.samefile(cache.artifact_path("a-model") / "model.bin", first.path / "model.bin")
    assert blob_files(cache.root) == [cache.root / "blobs" / "sha256" / sha256(data)]


@pytest.mark.parametrize("kind", ["etag", "git-sha1", ""])
def test_a_claim_weaker_than_sha256_never_shares_even_within_a_scope(cache, kind):
    data = os.urandom(MiB)
    cache.fetch("first", [wanted("model.bin", data, kind)], MemorySource({"model.bin": data}), scope=A)
    source = MemorySource({"model.bin": data})

    report = cache.fetch("second", [wanted("model.bin", data, kind)], source, scope=A)

    assert report.bytes_transferred == MiB and source.bytes_read == MiB
    assert os.path.samefile(cache.artifact_path("first") / "model.bin", report.path / "model.bin")


def test_an_etag_claiming_another_artifacts_bytes_gets_its_own_sources_bytes(cache):
    data = os.urandom(MiB)
    cache.fetch("first", [wanted("model.bin", data, "etag")], MemorySource({"model.bin": data}), scope=A)
    other = os.urandom(MiB)

    with pytest.raises(FetchError, match=f"checksum mismatch: expected etag {md5(data)}"):
        cache.fetch("second", [wanted("model.bin", data, "etag")], MemorySource({"model.bin": other}), scope=A)


def test_a_partial_download_of_one_scope_is_never_resumed_by_another(cache):
    data = os.urandom(2 * MiB)
    with pytest.raises(SystemExit):  # interrupted as by a kill: its partial file stays for its own resume
        cache.fetch("a-model", [wanted("model.bin", data)], MemorySource({"model.bin": data}, down_after=MiB), scope=A)
    left_by_a = partial_files(cache.root)
    assert left_by_a
    source = MemorySource({"model.bin": data})

    report = cache.fetch("b-model", [wanted("model.bin", data)], source, scope=B)

    assert report.bytes_transferred == len(data) and source.bytes_read == len(data)
    assert all(p.exists() for p in left_by_a), "A's partial file stays for A's resume"
    resumed = cache.fetch("a-model", [wanted("model.bin", data)], MemorySource({"model.bin": data}), scope=A)
    assert 0 < resumed.bytes_transferred < len(data)
    assert os.path.samefile(resumed.path / "model.bin", report.path / "model.bin")


def test_a_partial_download_under_an_etag_is_resumed_only_by_the_same_artifact(cache):
    data = os.urandom(2 * MiB)
    files = [wanted("model.bin", data, "etag")]
    with pytest.raises(SystemExit):
        cache.fetch("one", files, MemorySource({"model.bin": data}, down_after=MiB), scope=A)
    other = MemorySource({"model.bin": data})

    cache.fetch("two", files, other, scope=A)
    own = MemorySource({"model.bin": data})
    resumed = cache.fetch("one", files, own, scope=A)

    assert other.bytes_read == len(data)
    assert own.bytes_read < len(data) and resumed.bytes_reused > 0


def test_an_artifact_fetched_again_for_another_scope_is_rebuilt(cache):
    data = os.urandom(MiB)
    cache.fetch("model", [wanted("model.bin", data)], MemorySource({"model.bin": data}), scope=A)
    source = MemorySource({"model.bin": data})

    report = cache.fetch("model", [wanted("model.bin", data)], source, scope=B)

    assert report.bytes_transferred == MiB


def test_a_blob_and_the_record_of_who_stored_it_go_together(cache):
    data = os.urandom(MiB)
    cache.fetch("model", [wanted("model.bin", data)], MemorySource({"model.bin": data}), scope=A)
    marks = cache.root / "records" / "blobs" / sha256(data)
    assert len(list(marks.iterdir())) == 1

    cache.remove_artifact("model")

    assert blob_files(cache.root) == []
    assert not marks.exists()
    assert not (cache.root / "records" / "artifacts" / "model.json").exists()
    source = MemorySource({"model.bin": data})
    cache.fetch("model", [wanted("model.bin", data)], source, scope=A)
    assert source.bytes_read == MiB


# The move up from layout 1 ---------------------------------------------------------


def layout_1_cache(root, data: bytes, outside) -> str:
    """Writes a cache as layout 1 left it: a blob named by its ETag and its sha256, an artifact linking it, and
    an artifact that is a hard link to a local source's file. Returns the ETag."""
    etag = md5(data)
    (root / "blobs" / "etag").mkdir(parents=True)
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "artifacts" / "from-s3").mkdir(parents=True)
    (root / "artifacts" / "from-folder").mkdir(parents=True)
    (root / "partial").mkdir()
    blob = root / "blobs" / "etag" / etag
    blob.write_bytes(data)
    os.link(blob, root / "blobs" / "sha256" / sha256(data))
    os.link(blob, root / "artifacts" / "from-s3" / "model.bin")
    os.link(outside, root / "artifacts" / "from-folder" / "model.bin")
    os.link(outside, root / "blobs" / "sha256" / hashlib.sha256(outside.read_bytes()).hexdigest())
    (root / "partial" / f"etag.{etag}.part").write_bytes(data[:100])
    return etag


def test_a_layout_1_cache_shares_nothing_it_held_and_keeps_its_folders(tmp_path, cache):
    data = os.urandom(MiB)
    outside = tmp_path / "shelf.bin"
    outside.write_bytes(os.urandom(300 * KiB))
    layout_1_cache(cache.root, data, outside)
    kept = (cache.root / "artifacts" / "from-folder" / "model.bin").read_bytes()
    source = MemorySource({"model.bin": data})

    report = cache.fetch("from-hub", [wanted("model.bin", data)], source, scope=A)

    assert report.bytes_transferred == MiB, "a blob named by layout 1 is downloaded again, not linked"
    assert layout.version(cache.root) == layout.VERSION
    assert not (cache.root / "blobs" / "etag").exists()
    assert blob_files(cache.root) == [cache.root / "blobs" / "sha256" / sha256(data)]
    assert partial_files(cache.root) == []
    # What ran keeps its folders; a folder that was a local source's own file is now the cache's copy.
    assert (cache.root / "artifacts" / "from-s3" / "model.bin").read_bytes() == data
    in_cache = cache.root / "artifacts" / "from-folder" / "model.bin"
    assert not os.path.samefile(in_cache, outside) and in_cache.read_bytes() == kept
    outside.write_bytes(b"edited")
    assert in_cache.read_bytes() == kept


def test_an_artifact_of_layout_1_is_rebuilt_when_fetched_again(tmp_path, cache):
    data = os.urandom(MiB)
    outside = tmp_path / "shelf.bin"
    outside.write_bytes(b"x")
    etag = layout_1_cache(cache.root, data, outside)
    source = MemorySource({"model.bin": data})

    report = cache.fetch("from-s3", [Wanted("model.bin", len(data), etag, "etag")], source, scope=A)

    assert report.bytes_transferred == MiB
    assert (report.path / "model.bin").read_bytes() == data


def test_a_cache_of_a_newer_layout_is_refused(cache):
    cache.root.mkdir(parents=True)
    (cache.root / "layout").write_text("3\n")

    with pytest.raises(FetchError, match="has layout 3, newer than this node agent knows"):
        cache.fetch("model", [], MemorySource({}), scope=A)
