"""Unit tests for distri.metrics (latency statistics, timers, image-fidelity metrics)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from distri.generate import load_png, save_png, to_uint8
from distri.metrics.latency import (
    StepTimer,
    Timer,
    benchmark,
    describe_method,
    latency_stats,
    speedup,
    time_call,
    trim_count,
)

# ------------------------------------------------------------------------------------------------ latency


def test_latency_stats_hand_computed_small_sample() -> None:
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 10.0], trim=0.2)
    assert s["n"] == 5
    assert s["mean_s"] == pytest.approx(4.0)
    # sample variance: (9 + 4 + 1 + 0 + 36) / 4 = 12.5
    assert s["std_s"] == pytest.approx(math.sqrt(12.5))
    assert s["median_s"] == 3.0
    assert (s["min_s"], s["max_s"]) == (1.0, 10.0)
    # floor(0.2 * 5 / 2) = 0 samples dropped per side: trimmed mean == mean
    assert s["trimmed_mean_s"] == pytest.approx(4.0)
    assert s["trim_fraction"] == 0.2
    assert s["n_trimmed_each_side"] == 0


def test_latency_stats_trims_one_per_side_at_n10() -> None:
    xs = [5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 100.0]
    s = latency_stats(xs, trim=0.2)
    assert s["n_trimmed_each_side"] == 1  # floor(0.2 * 10 / 2)
    assert s["trimmed_mean_s"] == pytest.approx(sum(range(2, 10)) / 8)  # drops 1.0 and 100.0
    assert s["mean_s"] == pytest.approx(145.0 / 10)
    assert s["median_s"] == pytest.approx(5.5)


def test_latency_stats_single_sample_and_errors() -> None:
    s = latency_stats([0.25])
    assert s["std_s"] == 0.0
    assert s["mean_s"] == s["median_s"] == s["trimmed_mean_s"] == 0.25
    with pytest.raises(ValueError):
        latency_stats([])
    with pytest.raises(ValueError):
        latency_stats([1.0], trim=1.0)
    with pytest.raises(ValueError):
        latency_stats([1.0, float("nan")])


def test_timer_and_time_call_cpu() -> None:
    with Timer("cpu") as t:
        time.sleep(0.02)
    assert t.elapsed_s is not None and 0.015 < t.elapsed_s < 1.0
    result, dt = time_call(lambda: 42, torch.device("cpu"))
    assert result == 42 and 0.0 <= dt < 0.5


def test_benchmark_counts_calls_and_describes_method() -> None:
    calls = []
    result, stats = benchmark(lambda: calls.append(1) or len(calls), "cpu", warmup=2, runs=3, backend="gloo")
    assert len(calls) == 5 and result == 5
    assert stats["n"] == 3 and len(stats["samples_s"]) == 3
    assert stats["method"] == (
        "whole pipeline call, 2 warm-up + 3 timed runs, device synchronised before and after each run only, "
        "trimmed mean of 3 (trim 0.2 drops none), cpu/gloo"
    )


def test_describe_method_says_what_the_statistic_drops() -> None:
    assert describe_method(3, 10, trim=0.2, device="cpu", backend="gloo") == (
        "whole pipeline call, 3 warm-up + 10 timed runs, device synchronised before and after each run only, "
        "trimmed mean of 10 (drops the 1 fastest and the 1 slowest), cpu/gloo"
    )
    assert describe_method(1, 5, trim=0.4, device="cuda:1", backend="nccl").endswith(
        "trimmed mean of 5 (drops the 1 fastest and the 1 slowest), cuda/nccl"
    )
    assert "median of 3, cpu" in describe_method(0, 3, statistic="median_s")
    with pytest.raises(ValueError, match="unknown statistic"):
        describe_method(0, 3, statistic="p90_s")


def test_trim_count_matches_latency_stats_and_survives_float_rounding() -> None:
    # the paper: 10 runs minus the fastest and the slowest; the default: 5 runs, trim 0.4, the same
    assert trim_count(0.2, 10) == 1 and trim_count(0.4, 5) == 1 and trim_count(0.2, 20) == 2
    assert trim_count(0.2, 3) == 0 and trim_count(0.99, 2) == 0  # at least one sample is kept
    for trim, n in [(0.4, 5), (0.6, 5), (0.3, 10), (0.1, 20), (0.7, 7)]:
        want = math.floor(round(trim * n / 2, 9))
        assert latency_stats(list(range(1, n + 1)), trim=trim)["n_trimmed_each_side"] == want


def test_speedup_is_robust_to_one_stalled_run() -> None:
    """One stall among 5 runs leaves the default speedup (trimmed mean, trim 0.4) where it was; the mean
    would not (the failure a new user met: a mean over 3 runs read 0.35x where the medians were equal)."""
    base = latency_stats([1.0, 1.01, 0.99, 1.02, 0.98], trim=0.4)
    par = latency_stats([0.5, 0.51, 0.49, 0.52, 0.48], trim=0.4)
    stalled = latency_stats([0.5, 0.51, 0.49, 5.0, 0.48], trim=0.4)  # one run stalled 10x
    assert speedup(base, par, "trimmed_mean_s") == pytest.approx(2.0)
    assert speedup(base, stalled, "trimmed_mean_s") == pytest.approx(1.0 / ((0.5 + 0.51 + 0.49) / 3))
    assert speedup(base, stalled, "trimmed_mean_s") > 1.9
    assert speedup(base, stalled, "mean_s") < 0.75  # what the plain mean makes of the same runs
    with pytest.raises(KeyError, match="p90_s"):
        speedup(base, par, "p90_s")


def test_step_timer_as_diffusers_callback() -> None:
    st = StepTimer("cpu")
    time.sleep(0.01)
    st.reset()  # the first step is measured from here, not from construction
    for i, dt in enumerate([0.02, 0.01, 0.03]):
        time.sleep(dt)
        kwargs = {"latents": torch.zeros(1)}
        assert st(None, i, torch.tensor(999 - i), kwargs) is kwargs
    assert st.step_indices == [0, 1, 2]
    assert len(st.step_times_s) == 3
    for got, want in zip(st.step_times_s, [0.02, 0.01, 0.03]):
        assert want * 0.9 < got < want + 0.5
    assert st.total_s == pytest.approx(sum(st.step_times_s))
    st.reset()
    assert st.step_times_s == []


def test_png_round_trip_is_what_metrics_compare(tmp_path) -> None:
    """The runner compares PNGs: what load_png reads back is exactly to_uint8 of the saved float image."""
    img = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(1))
    img[0, 0, 0], img[1, 0, 0] = -0.2, 1.3  # out of range: clamped
    path = save_png(img, tmp_path / "a" / "x.png")
    back = load_png(path)
    assert back.dtype == torch.uint8 and back.shape == (3, 6, 5)
    assert torch.equal(back, to_uint8(img))
    assert torch.equal(back, torch.round(img.clamp(0, 1) * 255).to(torch.uint8))
    assert torch.equal(load_png(save_png(back, tmp_path / "b.png")), back)  # uint8 saves unchanged
