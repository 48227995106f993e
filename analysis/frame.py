"""Derived columns of a records DataFrame: the paper's method names, headline latency, speedup against the
one-device row of the same setting, and the latency split into compute and exposed communication.

Input: the flattened records of :func:`analysis.load.to_dataframe` (``config.world_size``, ``latency.mean_s``,
...). :func:`derive` adds short columns (``model``, ``strategy``, ``mode``, ``world_size``, ``steps``,
``resolution``, ``method``, ``latency_s``, ``speedup_vs_1``, ``comm_exposed_s``, ``compute_s``, ...) and keeps
the flattened ones. :func:`predictions_frame` turns cost-model predictions into the same short columns.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

__all__ = [
    "METHOD_ORDER",
    "QUALITY",
    "SETTING",
    "derive",
    "method_label",
    "predictions_frame",
    "read_predictions",
    "varying_columns",
]

SHORT = {
    "model": "config.model.name",
    "strategy": "config.strategy.name",
    "mode": "config.strategy.mode",
    "cfg_split": "config.strategy.cfg_split",
    "world_size": "config.world_size",
    "steps": "config.sampler.num_inference_steps",
    "sampler": "config.sampler.name",
    "guidance": "config.sampler.guidance_scale",
    "height": "config.height",
    "width": "config.width",
    "dtype": "config.dtype",
    "device": "config.device",
    "threads": "config.runner.cpu_threads_per_rank",
}
"""Short column -> flattened record key."""

SETTING = ("model", "sampler", "steps", "guidance", "height", "width", "dtype", "device", "threads")
"""What must match for two jobs to be the same setting (the one-device row of a setting is its baseline)."""

QUALITY = {"psnr_vs_orig": True, "lpips_vs_orig": False, "lpips_vs_gt": False, "fid_vs_orig": False,
           "fid_vs_gt": False, "clip_score": True, "shape_accuracy": True,
           "shape_agreement_vs_orig": True}  # fmt: skip
"""Quality metrics of a record's ``metrics`` -> whether higher is better."""

_LABELS = {
    ("none", None): "Original",
    ("naive_patch", None): "Naive patch",
    ("tensor", None): "Sync. TP",
    ("displaced_patch", "full_sync"): "Sync. PP",
    ("displaced_patch", "corrected_async_gn"): "DistriFusion",
    ("displaced_patch", "stale_gn"): "DistriFusion (stale GN)",
    ("displaced_patch", "sync_gn"): "DistriFusion (sync GN)",
    ("displaced_patch", "separate_gn"): "DistriFusion (separate GN)",
    ("displaced_patch", "no_sync"): "No Comm.",
}
METHOD_ORDER = tuple(dict.fromkeys(_LABELS.values()))
"""The paper's row order (Table 1: Original, Naive patch, DistriFusion; Table 2: Sync. TP, Sync. PP, ...)."""


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def method_label(strategy: Any, mode: Any = None, cfg_split: Any = False) -> str:
    """The paper's name of a strategy (and mode): ``displaced_patch``/``corrected_async_gn`` -> DistriFusion,
    ``full_sync`` -> Sync. PP, ``no_sync`` -> No Comm., ``tensor`` -> Sync. TP, ``none`` -> Original; other
    strategies keep their name (with the mode). ``cfg_split`` appends `` + CFG split``."""
    mode = None if _missing(mode) else mode
    label = _LABELS.get((strategy, mode)) or _LABELS.get((strategy, None))
    if label is None:
        label = str(strategy) if mode is None else f"{strategy} ({mode})"
    return label + (" + CFG split" if not _missing(cfg_split) and bool(cfg_split) else "")


def resolution_label(height: Any, width: Any) -> str | None:
    """``1024^2`` for a square image (the paper's notation), else ``HxW``."""
    if _missing(height) or _missing(width):
        return None
    h, w = int(height), int(width)
    return f"{h}^2" if h == w else f"{h}x{w}"


def _headline(row: pd.Series) -> float:
    """The record's headline latency: ``latency[latency.statistic]`` (e.g. ``trimmed_mean_s``)."""
    stat = row.get("latency.statistic")
    value = row.get(f"latency.{stat}") if isinstance(stat, str) else None
    return float("nan") if _missing(value) else float(value)


