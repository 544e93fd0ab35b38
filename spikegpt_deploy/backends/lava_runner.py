"""Run a Lava network in Lava's CPU simulator (``Loihi2SimCfg``) and always clean up after it.

Lava runs every ProcessModel in a forked OS process, talks through ``psm_*`` shared-memory
segments in /dev/shm, hides errors raised inside process models behind "1 Exception(s)
occurred", then hangs in ``stop()``; a killed or hung run orphans its children and leaks its
segments (lava-notes). So ``LavaRunner`` runs each simulation in a supervisor child process that
it forks into its own session and process group:

- the child builds the network (``build(inputs, num_steps) -> LavaNetwork``), compiles it,
  reports the shared-memory segments it mapped, runs, reads the outputs (streamed through
  ``lava_procs.sinks`` buffers, not Var.get), stops Lava cleanly and sends the results back;
- on an error inside a process model the child sends the model's real traceback (from Lava's
  runtime log at INFO, or its actors) and exits without the hanging ``stop()``;
- the parent waits with a timeout; on error, timeout, or Ctrl-C (KeyboardInterrupt) it kills the
  whole process group, waits until it is gone, and unlinks every ``psm_*`` segment that the run's
  processes mapped (only those: other runs on the machine keep theirs).

Lava is imported only in the child (and checked for before forking): the calling process keeps
its multiprocessing start method, and a torch thread pool in it is never used by the child as
long as ``build`` and the models use numpy only (torch in a host ProcessModel deadlocks after
fork).
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from spikegpt_deploy.backends.base import RunResult
from spikegpt_deploy.errors import DeployError, SimulationError

log = logging.getLogger(__name__)

SELECT_TAGS = ("floating_pt", "fixed_pt")
SHM_DIR = "/dev/shm"
SHM_PREFIX = "psm_"  # names of multiprocessing.shared_memory segments
_RUNTIME_LOGGER = "lava.magma.runtime.runtime"  # logs model tracebacks at INFO on errors


@dataclass
class LavaNetwork:
    """What a build function returns.

    run_process: any process of the network (``run`` is called on it). outputs: name -> a
    ``lava_procs.sinks`` StreamSink / VarProbe (streamed, (T, *shape)), a
    ``lava.proc.io.sink.RingBuffer`` (read with Var.get, slow: keep it small; returned time-first)
    or a Var (its final value). exception_proc_model_map: passed to ``Loihi2SimCfg``.
    """

    run_process: Any
    outputs: Mapping[str, Any]
    exception_proc_model_map: Mapping[Any, Any] | None = None


BuildFn = Callable[[Mapping[str, np.ndarray], int], LavaNetwork]


def require_lava() -> None:
    """Raise a SimulationError naming the fix when Lava is not installed."""
    if importlib.util.find_spec("lava") is None:
        raise SimulationError("Lava is not installed in this Python environment; install "
                              "'lava-nc==0.10.0' (pip install lava-nc==0.10.0) to simulate.")


# ----------------------------------------------------------------------------- /proc helpers
def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _mapped_segments(pids: list[int]) -> set[str]:
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


def _unlink_segments(names: set[str]) -> None:
    """Unlink our leftover segments, and drop them from this process's resource tracker if the
    run registered them there (so it does not warn about them at exit)."""
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


# ----------------------------------------------------------------------------- child side
class _TracebackCapture(logging.Handler):
    """Collects the model tracebacks Lava's runtime logs at INFO when a run fails."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Traceback" in msg:
            self.messages.append(msg)


def _failed_actors(process: Any) -> list[str]:
    """Tracebacks of Lava actor processes that have exited with an exception.

    Lava's SystemProcess pipes (exception, traceback) to its parent when a ProcessModel raises;
    the runtime only reads them while joining all actors, which blocks for ever when a healthy
    actor waits on the dead one. So the supervisor looks itself (private Lava structures, guarded).
    """
    out = []
    try:
        actors = list(process.runtime._messaging_infrastructure.actors)
    except Exception:  # noqa: BLE001 - private structures may differ between Lava versions
        return out
    for actor in actors:
        try:
            if not getattr(actor, "_is_done", False) and actor.is_alive():
                continue
            exc = actor.exception
        except Exception:  # noqa: BLE001 - a closed or foreign process object: skip it
            continue
        if exc:
            out.append(str(exc[1]) if isinstance(exc, tuple) and len(exc) > 1 else str(exc))
    return out


def _read_output(name: str, obj: Any) -> np.ndarray:
    data = getattr(obj, "data", None)
    if callable(data):  # lava_procs StreamSink / VarProbe: (T, *shape) already
        return np.asarray(data())
    if data is not None and hasattr(data, "get"):  # lava.proc.io.sink.RingBuffer: (*shape, T)
        return np.moveaxis(np.asarray(data.get()), -1, 0)
    if hasattr(obj, "get"):  # a Var
        return np.asarray(obj.get())
    raise SimulationError(f"output {name!r} is a {type(obj).__name__}; expected a StreamSink, "
                          "VarProbe, lava.proc.io.sink.RingBuffer or Var.")


