"""Failures end the job quickly, with the failing rank's traceback, and leave no processes behind."""

from __future__ import annotations

import time

import pytest

from distri.launch import WorkerError
from tests.conftest import make_pool


def test_worker_that_raises_ends_the_pool_with_its_traceback():
    pool = make_pool(2)
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as ei:
        pool.run("tests.parallel.tasks:fail_on_rank", rank=1, message="planned failure 42")
    assert time.monotonic() - t0 < 10
    assert ei.value.rank == 1
    assert "planned failure 42" in str(ei.value) and "Traceback" in str(ei.value)
    time.sleep(0.5)
    assert not any(p.is_alive() for p in pool._procs), "no orphan workers"
    with pytest.raises(WorkerError, match="closed"):
        pool.run("tests.parallel.tasks:fail_on_rank")


def test_indivisible_latent_is_refused_in_the_strategy():
    pool = make_pool(2)
    try:
        with pytest.raises(WorkerError, match=r"patch degrees that work here: \[1, 5\]"):
            pool.run(
                "tests.parallel.tasks:strategy_vs_single",
                kind="sdxl",
                strategy="displaced_patch",
                params={"mode": "full_sync"},
                steps=1,
                size=20,
            )
    finally:
        pool.close()