def _exposed_comm(row: pd.Series) -> float:
    """Measured exposed communication of one call: the ledger's wait over all steps (``comm.total_wait_s``),
    else ``comm.wait_s_per_step`` x steps."""
    total = row.get("comm.total_wait_s")
    if not _missing(total):
        return float(total)
    per_step, steps = row.get("comm.wait_s_per_step"), row.get("steps")
    return float("nan") if _missing(per_step) or _missing(steps) else float(per_step) * float(steps)


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Add the short and derived columns (see the module docstring) to flattened records."""
    df = df.copy()
    for short, key in SHORT.items():
        df[short] = df[key] if key in df.columns else None
    if "status" not in df.columns:
        df["status"] = "ok"
    df["resolution"] = [resolution_label(h, w) for h, w in zip(df["height"], df["width"])]
    df["method"] = [method_label(s, m, c) for s, m, c in zip(df["strategy"], df["mode"], df["cfg_split"])]
    for m in QUALITY:  # the runner writes a bit-identical PSNR as "inf"; make every metric a number
        if f"metrics.{m}" in df.columns:
            df[f"metrics.{m}"] = pd.to_numeric(df[f"metrics.{m}"], errors="coerce")
    df["latency_s"] = df.apply(_headline, axis=1) if len(df) else pd.Series(dtype=float)
    df["latency_statistic"] = df.get("latency.statistic")
    df["comm_exposed_s"] = df.apply(_exposed_comm, axis=1) if len(df) else pd.Series(dtype=float)
    df["compute_s"] = df["latency_s"] - df["comm_exposed_s"]
    df["comm_bytes_per_step"] = df.get("comm.bytes_per_step")
    df["speedup_vs_1"] = _speedup_vs_one_device(df)
    return df


def _speedup_vs_one_device(df: pd.DataFrame) -> pd.Series:
    """Latency of the setting's one-device row / the row's latency, both by the row's own statistic.

    The one-device row: an ``ok`` job of the same :data:`SETTING` with ``world_size == 1`` and no CFG split,
    the plain ``none`` strategy first, else the first such job. NaN where the setting has none.
    """
    out = pd.Series(float("nan"), index=df.index)
    ok = df[df["status"] == "ok"]
    keys = [k for k in SETTING if k in df.columns]
    for _, group in ok.groupby([ok[k].astype(str) for k in keys], sort=False):
        split = group["cfg_split"].map(lambda v: not _missing(v) and bool(v))
        single = group[(group["world_size"] == 1) & ~split]
        if single.empty:
            continue
        base = single.sort_values("strategy", key=lambda s: s != "none", kind="stable").iloc[0]
        for idx, row in group.iterrows():
            stat = row.get("latency.statistic")
            b, v = base.get(f"latency.{stat}"), row.get(f"latency.{stat}")
            if not (_missing(b) or _missing(v)) and v > 0:
                out[idx] = float(b) / float(v)
    return out


def varying_columns(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """``config.*`` columns with more than one distinct value among ``df``'s rows, in column order: what a
    table must show so that no two rows look alike. Left out: Hydra targets, the columns in ``exclude`` and a
    column that splits the rows exactly as an excluded or earlier one does (``model.id`` after ``model.name``)."""
    skip, cols = set(exclude), []
    seen = {_partition(df[c]) for c in skip if c in df.columns}
    for c in df.columns:
        if not c.startswith("config.") or c.endswith("_target_") or c in skip:
            continue
        if df[c].dropna().astype(str).nunique() < 2:
            continue
        partition = _partition(df[c])
        if partition not in seen:
            seen.add(partition)
            cols.append(c)
    return cols


def _partition(col: pd.Series) -> tuple[int, ...]:
    """How a column splits the rows: a group number per row (missing values one group of their own)."""
    return tuple(int(i) for i in pd.factorize(col, use_na_sentinel=False)[0])


def short_name(col: str) -> str:
    """``config.world_size`` -> ``world_size`` (a :data:`SHORT` name), else the key without ``config.``."""
    inverse = {v: k for k, v in SHORT.items()}
    return inverse.get(col, col.removeprefix("config."))


def setting_labels(df: pd.DataFrame) -> pd.Series:
    """Per row, the configuration keys that vary among the rows apart from device count and method (e.g.
    ``height=1024, steps=50``): what tells two lines of one method apart in a figure; empty if nothing varies."""
    method_keys = [SHORT[k] for k in ("world_size", "strategy", "mode", "cfg_split")]
    cols = varying_columns(df, exclude=method_keys)

    def label(row: pd.Series) -> str:
        return ", ".join(f"{short_name(c)}={_plain(row[c])}" for c in cols)

    return df.apply(label, axis=1) if len(df) else pd.Series(dtype=str)


def _plain(v: Any) -> str:
    if _missing(v):
        return "-"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _prediction_row(p: Any) -> dict[str, Any]:
    d = p.to_dict() if hasattr(p, "to_dict") else dict(p)
    setting = d.pop("setting", {}) or {}
    params = setting.pop("params", {}) or {}
    row = {**setting, **d}
    row["mode"] = params.get("mode", row.get("mode"))
    row.setdefault("predicted_s", row.get("total_s"))
    return row


def predictions_frame(predictions: Iterable[Mapping[str, Any] | Any]) -> pd.DataFrame:
    """Cost-model predictions as a DataFrame with the short columns (``strategy``, ``mode``, ``cfg_split``,
    ``world_size``, ``height``, ``width``, ``steps``, ...), ``predicted_s`` (the whole call) and, where the
    prediction has them, ``compute_s``, ``exposed_comm_s``, ``non_split_s``, plus ``method`` and ``resolution``.

    Each prediction is a mapping or has ``to_dict()`` (``distri.predict``'s ``Prediction``: a ``setting`` dict
    with ``params``, and ``total_s``), or is already flat with ``predicted_s`` or ``total_s``.
    """
    df = pd.DataFrame([_prediction_row(p) for p in predictions])
    for col in ("strategy", "world_size", "predicted_s"):
        if col not in df.columns:
            raise ValueError(f"predictions need a {col!r} column (got {sorted(df.columns)})")
    for col in ("mode", "cfg_split", "height", "width"):
        if col not in df.columns:
            df[col] = None
    df["method"] = [method_label(s, m, c) for s, m, c in zip(df["strategy"], df["mode"], df["cfg_split"])]
    df["resolution"] = [resolution_label(h, w) for h, w in zip(df["height"], df["width"])]
    return df


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Predictions from a CSV, a JSON list or a JSON lines file (rows as :func:`predictions_frame` takes)."""
    path = str(path)
    if path.endswith(".csv"):
        return pd.read_csv(path).to_dict("records")
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]
