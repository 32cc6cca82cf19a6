"""One module per outside system: s3.py (boto3), hf.py (huggingface_hub),
local.py (the file system). `open_source` picks one for a connection."""

from __future__ import annotations

from registry.sources.base import RemoteFile, Source, SourceError, is_safe_relative_path

__all__ = ["RemoteFile", "Source", "SourceError", "check_connection", "is_safe_relative_path", "open_source"]


def open_source(connection, *, location: str, revision: str = "") -> Source:
    """Returns a Source that reads the artifact at `location` through `connection`."""
    from registry.models import ConnectionKind

    if connection.kind == ConnectionKind.S3:
        from registry.sources.s3 import S3Source

        return S3Source(connection, prefix=location)
    if connection.kind == ConnectionKind.HF:
        from registry.sources.hf import HubSource

        return HubSource(connection, repo_id=location, revision=revision)
    from registry.sources.local import LocalSource

    return LocalSource(connection, subpath=location)


def check_connection(connection) -> str:
    """Tries the connection; returns what worked, or raises SourceError saying what failed."""
    from registry.models import ConnectionKind

    if connection.kind == ConnectionKind.S3:
        from registry.sources.s3 import check

    elif connection.kind == ConnectionKind.HF:
        from registry.sources.hf import check
    else:
        from registry.sources.local import check
    return check(connection)
