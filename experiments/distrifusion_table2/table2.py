"""DistriFusion Table 2, communication: our dry run of the real SDXL UNet next to the paper's figures.

    python -m experiments.distrifusion_table2.table2              # 8 devices, 1024 / 2048 / 3840 px
    python -m experiments.distrifusion_table2.table2 4            # another device count

Checked in ``tests/unit/test_dryrun.py``; what it shows is in this folder's README.
"""

from __future__ import annotations

import sys
from typing import Any

from distri.dryrun import dryrun

PAPER_TABLE2: dict[int, dict[str, float]] = {
    1024: {"patch": 0.42, "tensor": 1.33},
    2048: {"patch": 1.48, "tensor": 5.33},
    3840: {"patch": 5.38, "tensor": 18.7},
}
"""DistriFusion Table 2: communication amount ("G") per device on 8 A100s, SDXL, for patch parallelism (Sync. PP
and DistriFusion alike) and tensor parallelism (Sync. TP)."""


def table2(world_size: int = 8, resolutions: tuple[int, ...] = tuple(PAPER_TABLE2), **kw: Any) -> list[dict]:
    """Our per-device communication per step next to the paper's Table 2 (SDXL, batch 1 = one latent, fp16).

    Patch: ``displaced_patch`` over ``world_size`` ranks (its steady state moves what ``full_sync`` moves).
    Tensor: ``tensor`` over ``world_size`` ranks (SDXL's 10 and 20 heads split unevenly over 8: 2,2,1,1,1,1,1,1
    and 3,3,3,3,2,2,2,2; the all-reduced outputs are full-size either way).
    """
    rows = []
    for res in resolutions:
        patch = dryrun("sdxl", res, res, world_size, "displaced_patch", batch=1, count_macs=False, **kw)
        tp = dryrun("sdxl", res, res, world_size, "tensor", batch=1, steps=1, count_macs=False)
        paper = PAPER_TABLE2.get(res, {})
        rows.append(
            {
                "resolution": res,
                "world_size": world_size,
                "patch_bytes": patch["bytes_per_step"],
                "patch_by_kind": {k: v["bytes"] for k, v in patch["by_kind"].items()},
                "tensor_bytes": tp["bytes_per_step"],
                "paper_patch_g": paper.get("patch"),
                "paper_tensor_g": paper.get("tensor"),
            }
        )
    return rows


def format_table2(rows: list[dict]) -> str:
    """The rows of :func:`table2` as text: ours (G = 1e9 bytes) next to the paper's."""
    n = rows[0]["world_size"] if rows else 8
    lines = [
        f"SDXL, {n} devices, per device per step, batch 1 (one latent), fp16, G = 1e9 bytes"
        + ("" if n == 8 else " (the paper's figures are for 8 devices)"),
        "resolution | patch (ours) | patch (paper) | tensor (ours) | tensor (paper) | patch: attn_kv + conv_halo + gn",
    ]
    for r in rows:
        k = r["patch_by_kind"]
        parts = " + ".join(f"{k.get(x, 0) / 1e9:.4f}" for x in ("attn_kv", "conv_halo", "gn_stats"))
        lines.append(
            f"{r['resolution']}^2 | {r['patch_bytes'] / 1e9:.3f} G | {r['paper_patch_g']} G | "
            f"{r['tensor_bytes'] / 1e9:.3f} G | {r['paper_tensor_g']} G | {parts}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table2(table2(int(sys.argv[1]) if len(sys.argv) > 1 else 8)))
