"""Watching a test's child processes and Lava's shared-memory segments through /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # state, ppid, ... (after the command name)


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live (non-zombie) descendant of ``root``."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (f := _stat_fields(entry)) is not None and f[0] != "Z":
            table[int(entry)] = (int(f[1]), f[19])
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def alive(pid: int, start: str) -> bool:
    """The same process (pid and start time) still runs and is not a zombie."""
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z" and f[19] == start


def segments_of(pids) -> set[str]:
    """Names of the /dev/shm/psm_* segments that these processes have mapped."""
    names = set()
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/psm_" in line and "(deleted)" not in line:
                    names.add(os.path.basename(line.split()[-1]))
        except OSError:
            continue
    return names
