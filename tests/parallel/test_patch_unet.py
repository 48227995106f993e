"""Patch strategies on small stock UNets (float64), at 2 and 4 gloo ranks, against the single device.

Bounds (measured on these models, toy loop ``x <- x - 0.1 eps``, latent 32x32 at 2 ranks, 64x64 at 4), checked
on every rank:
* ``full_sync`` equals the single device to 1e-10 (float64; observed ~1e-15);
* the stale modes stay within bounds stated from measurements (``STALE_BOUNDS``); ``corrected_async_gn`` below
  ``no_sync``'s error and below a third of ``naive_patch``'s;
* ``naive_patch`` (rows, columns, alternate) errs most within one latent row/column of its patch borders.
(tests/parallel/test_displaced_formulas.py checks every layer against the paper's formulas exactly.)
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_pool
from tests.parallel.tasks import ledger_shapes

DISPLACED = "displaced_patch"
NAIVE = "naive_patch"


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def pool(request):
    p = make_pool(request.param)
    yield p
    p.close()


# The 4-rank cases of the longer checks (staleness bounds 42 s, a GroupNorm mode 16 s, a naive split scheme 8 s,
# a warm-up covering all steps 5-11 s on 2 cores of the VM's AMD host) run with the slow tests (.ci/run); their
# 2-rank cases in the quick suite, beside the 4-rank cases of the exactness and ledger checks.
SLOW_AT_4 = pytest.mark.parametrize(
    "pool", [2, pytest.param(4, marks=pytest.mark.slow)], ids=["2ranks", "4ranks"], indirect=True
)


def _run(pool, **kw):
    return pool.run("tests.parallel.tasks:strategy_vs_single", **kw)


def _err(r):
    return (r["out"] - r["ref"]).abs().max().item()


@pytest.mark.parametrize("kind", ["sdxl", "sd15"])
def test_full_sync_exact(pool, kind):
    for r in _run(pool, kind=kind, strategy=DISPLACED, params={"mode": "full_sync"}, steps=3, size=32):
        assert _err(r) < 1e-10
        assert r["restored"], "remove() must restore the stock UNet"


def test_full_sync_with_cfg_split_exact(pool):
    for r in _run(
        pool, kind="sdxl", strategy=DISPLACED, params={"mode": "full_sync"}, cfg_split=True, steps=3, size=32
    ):
        assert _err(r) < 1e-10


@SLOW_AT_4
@pytest.mark.parametrize("kind", ["sdxl", "sd15"])
def test_warmup_covering_all_steps_equals_full_sync(pool, kind):
    steps = 4
    for r in _run(pool, kind=kind, strategy=DISPLACED, params={"warmup_steps": steps}, steps=steps, size=32):
        assert _err(r) < 1e-10


def _size(pool) -> int:
    return 16 * len(pool._procs)  # latent bands of 16 rows (8 and 4 at the deeper levels)


# max abs error vs the single device, toy loop of 5 steps, warm-up 1 + 1 (measured at 2 / 4 ranks):
# corrected_async_gn 0.023 / 0.029, stale_gn 0.022 / 0.030, sync_gn 0.021 / 0.028, separate_gn 0.077 / 0.068,
# no_sync 0.066 / 0.067; naive_patch (row) 0.43 / 0.60
STALE_BOUNDS = {"corrected_async_gn": 0.04, "stale_gn": 0.04, "sync_gn": 0.04, "separate_gn": 0.1}


@SLOW_AT_4
def test_stale_modes_are_bounded_and_ordered(pool):
    kw = dict(kind="sdxl", steps=5, size=_size(pool))
    res = _run(pool, strategy=DISPLACED, params={"warmup_steps": 1}, **kw)
    no_sync = _run(pool, strategy=DISPLACED, params={"mode": "no_sync", "warmup_steps": 1}, **kw)
    naive = _run(pool, strategy=NAIVE, params={"split_scheme": "row"}, **kw)
    for rank, (r, ns, nv) in enumerate(zip(res, no_sync, naive)):
        assert r["repeat_equal"], f"rank {rank}: a second pipeline call must repeat the first exactly"
        corrected = _err(r)
        assert 0 < corrected < STALE_BOUNDS["corrected_async_gn"], f"rank {rank}: {corrected:.3g}"
        assert corrected < _err(ns), f"rank {rank}: corrected must beat no_sync"
        assert corrected < _err(nv) / 3, f"rank {rank}: corrected must be far closer than naive patch"


@SLOW_AT_4
@pytest.mark.parametrize("mode", ["stale_gn", "sync_gn", "separate_gn"])
def test_other_gn_modes_stay_within_their_measured_bounds(pool, mode):
    res = _run(pool, kind="sdxl", strategy=DISPLACED, params={"mode": mode, "warmup_steps": 1}, steps=5,
               size=_size(pool))  # fmt: skip
    for rank, r in enumerate(res):
        assert torch.isfinite(r["out"]).all()
        assert 0 < _err(r) < STALE_BOUNDS[mode], f"rank {rank}: {_err(r):.3g}"


def _border_ratio(r, n: int, scheme: str) -> float:
    """Mean abs error within one latent row/column of a patch border over the mean elsewhere."""
    diff = (r["out"] - r["ref"]).abs().mean(dim=(0, 1))  # [H, W]
    H, W = diff.shape
    border = torch.zeros(H, W, dtype=torch.bool)
    for b in range(1, n):
        if scheme in ("row", "alternate"):
            border[b * H // n - 1 : b * H // n + 1, :] = True
        if scheme in ("col", "alternate"):
            border[:, b * W // n - 1 : b * W // n + 1] = True
    return (diff[border].mean() / diff[~border].mean()).item()


@SLOW_AT_4
@pytest.mark.parametrize("scheme", ["row", "col", "alternate"])
def test_naive_patch_differs_most_at_borders(pool, scheme):
    """Measured border/interior error ratio (3 steps): row 2.9 / 2.4, col 2.9 / 2.5, alternate 2.1 / 1.8 at
    2 / 4 ranks; a split without seams would give ~1."""
    n = len(pool._procs)
    res = _run(pool, kind="sdxl", strategy=NAIVE, params={"split_scheme": scheme}, steps=3, size=_size(pool))
    for rank, r in enumerate(res):
        assert _err(r) > 0.1, f"rank {rank}: naive patch should differ from the single device"
        ratio = _border_ratio(r, n, scheme)
        assert ratio > 1.5, f"rank {rank}: border/interior error ratio {ratio:.2f}"


def test_ledger_matches_independent_count(pool):
    """full_sync bytes per step per kind == a count from activation shapes of the stock UNet."""
    n, size, esize = len(pool._procs), 32, 8  # float64
    r = _run(pool, kind="sd15", strategy=DISPLACED, params={"mode": "full_sync"}, steps=2, size=size)[0]
    shapes = ledger_shapes("sd15", size)
    halo = sum(B * C * 2 * p * W for (B, C, H, W), p in shapes["convs"])
    kv = sum(B * (L // n) * 2 * inner for B, L, inner in shapes["attns"])
    gn = sum(2 * B * G for B, G in shapes["gns"])
    out = 2 * 4 * (size // n) * size
    expect = {
        k: v * (n - 1) * esize
        for k, v in {"conv_halo": halo, "attn_kv": kv, "gn_stats": gn, "output_gather": out}.items()
    }
    for step in (0, 1):
        got = {k: v["bytes"] for k, v in r["ledger"][step].items()}
        assert got == pytest.approx(expect, rel=1e-12)


def test_async_steps_overlap_through_buckets(pool):
    """After the warm-up the exchanges are bucketed all-gathers: few calls, same bytes as synchronous steps."""
    r = _run(
        pool, kind="sdxl", strategy=DISPLACED, params={"warmup_steps": 1, "bucket_mb": 0.01}, steps=4, size=32
    )[0]
    sync, async_ = r["ledger"][1], r["ledger"][3]
    for k in ("conv_halo", "attn_kv", "gn_stats"):
        assert async_[k]["bytes"] == pytest.approx(sync[k]["bytes"])
    n_sync = sum(v["calls"] for k, v in sync.items() if k != "output_gather")
    n_async = sum(v["calls"] for k, v in async_.items() if k != "output_gather")
    assert n_async < n_sync
