"""Independent array jobs on the machine's cores, in threads of this process.

numpy's loops and BLAS release the GIL, so row blocks or whole matrices handled by separate
threads run in parallel with no copies and no extra processes (nothing can outlive the command).
Used where a step is many such jobs: folding, quantizing and rebuilding the chip matrices.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from threadpoolctl import ThreadpoolController

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# below this many array values in all, jobs run in the calling thread: starting a pool costs
# about as much as the work (0.2-0.5 ms)
INLINE_BELOW_VALUES = 1 << 18


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
               values: int | None = None) -> list[R]:
    """[fn(x) for x in items], run on up to ``workers`` threads (default: the usable cores),
    results in the items' order; the first exception is raised after the running jobs end.
    ``values``: how many array values the jobs handle together, if known (few: no threads)."""
    items = list(items)
    n = min(len(items), workers or usable_cores())
    if n <= 1 or (values is not None and values < INLINE_BELOW_VALUES):
        return [fn(x) for x in items]
    # one BLAS thread per job: the jobs already fill the cores, and BLAS threads on top of them
    # only wait for each other (most of those steps' system time, measured on 2 cores)
    with one_blas_thread(), ThreadPoolExecutor(max_workers=n, thread_name_prefix="spikegpt-deploy") as pool:
        return list(pool.map(fn, items))


def one_blas_thread() -> Any:
    """A context in which BLAS (numpy's) runs on one thread."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The process's thread pools, found once (finding them reads /proc/self/maps: 1-3 ms)."""
    return ThreadpoolController()


def row_blocks(rows: int, parts: int | None = None) -> list[tuple[int, int]]:
    """``rows`` split into up to ``parts`` (default: the usable cores) contiguous [start, stop)
    blocks whose sizes differ by at most one."""
    parts = max(1, min(parts or usable_cores(), rows))
    edges = [rows * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
