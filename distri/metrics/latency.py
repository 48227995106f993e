"""Wall-clock latency measurement with explicit device synchronisation.

Everything here measures *host wall time* with :func:`time.perf_counter`, after synchronising the device on
both ends of the measured region, so asynchronous CUDA kernels launched inside the region are included and
kernels launched before it are not. On CUDA, :class:`Timer` can optionally time with CUDA events instead
(``use_cuda_events=True``); that measures the GPU timeline between the two events, which after the closing
synchronisation differs from wall time only by host-side overhead before the first kernel.

``torch`` is imported lazily (only when a device has to be synchronised), so :func:`latency_stats` and
:func:`describe_method` are usable without it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "STATISTICS",
    "StepTimer",
    "Timer",
    "benchmark",
    "describe_method",
    "latency_stats",
    "speedup",
    "synchronize",
    "time_call",
    "trim_count",
]

STATISTICS: dict[str, str] = {"trimmed_mean": "trimmed_mean_s", "median": "median_s", "mean": "mean_s"}
"""A run's headline statistic by name (``runner.statistic``) -> its key in :func:`latency_stats`."""


def _device_type(device: Any) -> str:
    """Return the device type (``"cuda"``, ``"cpu"``, ``"mps"``, ...) of a device spec, ``"cpu"`` for None."""
    if device is None:
        return "cpu"
    dev_type = getattr(device, "type", None)  # torch.device
    if isinstance(dev_type, str):
        return dev_type
    return str(device).split(":", 1)[0].strip().lower() or "cpu"


def synchronize(device: Any = None) -> None:
    """Block until all work queued on ``device`` has finished.

    ``device`` may be a ``torch.device``, a string such as ``"cuda:1"`` / ``"cpu"``, or None (CPU). On CUDA this
    calls ``torch.cuda.synchronize(device)``, on MPS ``torch.mps.synchronize()``; on the CPU it does nothing
    (CPU ops in PyTorch run synchronously on the calling thread).
    """
    dev_type = _device_type(device)
    if dev_type == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize(device)
    elif dev_type == "mps":
        import torch

        if hasattr(torch, "mps") and torch.backends.mps.is_available():
            torch.mps.synchronize()


def trim_count(trim: float, n: int) -> int:
    """Samples the trimmed mean drops at *each* end: ``floor(trim * n / 2)``, at least one sample kept.

    (A tolerance of 1e-9 keeps float rounding from dropping one fewer, e.g. ``trim=0.4`` of 5 drops 1 each.)
    """
    return min(math.floor(trim * n / 2 + 1e-9), (n - 1) // 2)


def latency_stats(samples_s: list[float], trim: float = 0.2) -> dict[str, float | int]:
    """Summary statistics of latency samples (seconds).

    Returns a dict with ``mean_s``, ``std_s`` (sample standard deviation, ``ddof=1``; 0.0 for a single
    sample), ``median_s``, ``min_s``, ``max_s``, ``trimmed_mean_s``, ``n``, ``trim_fraction`` (the ``trim``
    argument) and ``n_trimmed_each_side``.

    The trimmed mean sorts the samples and drops ``floor(trim * n / 2)`` of the fastest and the same number of
    the slowest before averaging, i.e. ``trim`` is the *total* fraction removed. With few samples nothing is
    dropped and it equals the mean (e.g. ``trim=0.2`` needs ``n >= 10`` to drop one sample per side).

    Raises:
        ValueError: if ``samples_s`` is empty, contains a non-finite value, or ``trim`` is not in ``[0, 1)``.
    """
    xs = [float(x) for x in samples_s]
    if not xs:
        raise ValueError("latency_stats needs at least one sample")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"latency samples must be finite, got {xs}")
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    n = len(xs)
    k = trim_count(trim, n)
    ordered = sorted(xs)
    kept = ordered[k : n - k] if k > 0 else ordered
    return {
        "mean_s": statistics.fmean(xs),
        "std_s": statistics.stdev(xs) if n > 1 else 0.0,
        "median_s": statistics.median(xs),
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "trimmed_mean_s": statistics.fmean(kept),
        "n": n,
        "trim_fraction": float(trim),
        "n_trimmed_each_side": k,
    }


class Timer:
    """Context manager timing a region, with the device synchronised before and after.

    Example::

        with Timer("cuda:0") as t:
            images = pipe(prompt).images
        print(t.elapsed_s)

    Args:
        device: device whose queued work must be finished at both ends (None or ``"cpu"``: no sync needed).
        use_cuda_events: on CUDA, time with ``torch.cuda.Event`` pairs instead of ``time.perf_counter``
            (ignored on other devices). The device is synchronised either way.
    """

    def __init__(self, device: Any = None, use_cuda_events: bool = False) -> None:
        self.device = device
        self.use_cuda_events = bool(use_cuda_events) and _device_type(device) == "cuda"
        self.elapsed_s: float | None = None
        self._t0 = 0.0
        self._events: tuple[Any, Any] | None = None

    def __enter__(self) -> Timer:
        synchronize(self.device)
        if self.use_cuda_events:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._events = (start, end)
            start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._events is not None:
            self._events[1].record()
        synchronize(self.device)
        t1 = time.perf_counter()
        if self._events is not None:
            self.elapsed_s = self._events[0].elapsed_time(self._events[1]) / 1000.0
            self._events = None
        else:
            self.elapsed_s = t1 - self._t0


