"""The cost model against the DistriFusion paper: Figure 6 and Table 2's latencies, predicted beside published.

    python experiments/distrifusion_fig6/table.py          # the markdown table of README.md

Predictions: :func:`distri.predict.predict` with ``device=a100`` (calibrated on the paper's one-GPU latencies
only) and ``link=nvlink`` (datasheet), SDXL, 50 DDIM steps, CFG batch 2, float16, displaced patch's 4 + 1
synchronous warm-up steps; costs from the package data.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# (method, strategy spec, devices, size) -> seconds: Figure 6 (DistriFusion at 2 / 4 / 8 A100s) and Table 2
# (8 A100s), DistriFusion, CVPR 2024; the one-GPU latencies are the calibration points.
PAPER: dict[tuple[str, str, int, int], float] = {
    ("Original", "none", 1, 1024): 5.02, ("Original", "none", 1, 2048): 23.7, ("Original", "none", 1, 3840): 140.0,
    ("DistriFusion", "displaced_patch", 2, 1024): 3.35, ("DistriFusion", "displaced_patch", 4, 1024): 2.26,
    ("DistriFusion", "displaced_patch", 8, 1024): 1.77, ("DistriFusion", "displaced_patch", 2, 2048): 13.3,
    ("DistriFusion", "displaced_patch", 4, 2048): 7.60, ("DistriFusion", "displaced_patch", 8, 2048): 4.81,
    ("DistriFusion", "displaced_patch", 2, 3840): 76.6, ("DistriFusion", "displaced_patch", 4, 3840): 41.3,
    ("DistriFusion", "displaced_patch", 8, 3840): 22.9,
    ("Sync. TP", "tensor", 8, 1024): 3.61, ("Sync. TP", "tensor", 8, 2048): 11.7,
    ("Sync. TP", "tensor", 8, 3840): 46.3,
    ("Sync. PP", "displaced_patch/full_sync", 8, 1024): 2.21, ("Sync. PP", "displaced_patch/full_sync", 8, 2048): 5.62,
    ("Sync. PP", "displaced_patch/full_sync", 8, 3840): 24.7,
    ("No Comm.", "displaced_patch/no_sync", 8, 1024): 1.48, ("No Comm.", "displaced_patch/no_sync", 8, 2048): 4.14,
    ("No Comm.", "displaced_patch/no_sync", 8, 3840): 21.3,
}  # fmt: skip
TABLE2_ORDER = ("Sync. TP", "Sync. PP", "DistriFusion", "No Comm.")
"""Table 2's methods, slowest first at every resolution."""


def rows() -> list[dict]:
    """Every paper latency with the prediction and the error."""
    from distri.predict import predict

    out = []
    for (method, strategy, n, size), paper in PAPER.items():
        p = predict("sdxl", size, size, n, strategy, "a100", "nvlink", 50)
        out.append({"method": method, "devices": n, "size": size, "paper_s": paper, "predicted_s": p.total_s,
                    "error": p.total_s / paper - 1, "compute_s": p.compute_s,
                    "exposed_comm_s": p.exposed_comm_s, "non_split_s": p.non_split_s})  # fmt: skip
    return out


def main() -> None:
    print(
        "| method | GPUs | resolution | paper (s) | predicted (s) | error | compute | exposed comm | non-split |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows():
        print(
            f"| {r['method']} | {r['devices']} | {r['size']}^2 | {r['paper_s']:.2f} | {r['predicted_s']:.2f} | "
            f"{r['error']:+.1%} | {r['compute_s']:.2f} | {r['exposed_comm_s']:.2f} | {r['non_split_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
