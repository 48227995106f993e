"""Unit tests for distri.metrics (latency statistics, timers, image-fidelity metrics)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from distri.metrics import (
    StepTimer,
    Timer,
    benchmark,
    compare_to_reference,
    describe_method,
    latency_stats,
    max_abs_err,
    mean_abs_err,
    mean_psnr,
    psnr,
    psnr_values,
    time_call,
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
        "whole pipeline call, 2 warm-up + 3 timed runs, device synchronised, trimmed mean drops 20%, cpu/gloo"
    )


def test_describe_method() -> None:
    assert (
        describe_method(2, 5, trim=0.2, device="cpu", backend="gloo")
        == "whole pipeline call, 2 warm-up + 5 timed runs, device synchronised, trimmed mean drops 20%, cpu/gloo"
    )
    assert describe_method(0, 1, trim=0.0, device="cuda:1", backend="nccl").endswith("drops 0%, cuda/nccl")


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


# ------------------------------------------------------------------------------------------------ quality


def test_psnr_matches_hand_formula() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 8, 8, generator=g)
    b = (a + 0.05 * torch.randn(3, 8, 8, generator=g)).clamp(0, 1)
    mse = ((a.double() - b.double()) ** 2).mean().item()
    assert psnr(a, b) == pytest.approx(10 * math.log10(1.0 / mse))
    assert psnr(a, b, data_range=2.0) == pytest.approx(10 * math.log10(4.0 / mse))
    # a constant offset of 0.1 everywhere: MSE = 0.01 -> 20 dB
    c = torch.full((3, 4, 4), 0.5)
    assert psnr(c, c + 0.1) == pytest.approx(20.0)


def test_psnr_identical_and_batched() -> None:
    a = torch.rand(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1
    vals = psnr(a, b)
    assert isinstance(vals, list) and vals[0] == float("inf")
    assert vals[1] == pytest.approx(20.0, abs=1e-4)
    assert psnr(a[0], a[0]) == float("inf")
    with pytest.raises(ValueError):
        psnr(torch.rand(3, 4, 4), torch.rand(3, 4, 5))


def test_psnr_accepts_pil_uint8_and_numpy() -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    arr2 = arr.copy()
    arr2[0, 0, 0] ^= 1
    t = torch.from_numpy(arr).permute(2, 0, 1)
    t2 = torch.from_numpy(arr2).permute(2, 0, 1)
    want = psnr(t.double() / 255, t2.double() / 255)
    assert math.isfinite(want)
    assert psnr(Image.fromarray(arr), Image.fromarray(arr2)) == pytest.approx(want)
    assert psnr(t, t2) == pytest.approx(want)  # uint8 tensors are scaled by 1/255
    assert psnr(arr.astype(np.float32) / 255, arr2.astype(np.float32) / 255) == pytest.approx(want, rel=1e-5)


def test_mean_psnr_infinity_handling() -> None:
    base = torch.full((3, 4, 4), 0.5)
    imgs = [base, base + 0.1, base + 0.01]
    refs = [base, base, base]
    assert psnr_values(imgs, refs)[0] == float("inf")
    # identical pair excluded, finite ones averaged: (20 + 40) / 2
    assert mean_psnr(imgs, refs) == pytest.approx(30.0)
    assert mean_psnr([base, base], [base, base]) == float("inf")
    with pytest.raises(ValueError):
        mean_psnr([base], [base, base])


def test_abs_errors() -> None:
    a = [torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)]
    b = [torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)]
    b[1][0, 0, 0] = 0.6
    assert max_abs_err(a, b) == pytest.approx(0.6)
    assert mean_abs_err(a, b) == pytest.approx((0.0 + 0.6 / 12) / 2)
    # a batch tensor is the same as a list of its images
    assert max_abs_err(torch.stack(a), torch.stack(b)) == pytest.approx(0.6)


def test_compare_to_reference_is_strict_json() -> None:
    base = torch.full((2, 3, 4, 4), 0.5)
    same = compare_to_reference(base, base.clone())
    assert same == {
        "psnr_vs_orig": "inf",
        "max_abs_err_vs_orig": 0.0,
        "mean_abs_err_vs_orig": 0.0,
        "n_images": 2,
        "n_identical": 2,
    }
    json.dumps(same, allow_nan=False)
    other = compare_to_reference(list(base), list(base + 0.1))
    assert other["psnr_vs_orig"] == pytest.approx(20.0, abs=1e-4)
    assert other["max_abs_err_vs_orig"] == pytest.approx(0.1, abs=1e-6)
    assert other["n_identical"] == 0
    json.dumps(other, allow_nan=False)
