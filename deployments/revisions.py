"""What changed between two revisions of a deployment, in words a person reads
("max_model_len 2048 → 1024", "node cpu-1 → cpu-2", "extra arguments:
'--max-num-seqs 8' added"), and a deployment's history as the page lists it.
Pure: no Django, no database; the rows it reads are anything with the fields
of a DeploymentRevision."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True)
class Snapshot:
    """A revision's arguments and resources."""

    node: str
    accelerator_indices: Sequence[int]
    settings: dict
    extra_args: str
    extra_env: str  # plain "NAME=value" lines; describe() never shows a value


@dataclass(frozen=True)
class Entry:
    """One line of the history: the revision (a DeploymentRevision), what changed since the one before it,
    and whether it is the one the deployment has now."""

    revision: object
    changes: list[str]
    current: bool


def describe(old: Snapshot, new: Snapshot) -> list[str]:
    """Returns what changed from `old` to `new`, one phrase per change: the node, the GPUs,
    each setting (in name order), each extra argument and each environment variable (by name:
    values can be secrets, so a changed value reads "environment: NAME changed")."""
    changes = []
    if old.node != new.node:
        changes.append(f"node {old.node} → {new.node}")
    if list(old.accelerator_indices) != list(new.accelerator_indices):
        changes.append(f"GPUs {_gpus(old.accelerator_indices)} → {_gpus(new.accelerator_indices)}")
    for key in sorted(old.settings.keys() | new.settings.keys()):
        before, after = old.settings.get(key), new.settings.get(key)
        if before == after:
            continue
        if before is None:
            changes.append(f"{key} set to {_value(key, after)}")
        elif after is None:
            changes.append(f"{key} back to its default (was {_value(key, before)})")
        else:
            changes.append(f"{key} {_value(key, before)} → {_value(key, after)}")
    changes += _compare("extra arguments", _arguments(old.extra_args), _arguments(new.extra_args))
    changes += _compare_environment(_environment(old.extra_env), _environment(new.extra_env))
    return changes


def history(revisions: Iterable, *, current: int) -> list[Entry]:
    """Returns the entries for `revisions` (any order), newest first, each with what changed
    since the revision recorded before it. The oldest recorded says how it began: "first
    revision" for revision 1, or that earlier ones were not recorded (deployments made before
    revisions were kept)."""
    rows = sorted(revisions, key=lambda r: r.number, reverse=True)
    entries = []
    for newer, older in zip(rows, [*rows[1:], None], strict=True):
        if older is not None:
            changes = describe(snapshot_of(older), snapshot_of(newer)) or ["no change"]
        elif newer.number == 1:
            changes = ["first revision"]
        else:
            changes = ["the revisions before this one were not recorded"]
        entries.append(Entry(revision=newer, changes=changes, current=newer.number == current))
    return entries


def snapshot_of(row) -> Snapshot:
    """The Snapshot of a revision row (its node gone: shown as "a removed node")."""
    node = row.node.name if row.node is not None else "a removed node"
    return Snapshot(
        node=node, accelerator_indices=row.accelerator_indices or [], settings=row.settings or {},
        extra_args=row.extra_args, extra_env=row.env_text,
    )  # fmt: skip


def _gpus(indices: Sequence[int]) -> str:
    return ", ".join(map(str, indices)) if indices else "none"


def _value(key: str, value) -> str:
    if key.endswith("_bytes") and isinstance(value, int) and value >= GiB:
        return f"{value / GiB:g} GiB"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _compare(label: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Phrases for the items ({key: how it reads}) added, changed and removed, in the order they are written."""
    changes = []
    for key, shown in new.items():
        if key not in old:
            changes.append(f"{label}: '{shown}' added")
        elif old[key] != shown:
            changes.append(f"{label}: '{old[key]}' → '{shown}'")
    changes += [f"{label}: '{shown}' removed" for key, shown in old.items() if key not in new]
    return changes


def _arguments(text: str) -> dict[str, str]:
    """The extra arguments as {flag: the flag with its values}: "--a 1 --b" is {"--a": "--a 1", "--b": "--b"}.
    Words before the first flag, and a flag given again, get keys of their own."""
    try:
        words = shlex.split(text)
    except ValueError:  # never saved (the checks refuse it), but a history must still read
        words = text.split()
    groups: list[list[str]] = []
    for word in words:
        if not groups or (word.startswith("-") and not _is_number(word)):
            groups.append([word])
        else:
            groups[-1].append(word)
    found: dict[str, str] = {}
    for group in groups:
        key = group[0].split("=", 1)[0].replace("_", "-")
        while key in found:
            key += " "
        found[key] = shlex.join(group)
    return found


def _environment(text: str) -> dict[str, str]:
    """The environment as {name: value}, one `KEY=VALUE` a line; blank lines and comments skipped."""
    found = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name.strip()] = value.strip()
    return found


def _compare_environment(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Phrases for the variables added, changed and removed, by name only."""
    changes = [f"environment: {name} added" for name in new if name not in old]
    changes += [f"environment: {name} changed" for name in new if name in old and old[name] != new[name]]
    changes += [f"environment: {name} removed" for name in old if name not in new]
    return changes


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True