def time_call(fn: Callable[[], T], device: Any = None, use_cuda_events: bool = False) -> tuple[T, float]:
    """Call ``fn()`` once and return ``(result, seconds)``, synchronising ``device`` before and after."""
    with Timer(device, use_cuda_events=use_cuda_events) as t:
        result = fn()
    assert t.elapsed_s is not None
    return result, t.elapsed_s


def _statistic_text(statistic: str, runs: int, trim: float) -> str:
    if statistic == "median_s":
        return f"median of {runs}"
    if statistic == "mean_s":
        return f"mean of {runs}"
    if statistic != "trimmed_mean_s":
        raise ValueError(f"unknown statistic {statistic!r}; valid: {', '.join(STATISTICS.values())}")
    k = trim_count(trim, runs)
    if k == 0:
        return f"trimmed mean of {runs} (trim {trim:g} drops none)"
    return f"trimmed mean of {runs} (drops the {k} fastest and the {k} slowest)"


def describe_method(
    warmup: int,
    runs: int,
    trim: float = 0.2,
    device: Any = None,
    backend: str | None = None,
    what: str = "whole pipeline call",
    synchronised: bool = True,
    statistic: str = "trimmed_mean_s",
) -> str:
    """A short human description of how a latency number was measured.

    Example: ``"whole pipeline call, 2 warm-up + 10 timed runs, device synchronised before and after each run
    only, trimmed mean of 10 (drops the 1 fastest and the 1 slowest), cpu/gloo"``. ``trim`` is the total fraction the trimmed mean drops (see
    :func:`latency_stats`); ``statistic`` is the key of the headline statistic (a value of :data:`STATISTICS`).
    """
    parts = [what, f"{warmup} warm-up + {runs} timed run{'s' if runs != 1 else ''}"]
    parts.append(
        "device synchronised before and after each run only" if synchronised else "device NOT synchronised"
    )
    parts.append(_statistic_text(statistic, runs, trim))
    where = _device_type(device)
    parts.append(f"{where}/{backend}" if backend else where)
    return ", ".join(parts)


def speedup(baseline: dict[str, Any], parallel: dict[str, Any], statistic: str) -> float:
    """``baseline[statistic] / parallel[statistic]``: the same named statistic on both sides.

    ``statistic`` is a key of :func:`latency_stats` (e.g. ``"trimmed_mean_s"``); a value missing on either
    side is an error rather than a silent fallback to another statistic.
    """
    for side, stats in (("baseline", baseline), ("parallel", parallel)):
        if statistic not in stats:
            raise KeyError(f"{side} latency has no {statistic!r} (keys: {', '.join(sorted(stats))})")
    return float(baseline[statistic]) / float(parallel[statistic])


def benchmark(
    fn: Callable[[], T],
    device: Any = None,
    warmup: int = 1,
    runs: int = 3,
    trim: float = 0.2,
    backend: str | None = None,
    what: str = "whole pipeline call",
) -> tuple[T, dict[str, Any]]:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times timed; return the last result and the stats.

    The stats dict is :func:`latency_stats` of the timed runs plus ``samples_s`` (the raw timings),
    ``warmup``, ``runs`` and ``method`` (:func:`describe_method`). Every call is synchronised on ``device``.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    result: Any = None
    for _ in range(runs):
        result, dt = time_call(fn, device)
        samples.append(dt)
    stats: dict[str, Any] = dict(latency_stats(samples, trim=trim))
    stats.update(
        samples_s=samples,
        warmup=warmup,
        runs=runs,
        method=describe_method(warmup, runs, trim=trim, device=device, backend=backend, what=what),
    )
    return result, stats


class StepTimer:
    """Per-denoising-step wall times, as a diffusers ``callback_on_step_end`` callable.

    Diffusers calls ``callback(pipe, step_index, timestep, callback_kwargs)`` at the end of every denoising
    step and expects ``callback_kwargs`` back; this records the time since the previous step ended (the first
    step is measured from :meth:`reset`, which the constructor also calls), synchronising the device first so
    the step's kernels are included. Call :meth:`reset` right before the pipeline call::

        st = StepTimer(device)
        st.reset()
        pipe(prompt, callback_on_step_end=st)
        st.step_times_s  # one float per step

    The first step therefore also includes the pipeline's pre-processing (prompt encoding, latent set-up).
    Synchronising every step changes what is measured: on a GPU it also waits for asynchronous collectives
    still in flight, which removes the overlap of communication with the next step's compute. Use it only in
    a separate, untimed profiling run; the headline latency comes from whole calls (:class:`Timer`) with no
    synchronisation inside.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.step_times_s: list[float] = []
        self.step_indices: list[int] = []
        self._last = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget recorded steps and start the clock for the next first step (synchronises the device)."""
        synchronize(self.device)
        self.step_times_s = []
        self.step_indices = []
        self._last = time.perf_counter()

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        synchronize(self.device)
        now = time.perf_counter()
        self.step_times_s.append(now - self._last)
        self.step_indices.append(int(step_index))
        self._last = now
        return callback_kwargs

    @property
    def total_s(self) -> float:
        """Sum of the recorded step times."""
        return float(sum(self.step_times_s))
