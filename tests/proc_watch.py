"""Starting a test's child command robustly, and watching its processes and Lava's shared-memory
segments through /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable


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


def _default_signal_actions() -> None:
    """In the child before exec: SIGINT, SIGTERM and SIGHUP back to their default actions, even
    when the test run itself ignores them (started with nohup, or with `cmd &` from a script)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


class Spawned:
    """A command started in its own session with default signal actions, its output in files (a
    surviving grandchild cannot hold a pipe open), every descendant and /dev/shm/psm_* segment it
    has recorded while watched, and a cleanup that kills whatever of it is left. Every wait has
    a timeout. Use as a context manager::

        with Spawned([...], cwd=ROOT) as run:
            assert run.wait_until(lambda: run.segments, 60)
            run.proc.send_signal(signal.SIGTERM)
            rc = run.wait_exit(60)
            assert run.survivors() == [] and run.leftover_segments() == []
    """

    def __init__(self, cmd: list[str], cwd: str | Path, env: dict[str, str] | None = None) -> None:
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err, start_new_session=True,
                                     preexec_fn=_default_signal_actions)
        self.seen: dict[int, str] = {}
        self.segments: set[str] = set()

    def __enter__(self) -> "Spawned":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
        self._out.close()
        self._err.close()

    def watch(self) -> None:
        """Record the command's current descendants and the segments they map."""
        if self.proc.poll() is None:
            self.seen.update(descendants(self.proc.pid))
        self.segments |= segments_of([pid for pid, start in self.seen.items() if alive(pid, start)])

    def wait_until(self, condition: Callable[[], object], timeout_s: float) -> bool:
        """Watch until ``condition()`` holds (True) or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.watch()
            if condition():
                return True
            time.sleep(0.1)
        return False

    def wait_exit(self, timeout_s: float) -> int | None:
        """Watch until the command exits; its return code, or None when it did not exit in time."""
        self.wait_until(lambda: self.proc.poll() is not None, timeout_s)
        return self.proc.poll()

    def output(self) -> tuple[str, str]:
        """stdout and stderr so far."""
        texts = []
        for f in (self._out, self._err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", errors="replace"))
        return texts[0], texts[1]

    def survivors(self) -> list[int]:
        return [pid for pid, start in self.seen.items() if alive(pid, start)]

    def leftover_segments(self) -> list[str]:
        return sorted(s for s in self.segments if os.path.exists(f"/dev/shm/{s}"))

    def kill_all(self) -> None:
        """SIGKILL the command's session and every recorded descendant (and its process group)
        still alive, reap the command, unlink its leftover segments."""
        own = [self.proc.pid] if self.proc.poll() is None else []  # not reaped: pid still ours
        for pid in [*own, *self.survivors()]:
            for kill, target in ((os.killpg, _pgid(pid)), (os.kill, pid)):
                if target is not None and target > 1 and target != os.getpgid(0):
                    with contextlib.suppress(OSError):
                        kill(target, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for name in self.leftover_segments():
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
