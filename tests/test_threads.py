"""threads: thread_map keeps the items' order and raises a job's error; row_blocks covers every
row once; fold_weight is the same matrix on one thread and on several."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikegpt_deploy import threads
from spikegpt_deploy.folded import fold_weight


def test_thread_map_keeps_order_and_raises() -> None:
    assert threads.thread_map(lambda x: x * x, range(50), workers=4) == [x * x for x in range(50)]
    assert threads.thread_map(lambda x: x, [], workers=4) == []

    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("job 7")
        return x

    with pytest.raises(ValueError, match="job 7"):
        threads.thread_map(boom, range(20), workers=3)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(0, 5000), parts=st.integers(1, 9))
def test_row_blocks_cover_every_row_once(rows: int, parts: int) -> None:
    blocks = threads.row_blocks(rows, parts)
    assert len(blocks) <= parts
    covered = [i for a, b in blocks for i in range(a, b)]
    assert covered == list(range(rows))
    sizes = [b - a for a, b in blocks]
    assert all(s > 0 for s in sizes) and (not sizes or max(sizes) - min(sizes) <= 1)


def test_fold_weight_is_the_same_on_any_number_of_threads(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((301, 97)).astype(np.float32)
    cols = rng.standard_normal((2, 97))
    expected = (w.astype(np.float64)[None] * cols[:, None, :]).astype(np.float32).reshape(-1, 97)
    for n in (1, 2, 5):
        monkeypatch.setattr(threads, "usable_cores", lambda n=n: n)
        assert np.array_equal(fold_weight(w, cols), expected)


def test_small_jobs_run_in_the_calling_thread() -> None:
    import threading
    main = threading.get_ident()
    assert set(threads.thread_map(lambda _: threading.get_ident(), range(4), workers=2,
                                  values=1000)) == {main}
    big = threads.thread_map(lambda _: threading.get_ident(), range(4), workers=2,
                             values=threads.INLINE_BELOW_VALUES)
    assert main not in big
