"""Which process is a deployment's server: its pid, and what makes that pid unambiguous.

A pid alone is not: after a reboot (or enough forks) an unrelated process can hold the number a server
once had, and adopting or signalling it would hand a workspace's deployment someone else's process or
kill it. A server is recorded as "<boot id>:<start time>" (the kernel's boot id, and the process's start
time in clock ticks since boot, from /proc/<pid>/stat) beside its pid, which is also its process group.
"""

from __future__ import annotations

from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def identity(pid: int) -> str | None:
    """The identity of the running process `pid`, or None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name (which may hold spaces and parentheses): state is the first, start time the 20th.
    started = stat.rsplit(")", 1)[1].split()[19]
    return f"{boot_id()}:{started}"


def is_ours(pid: int, recorded: str) -> bool:
    """Whether `pid` may still be the server recorded as `recorded`: the same boot, and either the same
    process or none at all (its leader gone, the rest of its group may still run: a pid stays taken while
    a process group of that number lives, so no stranger can hold it then). An empty `recorded` (a
    server started before identities were kept) is trusted, as before."""
    if not recorded:
        return True
    recorded_boot, _, _ = recorded.partition(":")
    if recorded_boot != boot_id():
        return False  # nothing of a server survives a reboot
    current = identity(pid)
    return current is None or current == recorded
