"""One module per outside system: s3.py (boto3), hf.py (huggingface_hub),
local.py (the file system). `open_source` picks one for a connection."""

from __future__ import annotations

from registry.models import ConnectionKind
from registry.sources import hf, local, s3
from registry.sources.base import RemoteFile, Source, SourceError, is_safe_relative_path

__all__ = [
    "RemoteFile",
    "Source",
    "SourceError",
    "check_connection",
    "is_safe_relative_path",
    "location_problem",
    "open_source",
]


def open_source(connection, *, location: str, revision: str = "") -> Source:
    """Returns a Source that reads the artifact at `location` through `connection`."""
    if connection.kind == ConnectionKind.S3:
        return s3.S3Source(connection, prefix=location)
    if connection.kind == ConnectionKind.HF:
        return hf.HubSource(connection, repo_id=location, revision=revision)
    return local.LocalSource(connection, subpath=location)


def location_problem(connection, location: str) -> str | None:
    """Returns why `location` cannot name an artifact behind `connection` (what
    rule it breaks), or None, before anything is read: a hub's repository id, and a
    local connection's folder, whose root an administrator may have taken back."""
    if connection.kind == ConnectionKind.HF:
        return hf.repo_id_problem(location)
    if connection.kind == ConnectionKind.LOCAL:
        try:
            local.confined_root(connection.root_path, workspace=connection.workspace)
        except SourceError as exc:
            return str(exc)
    return None


def check_connection(connection) -> str:
    """Tries the connection; returns what worked, or raises SourceError saying what failed."""
    module = {ConnectionKind.S3: s3, ConnectionKind.HF: hf}.get(connection.kind, local)
    return module.check(connection)
