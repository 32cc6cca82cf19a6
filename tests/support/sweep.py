"""Where a secret could leak, gathered as text for a sweep: every row of the database, every file under
some folders, every process's command line, and every command any client sent to Redis (Celery's
messages, whose bodies are base64, decoded)."""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from pathlib import Path

import redis
from django.apps import apps

_BASE64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def database_text() -> str:
    """Every column of every row of every table the console's models have."""
    parts = []
    for model in apps.get_models():
        for row in model._base_manager.values():
            parts.append(f"{model._meta.label} {row!r}")
    return "\n".join(parts)


def files_holding(folders, needles: list[str], *, chunk: int = 4 * 1024 * 1024) -> list[tuple[Path, str]]:
    """(file, secret) for each secret found in a file under `folders` (symbolic links not followed)."""
    encoded = [(n, n.encode()) for n in needles]
    overlap = max(len(e) for _, e in encoded)
    found = []
    for folder in folders:
        for dirpath, _, filenames in os.walk(folder):
            for filename in filenames:
                path = Path(dirpath) / filename
                if path.is_symlink():
                    continue
                try:
                    with open(path, "rb") as f:
                        tail = b""
                        while block := f.read(chunk):
                            window = tail + block
                            found += [(path, n) for n, e in encoded if e in window and (path, n) not in found]
                            tail = window[-overlap:]
                except OSError:
                    continue
    return found


def command_lines() -> dict[int, str]:
    """What `ps` shows every user: each process's command line."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return lines


def decoded(data: bytes) -> bytes:
    """`data` with each base64-looking run followed by what it decodes to (Celery encodes message bodies)."""
    out = [data]
    for run in _BASE64.findall(data):
        try:
            out.append(base64.b64decode(run + b"=" * (-len(run) % 4)))
        except (binascii.Error, ValueError):
            continue
    return b"\n".join(out)


class RedisMonitor:
    """Records every command every client sends to the Redis server while it runs (MONITOR)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self.commands: list[bytes] = []
        self._thread: threading.Thread | None = None
        self._monitor = None

    def __enter__(self) -> RedisMonitor:
        self._monitor = self._client.monitor().__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        try:
            while True:
                response = self._monitor.connection.read_response()
                self.commands.append(response if isinstance(response, bytes) else str(response).encode())
        except Exception:  # the connection closed: the sweep is over
            return

    def __exit__(self, *exc) -> None:
        self._monitor.connection.disconnect()
        self._thread.join(timeout=5)

    def text(self) -> bytes:
        return b"\n".join(decoded(c) for c in self.commands)


def get_urls(*, ints: set[int], strings: set[str]) -> list[str]:
    """Every named page and endpoint of the console (Django's admin aside), each integer argument filled
    with every value of `ints` and each other one with every value of `strings` (the ids and names of
    what a scenario made)."""
    import itertools

    from django.urls import NoReverseMatch, reverse

    from tests.support.urlconf import arguments_of, named_urls

    urls = set()
    for name, route in named_urls(excluded_namespaces={"admin"}).items():
        if route.unnamed:
            continue
        names = sorted(arguments_of(name))
        pools = [sorted(ints) if n in ("pk", "workspace_pk", "user_id", "number") else sorted(strings) for n in names]
        for values in itertools.product(*pools):
            try:
                urls.add(reverse(name, kwargs=dict(zip(names, values, strict=True))))
            except NoReverseMatch:
                continue
    return sorted(urls)
