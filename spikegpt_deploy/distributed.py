"""Profiles and evaluations split across processes with Ray (the optional extra ``[distributed]``).

The driver cuts the text's windows into consecutive shards, runs one Ray task per shard (each
opens the model from a path every worker can read, once per worker process) and combines the
integer counts the tasks return in shard order, so the result equals the single-process run.
``ray_cluster`` starts a local Ray (``workers``) or joins an existing one (``address``) and
always shuts it down, on errors and on SIGINT / SIGTERM too. A shard whose task fails is run
once more; a second failure stops the command with an error that names the shard.

Ray is imported only here, inside these functions: ``import spikegpt_deploy`` never needs it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .errors import DeployError
from .optional import install_line, require
from .processes import alive, descendants
from .signals import Terminated, deferred_signals, termination_raises

log = logging.getLogger(__name__)

INSTALL_HINT = install_line("distributed")
# Test hook: "SHARD:TIMES[,...]" makes the worker running that shard exit abruptly on its first
# TIMES attempts (a crashed worker process, as Ray sees it).
FAULT_ENV = "SPIKEGPT_DEPLOY_CRASH_SHARDS"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2   # the tasks exchange counts, not tensors


class DistributedError(DeployError):
    """Ray is missing, could not start or connect, or a shard failed twice."""


@dataclass(frozen=True)
class ModelSource:
    """How a worker opens the model: a path every worker can read, with the load options."""

    path: str
    tokenizer: str | None = None
    overrides: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def open(self) -> Any:
        """The LoadedModel, loaded once per process."""
        if self not in _OPENED:
            from .model_files import open_model

            _OPENED.clear()   # one model per worker process at a time
            _OPENED[self] = open_model(self.path, self.tokenizer, **dict(self.overrides))
        return _OPENED[self]


_OPENED: dict[ModelSource, Any] = {}


@dataclass(frozen=True)
class Cluster:
    """Where shards run: ``workers`` local Ray processes, or the Ray cluster at ``address``."""

    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise DistributedError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.workers is not None and self.address is not None:
            raise DistributedError("pass --workers (a local Ray) or --address (an existing "
                                   "cluster), not both")


def import_ray() -> Any:
    # Ray's core worker installs absl's failure-signal handler for SIGTERM, which logs a stack
    # and re-raises; racing with this command's own SIGTERM clean-up it can end the process with
    # SIGABRT instead of the exit code 143. Read once when Ray is imported, so set it first.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    return require("ray", "distributed", "--workers and --address run on Ray", DistributedError)


@contextmanager
def ray_cluster(cluster: Cluster) -> Iterator[int]:
    """Start (or join) Ray for the block; yields the number of CPU slots for shards.

    SIGTERM and SIGHUP clean up as Ctrl-C does (``signals.termination_raises``; ``ray.init``
    installs a handler of its own, which is replaced by the one in force before it), and a
    second signal waits until Ray is shut down (``signals.deferred_signals``)."""
    ray = import_ray()
    if ray.is_initialized():
        raise DistributedError("Ray is already initialised in this process; run the command in "
                               "a fresh process")
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.WARNING}
    before = descendants(os.getpid())
    with termination_raises():
        in_main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if in_main else None
        try:
            try:
                if cluster.address is not None:
                    ray.init(address=cluster.address, **options)
                else:
                    ray.init(num_cpus=cluster.workers or 1,
                             object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
            except SystemExit as exc:  # SIGTERM while Ray's own handler was in force
                if exc.code == signal.SIGTERM:
                    raise Terminated(signal.SIGTERM) from None
                raise
            except Exception as exc:   # noqa: BLE001 - Ray raises many types: "no cluster"
                where = (f"the Ray cluster at {cluster.address}" if cluster.address
                         else "a local Ray")
                raise DistributedError(f"could not start {where}: {type(exc).__name__}: "
                                       f"{exc}") from None
            finally:
                if in_main and handler is not None:
                    signal.signal(signal.SIGTERM, handler)
            slots = int(ray.cluster_resources().get("CPU", 1)) if cluster.address else (
                cluster.workers or 1)
            log.info("Ray: %d CPU slot(s) %s", slots,
                     f"at {cluster.address}" if cluster.address else "on this machine")
            yield max(1, slots)
        finally:
            with deferred_signals():
                _shutdown(ray, before, local=cluster.address is None)


def _shutdown(ray: Any, before: dict[int, str], local: bool) -> None:
    """ray.shutdown(); for a local Ray, also end the processes it started that outlive it (its
    dashboard and runtime-env agents survive shutdown and ignore SIGTERM)."""
    started = {p: t for p, t in descendants(os.getpid()).items() if p not in before}
    ray.shutdown()
    if not local:
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p, t) for p, t in started.items()):
        time.sleep(0.1)
    for pid, start in started.items():
        if alive(pid, start):
            log.info("ending Ray process %d left after shutdown", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def split_shards(n_items: int, n_shards: int, align: int = 1) -> list[range]:
    """Consecutive, nearly equal ranges of ``range(n_items)`` whose starts are multiples of
    ``align`` (so a shard's batches are the batches of the single-process run)."""
    blocks = -(-n_items // align)
    n = max(1, min(n_shards, blocks))
    edges = [round(i * blocks / n) * align for i in range(n + 1)]
    return [range(a, min(b, n_items)) for a, b in zip(edges, edges[1:]) if a < min(b, n_items)]


def _crash_plan() -> dict[int, int]:
    plan: dict[int, int] = {}
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        shard, _, times = item.partition(":")
        plan[int(shard)] = int(times or 1)
    return plan


def _run_task(fn: Callable[..., Any], args: tuple, crash: bool) -> Any:
    if crash:
        os._exit(17)
    import torch

    torch.set_num_threads(1)   # one CPU slot per task
    return fn(*args)


def run_shards(fn: Callable[..., Any], shard_args: Sequence[tuple],
               describe: Callable[[int], str], retries: int = 1) -> list[Any]:
    """``fn(*args)`` for every shard as a Ray task (inside ``ray_cluster``); results in shard
    order. A failed shard is run again up to ``retries`` times, then the command fails."""
    ray = import_ray()
    task = ray.remote(num_cpus=1, max_retries=0)(_run_task)
    plan = _crash_plan()
    pending: dict[Any, tuple[int, int]] = {}

    def submit(i: int, attempt: int) -> None:
        ref = task.remote(fn, tuple(shard_args[i]), plan.get(i, 0) > attempt)
        pending[ref] = (i, attempt)

    for i in range(len(shard_args)):
        submit(i, 0)
    results: list[Any] = [None] * len(shard_args)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        if not ready:          # wake up now and then, so a signal is handled promptly
            continue
        ref = ready[0]
        i, attempt = pending.pop(ref)
        try:
            results[i] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(
                cause).__name__
            if attempt < retries:
                log.warning("%s failed (%s); running it again", describe(i), reason)
                submit(i, attempt + 1)
                continue
            for other in pending:
                ray.cancel(other, force=True)
            if isinstance(cause, DeployError):
                raise type(cause)(f"{describe(i)}: {cause}") from None
            raise DistributedError(f"{describe(i)} failed {attempt + 1} times "
                                   f"({type(cause).__name__}: {reason}); nothing was written")
    return results
