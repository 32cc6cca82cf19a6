"""File locks between the processes and threads that share one cache folder."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

LOCK_POLL = 0.1  # seconds between tries of a lock another process holds


class FileLock:
    """An exclusive (or shared) flock on a file under root/locks.

    Lock files of blobs and keys that are gone are removed (remove_if_free), which is safe only because both
    sides follow one rule: a lock file is unlinked only by a process holding its flock, and an acquirer, once
    its flock is granted, checks that the path still names the inode it locked, and starts over if not. An
    acquirer that opened the file just before it was unlinked would otherwise lock an inode nobody else can
    reach, and two processes would hold "the" lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def try_acquire(self, *, shared: bool = False) -> bool:
        """Returns whether it got the lock without waiting."""
        return self._lock((fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)

    def acquire(self, *, shared: bool = False, tick: Callable[[], None] | None = None) -> None:
        """Waits for the lock; with `tick`, polls instead of blocking and calls tick() between tries (so a
        waiting fetch still reports progress and can be cancelled)."""
        if tick is None:
            self._lock(fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            return
        while not self.try_acquire(shared=shared):
            tick()
            time.sleep(LOCK_POLL)

    def _lock(self, operation: int) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, operation)
            except BlockingIOError:
                os.close(fd)
                return False
            if self._names(fd):
                self.fd = fd
                return True
            os.close(fd)  # removed (or replaced) while we waited: lock the file the path names now

    def _names(self, fd: int) -> bool:
        """Whether the lock's path still names the inode open at `fd`."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def remove_if_free(self, stale: Callable[[], bool] = lambda: True) -> bool:
        """Deletes the lock file if nobody holds the lock and `stale()` (asked while holding it) says what it
        guards is gone; returns whether it did. Never waits."""
        if not self.try_acquire():
            return False
        try:
            if not stale():
                return False
            os.unlink(self.path)  # under the flock: see the class's docstring
            return True
        finally:
            self.release()
