"""A model server's log as people read it: the end of the file, read without
loading the rest; the console's own checks hidden; the deployment's key masked;
searched. No Django: the deployment page, its download and the API call these."""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

KiB = 1 << 10
MiB = 1 << 20
# What the viewer shows at most: a crash's traceback and the start-up before it fit,
# and the page polls it every 2 s, so it must stay cheap to read and to render.
SHOWN_LINES = 2000
SHOWN_BYTES = 256 * KiB
# How far back a search looks. A busy server writes an access line per request, so
# the whole file can be GiBs; the download has the rest.
SEARCHED_BYTES = 4 * MiB
CHUNK_BYTES = 64 * KiB
MASK = "****"

# The access lines of the requests the supervisor itself sends (vLLM's uvicorn logs each one), e.g.
#   (APIServer pid=123) INFO:     127.0.0.1:45678 - "GET /health HTTP/1.1" 200 OK
_CHECK = re.compile(r'"GET /(?:health|v1/models|metrics)/?(?:\?[^ "]*)? HTTP/[0-9.]+" \d{3}\b')


def is_health_check(line: str) -> bool:
    """Returns whether `line` is the access line of a health, model-list or metrics check."""
    return _CHECK.search(line) is not None


def mask(text: str, secrets: Iterable[str]) -> str:
    """Returns `text` with every occurrence of each non-empty secret replaced by ****."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


@dataclass(frozen=True)
class Tail:
    """The end of a log: its whole lines, and whether the log goes further back than they do."""

    lines: list[str]
    cut: bool = False


def split_lines(data: bytes) -> list[str]:
    """Returns the lines of `data`, decoded as UTF-8 (undecodable bytes replaced). A
    progress bar's carriage returns end lines too, as a terminal would show them."""
    return [line.decode(errors="replace") for line in data.splitlines()]


def read_tail(path: str, max_bytes: int) -> Tail:
    """Returns the whole lines of the last `max_bytes` of the file at `path`, reading
    nothing before them; raises OSError when the file cannot be read."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        # One byte before the cut says whether the cut falls on a line's start.
        f.seek(max(0, start - 1))
        data = f.read(size - f.tell())
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else data
    return Tail(lines=split_lines(data), cut=start > 0)


@dataclass(frozen=True)
class Excerpt:
    """What the viewer shows of a log: `lines`, oldest first; with a search, `matches`
    counts the matching lines in the part read (the lines shown are the last of them)."""

    lines: list[str]
    matches: int | None
    hidden: int
    cut: bool
    # "file": the server's log file; "copy": the file cannot be read here, so the last lines the node reported.
    source: str = "file"


def excerpt(
    tail: Tail, *, limit: int = SHOWN_LINES, search: str = "", health_checks: bool = False, secrets: Iterable[str] = ()
) -> Excerpt:
    """Returns the last `limit` lines of `tail` with the secrets masked, without the
    console's checks unless `health_checks`, and with `search` only those containing it
    (case-insensitive). The search looks at masked lines: a key cannot be found by guessing."""
    secrets = [s for s in secrets if s]
    needle = search.strip().casefold()
    shown: deque[str] = deque(maxlen=max(0, limit))
    hidden = matches = 0
    for line in tail.lines:
        if not health_checks and is_health_check(line):
            hidden += 1
            continue
        line = mask(line, secrets)
        if needle and needle not in line.casefold():
            continue
        matches += 1
        shown.append(line)
    return Excerpt(lines=list(shown), matches=matches if needle else None, hidden=hidden, cut=tail.cut)


def read(
    path: str,
    *,
    copy: str = "",
    limit: int = SHOWN_LINES,
    search: str = "",
    health_checks: bool = False,
    secrets: Iterable[str] = (),
) -> Excerpt:
    """Returns the excerpt (see `excerpt`) of the last SHOWN_BYTES of the log at `path`, or
    of its last SEARCHED_BYTES with a search. When the file cannot be read (the node is
    another host, or the server never started), of `copy`: the last lines the node reported."""
    try:
        tail, source = read_tail(path, SEARCHED_BYTES if search.strip() else SHOWN_BYTES), "file"
    except OSError:
        tail, source = Tail(split_lines(copy.encode())), "copy"
    found = excerpt(tail, limit=limit, search=search, health_checks=health_checks, secrets=secrets)
    return replace(found, source=source)


def masked_chunks(f: BinaryIO, *, size: int, secrets: Iterable[str], chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yields the first `size` bytes of the binary file `f` in chunks of about `chunk`
    bytes with every secret replaced by ****, then closes `f`. `size` is what the file
    held when the download began: a server still writing does not make it endless."""
    encoded = [s.encode() for s in secrets if s]
    # A secret may straddle two chunks: the bytes that could start one wait for the next chunk.
    keep = max((len(s) for s in encoded), default=1) - 1
    pending = b""
    with f:
        while size > 0 and (block := f.read(min(chunk, size))):
            size -= len(block)
            pending += block
            for secret in encoded:
                pending = pending.replace(secret, MASK.encode())
            cut = len(pending) - keep
            if cut > 0:
                yield pending[:cut]
                pending = pending[cut:]
        if pending:
            yield pending


def stream(path: str, *, secrets: Iterable[str]) -> Iterator[bytes]:
    """Returns the chunks of the whole file at `path` as it is now, secrets masked,
    never more than a chunk in memory; raises OSError at once when it cannot be read."""
    f = open(path, "rb")  # noqa: SIM115 (masked_chunks closes it, also when the download is abandoned)
    return masked_chunks(f, size=os.fstat(f.fileno()).st_size, secrets=list(secrets))
