"""A model server's log as people read it: the end of the file, read without
loading the rest; the console's own checks hidden; the deployment's key masked;
searched. And kept bounded on the node: rotated by size while the server writes
it. No Django: the deployment page, its download, the API and the supervisor
call these."""

from __future__ import annotations

import itertools
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


def _read_end(path: str, max_bytes: int) -> tuple[bytes, int]:
    """Returns (the last `max_bytes` of the file at `path` with the byte before them, where they start)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        # One byte before the cut says whether the cut falls on a line's start.
        f.seek(max(0, start - 1))
        return f.read(size - f.tell()), start


def read_tail(path: str, max_bytes: int) -> Tail:
    """Returns the whole lines of the last `max_bytes` of the log at `path`, reading nothing before
    them; raises OSError when the file cannot be read. A log rotated a moment ago (see `rotate`) is
    short: the rest of those bytes come from the end of `path`.1, so a crash's last lines and the
    viewer's page do not vanish with a rotation."""
    data, start = _read_end(path, max_bytes)
    older = False  # whether an older file holds lines before all of these
    if start == 0 and len(data) < max_bytes:
        try:
            earlier, start = _read_end(f"{path}.1", max_bytes - len(data))
        except OSError:
            pass
        else:
            data = earlier + data
            older = start == 0 and os.path.exists(f"{path}.2")
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else data[1:]  # (one line longer than all that is read)
    return Tail(lines=split_lines(data), cut=start > 0 or older)


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


def rotated(path: str) -> list[str]:
    """Returns the files the log at `path` was rotated into (`path`.1, `path`.2, …), oldest first."""
    folder, name = os.path.split(path)
    try:
        numbers = [
            int(entry.name[len(name) + 1 :])
            for entry in os.scandir(folder or ".")
            if entry.name.startswith(name + ".") and entry.name[len(name) + 1 :].isdigit()
        ]
    except OSError:
        return []
    return [f"{path}.{n}" for n in sorted(numbers, reverse=True)]


def stream(path: str, *, secrets: Iterable[str]) -> Iterator[bytes]:
    """Returns the chunks of the whole log at `path` as it is now, the files it was rotated into
    first, secrets masked, never more than a chunk in memory; raises OSError at once when the
    log itself cannot be read. Every file is opened now: a rotation while the download runs
    renames them, and an open file follows its content."""
    secrets = list(secrets)
    files = []
    for name in rotated(path):
        try:
            files.append(open(name, "rb", opener=_no_link))  # noqa: SIM115 (masked_chunks closes it)
        except OSError:
            continue  # gone meanwhile: rotated past the number kept
    try:
        files.append(open(path, "rb"))  # noqa: SIM115 (masked_chunks closes it, also when the download is abandoned)
    except OSError:
        for f in files:
            f.close()
        raise
    # Each file's size now, as the list is made: a server still writing does not make the download endless.
    return itertools.chain.from_iterable([
        masked_chunks(f, size=os.fstat(f.fileno()).st_size, secrets=secrets) for f in files
    ])  # fmt: skip


def _no_link(name: str, flags: int) -> int:
    return os.open(name, flags | os.O_NOFOLLOW)


def _copy(source: int, target: int) -> int:
    """Copies what is left of `source` from its offset to `target` until it reads nothing more; returns the bytes."""
    copied = 0
    while block := os.read(source, CHUNK_BYTES * 16):
        os.write(target, block)
        copied += len(block)
    return copied


def rotate(path: str, *, max_bytes: int, keep: int) -> int | None:
    """When the log at `path` is larger than `max_bytes`, moves its content to `path`.1 (the older
    `path`.1 … become .2 …, those past `keep` go) and empties it in place; returns the bytes moved,
    or None when it was not due (or there is no such log).

    Copy-truncate, because the server holds the log open as its stdout and must never stop for it:
    it was opened with O_APPEND (supervisor.log_open), so after the truncation the server's next
    write lands at the new end, not at its old offset. What it writes between the copy's last read
    (which found nothing more) and the truncation is lost, and a write under way then may leave its
    line cut at the end of `path`.1: that window is one read and one ftruncate call (measured in
    deployments/tests/test_logs.py: about one line in 40 rotations of a log written at 5,000 lines
    a second). Safe for an agent that dies at any point: the copy is renamed into place before the
    truncation, so a rotation cut short leaves lines twice, never lost."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size <= max_bytes:
            return None
        if keep < 1:
            os.ftruncate(fd, 0)
            return 0
        for older in rotated(path):  # oldest first, so that each moves to a free number
            n = int(older.rpartition(".")[2])
            if n >= keep:
                os.unlink(older)
            else:
                os.replace(older, f"{path}.{n + 1}")
        partial = f"{path}.rotating"
        if os.path.lexists(partial):
            os.unlink(partial)  # from a rotation cut short: its lines are still in the log
        out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            moved = _copy(fd, out)
            os.replace(partial, f"{path}.1")
            moved += _copy(fd, out)  # what the server wrote meanwhile, right before the truncation
            os.ftruncate(fd, 0)
        finally:
            os.close(out)
        return moved
    finally:
        os.close(fd)
