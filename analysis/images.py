"""Per-image LPIPS of a sweep's jobs against their single-device originals, and the worst image.

Records hold the mean LPIPS only; the PNGs they list (``images`` and ``reference_images``, kept when
``runner.save_images=true``) let a notebook find the image that suffered most. LPIPS is computed by
``distri.metrics`` (the ``lpips`` package, inputs in [0, 1] normalised, as the job's metrics): with the real
AlexNet backbone where it is cached, else (``backbones="auto"``) the stand-in, and the result says which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["per_image_lpips", "worst_image"]


def per_image_lpips(
    records: Iterable[Mapping[str, Any]], backbones: str = "auto", net: str = "alex"
) -> pd.DataFrame:
    """One row per (ok job, image) with both PNGs on disk: ``job`` (output folder), ``method``,
    ``world_size``, ``index``, ``image``, ``reference``, ``lpips`` and ``backbone`` (``real`` / ``stand-in``)."""
    from analysis.frame import method_label
    from distri.metrics.backbones import load_lpips, resolve_backbones
    from distri.metrics.scores import paired_scores

    bb = resolve_backbones({"backbones": backbones, "compute": ["lpips"], "lpips_net": net}).items["lpips"]
    model = load_lpips(bb, net, "cpu")
    rows = []
    for rec in records:
        pairs = [
            (i, Path(a), Path(b))
            for i, (a, b) in enumerate(zip(rec.get("images") or [], rec.get("reference_images") or []))
            if Path(a).is_file() and Path(b).is_file()
        ]
        if rec.get("status") != "ok" or not pairs:
            continue
        scores = paired_scores([a for _, a, _ in pairs], [b for _, _, b in pairs], lpips_model=model, psnr=False,
                               progress=False)["lpips"]  # fmt: skip
        cfg = rec.get("config", {})
        s = cfg.get("strategy", {})
        method = method_label(s.get("name"), s.get("mode"), s.get("cfg_split"))
        for (i, a, b), v in zip(pairs, scores):
            rows.append({"job": rec.get("output_dir"), "method": method, "world_size": cfg.get("world_size"),
                         "index": i, "image": str(a), "reference": str(b), "lpips": v, "backbone": bb.kind})  # fmt: skip
    columns = ["job", "method", "world_size", "index", "image", "reference", "lpips", "backbone"]
    return pd.DataFrame(rows, columns=columns)


def worst_image(records: Iterable[Mapping[str, Any]], backbones: str = "auto") -> pd.Series:
    """The row of :func:`per_image_lpips` with the highest LPIPS (the image furthest from its original).

    Raises:
        LookupError: no ok job lists both its images and its references on disk (``runner.save_images=true``
            keeps them).
    """
    scores = per_image_lpips(records, backbones)
    if scores.empty:
        raise LookupError(
            "no ok job lists images and reference_images on disk (run with runner.save_images=true)"
        )
    return scores.loc[scores["lpips"].idxmax()]
