"""Calibrate a device profile on single-device latencies only.

Three numbers of a :class:`~distri.predict.profiles.DeviceProfile` are not on a datasheet: the fraction of peak
reached by convolutions and linear layers, the fraction reached by fused attention, and the fixed time per
kernel. Single-device latencies at several resolutions separate them, because the three terms grow
differently with the image: matmul work with the area, attention work with the square of the area, the kernel
count not at all. :func:`calibrate` fits them (``scipy.optimize.least_squares`` on relative errors, bounds
``(0, 1]`` and ``[0, 100]`` us) so that the model's one-device latencies match the measured ones; with three
latencies the fit is exact when it exists.

    python -m distri.predict.calibrate device=a100     # the A100 numbers in distri/predict/profiles.py

The A100 is calibrated on the DistriFusion paper's one-GPU SDXL latencies (:data:`PAPER_ONE_GPU`); no
multi-GPU latency enters. ``experiments/cpu_speedup/predict_check.py`` calibrates the ``cpu`` profile the same
way on single-device runs it measures.
"""

from __future__ import annotations

import sys
from typing import Any

from distri.predict.model import StepCosts, predict_costs
from distri.predict.profiles import DeviceProfile, LinkProfile

PAPER_ONE_GPU = {1024: 5.02, 2048: 23.7, 3840: 140.0}
"""DistriFusion (CVPR 2024), Table 2 / Figure 6: one A100, SDXL, 50 DDIM steps, seconds."""

_NO_LINK = LinkProfile("none", "single device", 0.0, 1.0)


def calibrate(base: DeviceProfile, points: list[tuple[StepCosts, int, float]], how: str) -> DeviceProfile:
    """``base`` with the efficiencies and kernel overhead that fit ``points``: ``(costs of the single-device
    step, steps, measured latency of the whole call in s)``."""
    import numpy as np
    from scipy.optimize import least_squares

    def residuals(x: Any) -> Any:
        dev = base.calibrated(x[0], x[1], x[2], how)
        return np.array([predict_costs(c, n, 0, dev, _NO_LINK).total_s / t - 1 for c, n, t in points])

    fit = least_squares(residuals, x0=[0.5, 0.5, 5.0], bounds=([1e-3, 1e-3, 0.0], [1.0, 1.0, 100.0]))
    m, a, k = (float(v) for v in fit.x)
    return base.calibrated(round(m, 4), round(a, 4), round(k, 2), how)


def calibrate_paper_a100() -> DeviceProfile:
    """The A100 profile calibrated on :data:`PAPER_ONE_GPU` (the packaged one-device SDXL costs)."""
    from distri.predict.profiles import A100_CALIBRATION, DEVICES
    from distri.predict.store import costs, setting_of

    points = [
        (costs(setting_of("sdxl", s, s, 1, "none", False, "float16", 2, {})), 50, t)
        for s, t in PAPER_ONE_GPU.items()
    ]
    return calibrate(DEVICES["a100"], points, A100_CALIBRATION)


def main(argv: list[str] | None = None) -> None:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    if args.get("device", "a100") != "a100":
        sys.exit("error: only device=a100 has published single-device latencies here (the cpu profile is "
                 "calibrated by experiments/cpu_speedup/predict_check.py)")  # fmt: skip
    dev = calibrate_paper_a100()
    print(f"matmul_efficiency={dev.matmul_efficiency} attention_efficiency={dev.attention_efficiency} "
          f"kernel_overhead_us={dev.kernel_overhead_us}")  # fmt: skip


if __name__ == "__main__":
    main()
