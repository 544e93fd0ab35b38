"""A Lava run's process group and shared-memory segments, seen through /proc.

Lava's processes of one run share a process group (the run's supervisor starts a new session),
and talk through ``psm_*`` segments in /dev/shm. A run that ends badly leaves both behind unless
someone ends the group and unlinks exactly the segments its processes mapped (other runs on the
machine keep theirs). Linux only, as Lava.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
SHM_PREFIX = "psm_"  # names of multiprocessing.shared_memory segments


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ..., start time
    at index 19), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat_fields(entry)
        if fields is not None and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of the live (non-zombie) descendants of ``root``; empty where /proc
    cannot be read."""
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return {}
    table = {int(e): (int(f[1]), f[19]) for e in entries
             if (f := stat_fields(e)) is not None and f[0] != "Z"}
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
    f = stat_fields(pid)
    return f is not None and f[0] != "Z" and f[19] == start


def mapped_segments(pids: list[int]) -> set[str]:
    """Names of /dev/shm/psm_* segments mapped by ``pids`` (still linked)."""
    names: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    path = parts[5].strip() if len(parts) == 6 else ""
                    if path.startswith(f"{SHM_DIR}/{SHM_PREFIX}") and "(deleted)" not in path:
                        names.add(os.path.basename(path))
        except OSError:
            continue
    return names


def unlink_segments(names: set[str]) -> None:
    """Unlink these segments, and drop them from this process's resource tracker if the run
    registered them there (so that it does not warn about them at exit)."""
    try:
        from multiprocessing import resource_tracker
        tracker_shared = getattr(resource_tracker._resource_tracker, "_fd", None) is not None
    except (ImportError, AttributeError):
        tracker_shared = False
    for name in names:
        if not name.startswith(SHM_PREFIX) or "/" in name:
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            continue
        log.info("removed leaked shared-memory segment %s", name)
        if tracker_shared:
            try:
                resource_tracker.unregister("/" + name, "shared_memory")
            except Exception:  # noqa: BLE001 - best effort, the segment is gone already
                log.debug("could not unregister %s from the resource tracker", name)


def end_own_group(timeout_s: float = 10.0) -> set[str]:
    """From a group leader: SIGKILL every other member of its process group until none is left
    (members may still be forking), then unlink every segment the group mapped. Returns them."""
    me = os.getpid()
    segments: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        others = [pid for pid in group_members(os.getpgid(0)) if pid != me]
        segments |= mapped_segments([me, *others])
        if not others or time.monotonic() > deadline:
            break
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        try:  # reap what we can, so that the killed children do not wait as zombies
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
    unlink_segments(segments)
    return segments
