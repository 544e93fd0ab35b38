"""Run a Lava network in Lava's CPU simulator (``Loihi2SimCfg``) and always clean up after it.

Lava runs every ProcessModel in a forked OS process, talks through ``psm_*`` shared-memory
segments in /dev/shm, hides errors raised inside process models behind "1 Exception(s)
occurred", then hangs in ``stop()``; a killed or hung run orphans its children and leaks its
segments (docs/lava.md). So ``LavaRunner`` runs each simulation in a supervisor child process that
it forks into its own session and process group:

- the child builds the network (``build(inputs, num_steps) -> LavaNetwork``), compiles it,
  reports the shared-memory segments it mapped, runs, reads the outputs (streamed through
  ``lava.procs.sinks`` buffers, not Var.get), stops Lava cleanly and sends the results back;
- on an error inside a process model the child sends the model's real traceback (from Lava's
  runtime log at INFO, or its actors) and exits without the hanging ``stop()``;
- the parent waits with a timeout; on error, timeout, Ctrl-C (KeyboardInterrupt), SIGTERM or
  SIGHUP (``signals.Terminated``) it kills the whole process group, waits until it is gone, and
  unlinks every ``psm_*`` segment that the run's processes mapped (only those: other runs on the
  machine keep theirs); without a handler of the caller's, the signal then ends the process as
  it would have (``signals.termination_raises``);
- a watchdog thread in the child polls its parent: if the parent dies (even by SIGKILL, which
  no handler sees), the child kills its own group, unlinks its segments and exits. After a model
  error the child ends its group itself before reporting, so nothing depends on the parent
  living through its cleanup.

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
from typing import Any, Callable, Mapping, NoReturn

import numpy as np

from spikegpt_deploy.simulation.backend import RunResult
from spikegpt_deploy.processes import (SHM_DIR, end_own_group, group_members,
                                       mapped_segments, unlink_segments)
from spikegpt_deploy.errors import DeployError, SimulationError
from spikegpt_deploy.signals import deferred_signals, termination_raises

log = logging.getLogger(__name__)

SELECT_TAGS = ("floating_pt", "fixed_pt")
PARENT_POLL_S = 0.1  # how often the run's child checks that its parent still lives
_RUNTIME_LOGGER = "lava.magma.runtime.runtime"  # logs model tracebacks at INFO on errors


@dataclass
class LavaNetwork:
    """What a build function returns.

    run_process: any process of the network (``run`` is called on it). outputs: name -> a
    ``lava.procs.sinks`` StreamSink / VarProbe (streamed, (T, *shape)), a
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
    if callable(data):  # lava.procs.sinks StreamSink / VarProbe: (T, *shape) already
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


class _Exit:
    """The child's one way out: ``leave(code)``. A failed run, or one whose parent has died,
    first ends the child's own process group and unlinks its segments. A lock makes the
    watchdog and the main thread take that way once."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.lock = threading.Lock()

    def orphaned(self) -> bool:
        return os.getppid() != self.parent

    def leave(self, code: int) -> NoReturn:
        with self.lock:
            if code != 0 or self.orphaned():
                end_own_group()
            os._exit(code)

    def watch_parent(self) -> None:
        """Watchdog thread: the parent's death (SIGKILL included) ends the run."""
        while not self.orphaned():
            time.sleep(PARENT_POLL_S)
        self.leave(1)


def _child_main(conn: Any, build: BuildFn, inputs: Mapping[str, np.ndarray], num_steps: int,
                select_tag: str, parent: int) -> None:
    """Supervisor: build, compile, run, read, stop; report to the parent; never return."""
    os.setsid()  # own session and process group: the parent can end all of it at once
    out = _Exit(parent)
    threading.Thread(target=out.watch_parent, name="parent-watchdog", daemon=True).start()
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
        conn.send(("segments", mapped_segments([os.getpid()])))
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
            end_own_group()  # Lava's stop() hangs after a model error: end the group here
            conn.send(("error", stage, summary, details, None))
            conn.close()
            out.leave(1)
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
        end_own_group()  # what the failed stage started, before the parent hears of it
        try:
            conn.send(("error", stage, f"{type(exc).__name__}: {exc}",
                       [traceback.format_exc()], keep))
        except Exception:  # noqa: BLE001 - the parent sees the exit code instead
            pass
    try:
        conn.close()
    finally:
        out.leave(code)


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
            pids = group_members(self.last_pgid)
            if pids:
                self.last_segments |= mapped_segments(pids)
                self._kill_group(self.last_pgid, None)
            unlink_segments(self.last_segments)

    def leftovers(self) -> tuple[list[int], list[str]]:
        """Live processes and still-linked segments of the last run (both empty after any run)."""
        pids = group_members(self.last_pgid) if self.last_pgid is not None else []
        segs = sorted(n for n in self.last_segments if os.path.exists(os.path.join(SHM_DIR, n)))
        return pids, segs

    def run(self, num_steps: int, inputs: Mapping[str, np.ndarray] | None = None) -> RunResult:
        """Simulate ``num_steps`` steps; outputs are (T, *shape) arrays keyed as the network names them."""
        require_lava()
        if int(num_steps) != num_steps or num_steps < 1:
            raise SimulationError(f"num_steps={num_steps}; expected a positive integer.")
        inputs = {str(k): np.asarray(v) for k, v in (inputs or {}).items()}
        with termination_raises():  # SIGTERM / SIGHUP clean up as Ctrl-C does
            msg, t0 = self._run_child(int(num_steps), inputs)
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

    def _run_child(self, num_steps: int, inputs: Mapping[str, np.ndarray]) -> tuple[tuple, float]:
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_main, name="spikegpt-lava-run",
                            args=(send, self._build, inputs, num_steps, self.select_tag,
                                  os.getpid()))
        t0 = time.perf_counter()
        msg = None
        try:
            child.start()
            send.close()
            self.last_pgid, self.last_segments = child.pid, set()
            msg = self._wait(child, recv, num_steps)
        finally:
            if child.pid is not None:
                self._cleanup(child, recv, clean=msg is not None and msg[0] == "ok")
        return msg, t0

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
        """Wait for a clean exit or end the process group; unlink the run's segments. SIGINT,
        SIGTERM and SIGHUP are held back meanwhile, so a second signal cannot leave half a
        cleanup."""
        with deferred_signals():
            pgid = child.pid
            if clean:
                # After a clean stop() only the run's multiprocessing resource tracker may
                # linger for a moment (it exits when its pipe closes); give it that moment.
                child.join(self.stop_timeout_s)
                deadline = time.monotonic() + 2.0
                while group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            pids = group_members(pgid)
            if pids or child.is_alive():
                if clean:
                    log.info("Lava run left %d processes after stop(); ending them", len(pids))
                self.last_segments |= mapped_segments(pids)
                self._kill_group(pgid, child)
            child.join(self.stop_timeout_s)
            unlink_segments(self.last_segments)
            recv.close()

    def _kill_group(self, pgid: int, child: Any | None) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if child is not None and child.is_alive():  # before its setsid() it is in our group
            os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + self.stop_timeout_s
        while group_members(pgid) and time.monotonic() < deadline:
            if child is not None:
                child.join(0.05)
            else:
                time.sleep(0.05)
        left = group_members(pgid)
        if left:
            log.error("Lava processes %s survived SIGKILL", left)