def _prepare_child() -> None:
    # Lava calls multiprocessing.set_start_method('fork') unforced at import, which fails once a
    # start method is set, and multiprocessing sets one in every child it starts. This is a
    # throwaway fork: forget the setting (private attribute) so that Lava's import succeeds.
    if "lava.magma.runtime.message_infrastructure.multiprocessing" not in sys.modules:
        multiprocessing.context._default_context._actual_context = None  # type: ignore


def _child_main(conn: Any, build: BuildFn, inputs: Mapping[str, np.ndarray], num_steps: int,
                select_tag: str) -> None:
    """Supervisor: build, compile, run, read, stop; report to the parent; never return."""
    os.setsid()  # own session and process group: the parent can end all of it at once
    stage, code = "import", 1
    try:
        _prepare_child()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg

        stage = "build"
        t0 = time.perf_counter()
        net = build(inputs, num_steps)
        if not isinstance(net, LavaNetwork):
            raise SimulationError(f"the build function returned {type(net).__name__}; expected a "
                                  "LavaNetwork(run_process, outputs).")
        t1 = time.perf_counter()
        stage = "compile"
        cfg = Loihi2SimCfg(select_tag=select_tag,
                           exception_proc_model_map=dict(net.exception_proc_model_map or {}))
        net.run_process.create_runtime(run_cfg=cfg)
        conn.send(("segments", _mapped_segments([os.getpid()])))
        capture = _TracebackCapture()
        runtime_log = logging.getLogger(_RUNTIME_LOGGER)
        runtime_log.setLevel(logging.INFO)  # Runtime logs model tracebacks at INFO
        runtime_log.addHandler(capture)
        t2 = time.perf_counter()
        stage = "run"
        raised: list[BaseException] = []

        def _run() -> None:
            try:
                net.run_process.run(condition=RunSteps(num_steps=num_steps))
            except BaseException as exc:  # noqa: BLE001 - handed to the supervising thread
                raised.append(exc)

        runner = threading.Thread(target=_run, name="lava-run", daemon=True)
        runner.start()
        failed: list[str] = []
        while runner.is_alive() and not failed:
            runner.join(0.05)
            failed = _failed_actors(net.run_process)
        if failed or raised:
            summary = f"{type(raised[0]).__name__}: {raised[0]}" if raised else "a process died"
            details = failed or capture.messages or _failed_actors(net.run_process)
            conn.send(("error", stage, summary, details, None))
            conn.close()
            os._exit(1)  # Lava's stop() hangs after a model error; the parent ends the group
        t3 = time.perf_counter()
        stage = "readout"
        outputs = {name: _read_output(name, obj) for name, obj in net.outputs.items()}
        t4 = time.perf_counter()
        stage = "stop"
        net.run_process.stop()
        t5 = time.perf_counter()
        conn.send(("ok", outputs, {"build_s": t1 - t0, "compile_s": t2 - t1, "run_s": t3 - t2,
                                   "readout_s": t4 - t3, "stop_s": t5 - t4}))
        code = 0
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        keep = exc if isinstance(exc, DeployError) else None
        try:
            conn.send(("error", stage, f"{type(exc).__name__}: {exc}",
                       [traceback.format_exc()], keep))
        except Exception:  # noqa: BLE001 - the parent sees the exit code instead
            pass
    try:
        conn.close()
    finally:
        os._exit(code)


