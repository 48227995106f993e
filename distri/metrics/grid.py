"""The comparison grid of a job: for its first prompts, original | parallel | absolute difference as a heat map.

One row per prompt. The heat map shows the per-pixel absolute difference of the two 8-bit images in ``[0, 1]``
units, averaged over the RGB channels, on one colour scale for the whole grid (its maximum is printed in the
title), so rows can be compared with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def comparison_grid(
    originals: Sequence[str | Path],
    parallel: Sequence[str | Path],
    out: str | Path,
    label: str = "parallel",
    prompts: Sequence[str] | None = None,
    rows: int = 4,
) -> Path:
    """Write the grid of the first ``rows`` image pairs to ``out`` (PNG); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(rows, len(originals), len(parallel))
    if n == 0:
        raise ValueError("comparison_grid needs at least one pair of images")
    pairs = [(_rgb(o), _rgb(p)) for o, p in zip(originals[:n], parallel[:n])]
    diffs = [np.abs(a - b).mean(axis=2) for a, b in pairs]
    vmax = max(max(float(d.max()) for d in diffs), 1e-6)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 0.4), squeeze=False)
    titles = ("original (single device)", label, f"|difference| (max {vmax:.3g})")
    for i, ((a, b), d) in enumerate(zip(pairs, diffs)):
        axes[i][0].imshow(a)
        axes[i][1].imshow(b)
        heat = axes[i][2].imshow(d, cmap="inferno", vmin=0.0, vmax=vmax)
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        if prompts is not None and i < len(prompts):
            axes[i][0].set_ylabel(_short(prompts[i]), fontsize=7)
    fig.colorbar(heat, ax=[row[2] for row in axes], fraction=0.046, pad=0.02)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def _short(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:3])
