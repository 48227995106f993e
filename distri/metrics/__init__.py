"""Latency and image-fidelity metrics for parallel diffusion sampling runs."""

from distri.metrics.latency import (
    StepTimer,
    Timer,
    benchmark,
    describe_method,
    latency_stats,
    synchronize,
    time_call,
)
from distri.metrics.quality import (
    INF_STR,
    compare_to_reference,
    max_abs_err,
    mean_abs_err,
    mean_psnr,
    psnr,
    psnr_values,
)

__all__ = [
    "INF_STR",
    "StepTimer",
    "Timer",
    "benchmark",
    "compare_to_reference",
    "describe_method",
    "latency_stats",
    "max_abs_err",
    "mean_abs_err",
    "mean_psnr",
    "psnr",
    "psnr_values",
    "synchronize",
    "time_call",
]
