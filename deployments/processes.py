"""Which process is a deployment's server, and whether it still runs.

A server is started in a session of its own, so its pid is also its process group's id: stopping it
signals the group, and vLLM's engine processes go with it. A pid alone does not say which process it
is, though: after a reboot (or enough forks) an unrelated process can hold the number a server once
had, and adopting or signalling it would hand a workspace's deployment someone else's process or kill
it. So a server is recorded as "<boot id>:<start time>" (the kernel's boot id, and the process's start
time in clock ticks since boot) beside its pid.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    state first, then ppid, pgrp, … start time 20th. None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie child of ours is reaped and counts as dead)."""
    if not pid:
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: a server adopted after the agent restarted
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_alive(pgid: int | None) -> bool:
    """Whether any process of the server's process group (the server and the
    engine processes it forked) still runs; zombies do not count."""
    if not pgid:
        return False
    if alive(pgid):  # reaps the leader if it is our child
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            return True  # (a process gone while we looked has no fields)
    return False


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def identity(pid: int) -> str | None:
    """The identity of the running process `pid`, or None when there is none."""
    fields = _stat(pid)
    return None if fields is None else f"{boot_id()}:{fields[19]}"


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


def carrying(name: str, value: str) -> list[tuple[int, int]]:
    """Returns (pid, process group) of every live process whose environment, as it was started, holds
    `name`=`value` (the launch token a server got, supervisor.LAUNCH_ENV), oldest first. Reads only the
    processes of this user (another user's environment cannot be read, and is skipped); costs one scan
    of /proc, so it is for the rare launch an agent died in the middle of."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        fields = _stat(entry.name)
        if needle in environ and fields is not None and fields[0] != "Z":
            found.append((int(fields[19]), int(entry.name), int(fields[2])))
    return [(pid, group) for _, pid, group in sorted(found)]