# ----------------------------------------------------------------------------- parent side
class LavaRunner:
    """Runs a Lava network for N steps in Lava's simulator; implements ``SimulationBackend``.

    ``build(inputs, num_steps) -> LavaNetwork`` constructs the processes (it runs in the
    supervisor child, so it must not need anything that does not survive ``fork``).
    ``select_tag``: 'floating_pt' or 'fixed_pt'. ``timeout_s`` bounds one whole run (build,
    compile, steps, readout); hitting it raises SimulationError after cleaning up. Usable as a
    context manager; every ``run`` cleans up after itself, ``close`` makes sure of it.
    """

    name = "lava"

    def __init__(self, build: BuildFn, select_tag: str = "fixed_pt", timeout_s: float = 300.0,
                 stop_timeout_s: float = 10.0) -> None:
        if select_tag not in SELECT_TAGS:
            raise SimulationError(f"select_tag={select_tag!r}; expected one of {SELECT_TAGS}.")
        if not timeout_s > 0:
            raise SimulationError(f"timeout_s={timeout_s}; expected a positive number of seconds.")
        self._build = build
        self.select_tag = select_tag
        self.timeout_s = float(timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.last_pgid: int | None = None
        self.last_segments: set[str] = set()

    def __enter__(self) -> "LavaRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End anything the last run left (normally nothing); idempotent."""
        if self.last_pgid is not None:
            pids = _group_members(self.last_pgid)
            if pids:
                self.last_segments |= _mapped_segments(pids)
                self._kill_group(self.last_pgid, None)
            _unlink_segments(self.last_segments)

    def leftovers(self) -> tuple[list[int], list[str]]:
        """Live processes and still-linked segments of the last run (both empty after any run)."""
        pids = _group_members(self.last_pgid) if self.last_pgid is not None else []
        segs = sorted(n for n in self.last_segments if os.path.exists(os.path.join(SHM_DIR, n)))
        return pids, segs

    def run(self, num_steps: int, inputs: Mapping[str, np.ndarray] | None = None) -> RunResult:
        """Simulate ``num_steps`` steps; outputs are (T, *shape) arrays keyed as the network names them."""
        require_lava()
        if int(num_steps) != num_steps or num_steps < 1:
            raise SimulationError(f"num_steps={num_steps}; expected a positive integer.")
        inputs = {str(k): np.asarray(v) for k, v in (inputs or {}).items()}
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_main, name="spikegpt-lava-run",
                            args=(send, self._build, inputs, int(num_steps), self.select_tag))
        t0 = time.perf_counter()
        child.start()
        send.close()
        self.last_pgid, self.last_segments = child.pid, set()
        msg = None
        try:
            msg = self._wait(child, recv, int(num_steps))
        finally:
            self._cleanup(child, recv, clean=msg is not None and msg[0] == "ok")
        if msg[0] == "error":
            _, stage, summary, details, original = msg
            if original is not None and stage == "build":
                raise original
            raise SimulationError(self._error_text(stage, summary, details))
        _, outputs, timings = msg
        return RunResult(outputs=outputs, num_steps=int(num_steps), backend=self.name,
                         build_s=timings["build_s"], compile_s=timings["compile_s"],
                         run_s=timings["run_s"], readout_s=timings["readout_s"],
                         total_s=time.perf_counter() - t0,
                         info={"select_tag": self.select_tag, "stop_s": timings["stop_s"]})

    def _error_text(self, stage: str, summary: str, details: list[str]) -> str:
        # the last line of a model traceback is the real error, e.g. "RuntimeError: boom"
        lines = [d.strip().splitlines()[-1] for d in details if d.strip()]
        text = (f"Lava simulation ({self.select_tag}) failed during {stage}: "
                f"{'; '.join(lines) if lines else summary}")
        if details:
            text += "\n--- traceback from the simulator ---\n" + "\n".join(details)
        return text

    def _wait(self, child: Any, recv: Any, num_steps: int) -> tuple:
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SimulationError(
                    f"Lava run ({self.select_tag}, {num_steps} steps) did not finish within "
                    f"{self.timeout_s:g} s; it was stopped. A silent hang is typical of a float "
                    "OutPort feeding a fixed_pt process (send int32, precision=24) or of torch "
                    "inside a host ProcessModel; otherwise raise timeout_s.")
            if recv.poll(min(0.1, remaining)):
                try:
                    msg = recv.recv()
                except EOFError:
                    msg = None
                if msg is not None and msg[0] == "segments":
                    self.last_segments |= set(msg[1])
                    continue
                if msg is not None:
                    return msg
            if not child.is_alive() and not recv.poll(0):
                raise SimulationError(
                    f"the Lava run process exited with code {child.exitcode} without a result "
                    "(killed, or out of memory?).")

    def _cleanup(self, child: Any, recv: Any, clean: bool) -> None:
        """Wait for a clean exit or end the process group; unlink the run's segments. SIGINT is
        held back meanwhile, so a second Ctrl-C cannot leave half a cleanup."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pgid = child.pid
            if clean:
                # After a clean stop() only the run's multiprocessing resource tracker may
                # linger for a moment (it exits when its pipe closes); give it that moment.
                child.join(self.stop_timeout_s)
                deadline = time.monotonic() + 2.0
                while _group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            pids = _group_members(pgid)
            if pids or child.is_alive():
                if clean:
                    log.info("Lava run left %d processes after stop(); ending them", len(pids))
                self.last_segments |= _mapped_segments(pids)
                self._kill_group(pgid, child)
            child.join(self.stop_timeout_s)
            _unlink_segments(self.last_segments)
            recv.close()
        finally:
            if main:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _kill_group(self, pgid: int, child: Any | None) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if child is not None and child.is_alive():  # before its setsid() it is in our group
            os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + self.stop_timeout_s
        while _group_members(pgid) and time.monotonic() < deadline:
            if child is not None:
                child.join(0.05)
            else:
                time.sleep(0.05)
        left = _group_members(pgid)
        if left:
            log.error("Lava processes %s survived SIGKILL", left)
