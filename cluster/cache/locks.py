"""File locks between the processes and threads that share one cache folder."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

LOCK_POLL = 0.1  # seconds between tries of a lock another process holds


class FileLock:
    """An exclusive (or shared) flock on a file under root/locks. Lock files are never deleted: deleting one
    while another process waits on it would let two processes hold "the" lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def try_acquire(self, *, shared: bool = False) -> bool:
        """Returns whether it got the lock without waiting."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def acquire(self, *, shared: bool = False, tick: Callable[[], None] | None = None) -> None:
        """Waits for the lock; with `tick`, polls instead of blocking and calls tick() between tries (so a
        waiting fetch still reports progress and can be cancelled)."""
        if tick is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            self.fd = fd
            return
        while not self.try_acquire(shared=shared):
            tick()
            time.sleep(LOCK_POLL)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1
