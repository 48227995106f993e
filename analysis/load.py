"""Load job records into flat dicts or a pandas DataFrame: from sweep folders' ``results.jsonl`` or from W&B.

A record is one line of ``results.jsonl`` (README "Results" gives its fields), read with the results store's
own reader (:mod:`distri.job.results`, which imports no torch); :func:`to_dataframe`, :func:`load_frame` and
:func:`load_wandb` need pandas (and wandb for the last).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distri.job.results import latest_per_job, read_results

__all__ = [
    "find_results_files",
    "flatten",
    "load_frame",
    "load_results",
    "load_wandb",
    "to_dataframe",
]

PathLike = str | os.PathLike


def find_results_files(path_or_dir: PathLike) -> list[Path]:
    """``[path]`` for a file; for a directory every ``results.jsonl`` below it (recursively), sorted."""
    p = Path(path_or_dir)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(p.rglob("results.jsonl"))
    raise FileNotFoundError(f"no such file or directory: {p}")


def load_results(*paths: PathLike) -> list[dict[str, Any]]:
    """Records of one or several ``results.jsonl`` files or sweep folders (searched recursively).

    Each record gets a ``_source`` key: the path of the file it came from. Within one file a job counts once:
    of records with the same ``config_hash`` (a job that failed and was run again, or recomputed with
    ``force=true``) only the last is kept.
    """
    records: list[dict[str, Any]] = []
    for path in paths:
        for f in find_results_files(path):
            for rec in latest_per_job(read_results(f)):
                rec.setdefault("_source", str(f))
                records.append(rec)
    return records


def flatten(record: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``sep``-joined keys (``config.model.name``, ``latency.mean_s``, ...).

    Lists and tuples (e.g. ``images``, ``latency.samples_s``) are skipped; top-level scalars such as
    ``status`` or ``speedup`` are kept as they are. Empty dicts produce no keys.
    """
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, sep=sep, prefix=key))
        elif isinstance(v, (list, tuple)):
            continue
        else:
            out[key] = v
    return out


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "analysis DataFrames need pandas, a dependency of distri: `pip install -e .` (or `pip install pandas`)"
        ) from e
    return pd


def to_dataframe(records: Iterable[Mapping[str, Any]]) -> Any:
    """A ``pandas.DataFrame`` with one row per record and one column per flattened key (no derived columns)."""
    return _pandas().DataFrame([flatten(r) for r in records])


def load_frame(*paths: PathLike, ok_only: bool = False) -> Any:
    """Records of sweep folders / ``results.jsonl`` files as a DataFrame with the derived columns of
    :func:`analysis.frame.derive` (``method``, ``latency_s``, ``speedup_vs_1``, ...). ``ok_only`` drops
    failed and skipped jobs."""
    from analysis.frame import derive

    records = load_results(*paths)
    if not records:
        raise FileNotFoundError(f"no records in any results.jsonl under {', '.join(map(str, paths))}")
    df = derive(to_dataframe(records))
    return df[df["status"] == "ok"].reset_index(drop=True) if ok_only else df


def _wandb_record(run: Any) -> dict[str, Any] | None:
    """The distri record of one W&B run: the full record in the summary (``record``), else config + summary."""
    summary = dict(run.summary._json_dict) if hasattr(run.summary, "_json_dict") else dict(run.summary)
    full = summary.get("record")
    if isinstance(full, Mapping):
        rec = dict(full)
    else:
        rec = {k: v for k, v in summary.items() if not k.startswith("_")}
        rec.setdefault("config", dict(run.config))
    rec["_source"] = f"wandb:{'/'.join(run.path)}"
    return rec


def load_wandb(path: str, filters: Mapping[str, Any] | None = None, api: Any = None) -> Any:
    """Runs of the W&B project ``path`` (``entity/project``) as a DataFrame like :func:`load_frame`'s.

    Uses wandb's public API (``wandb.Api().runs(path, filters)``; needs a login or ``WANDB_API_KEY``);
    ``api`` replaces ``wandb.Api()`` (tests pass a stand-in). distri logs the full record into each run's
    summary under ``record``; runs without one give their config and summary scalars.
    """
    from analysis.frame import derive

    if api is None:
        import wandb

        api = wandb.Api()
    records = [r for r in (_wandb_record(run) for run in api.runs(path, filters=filters)) if r]
    if not records:
        raise LookupError(f"no runs in the W&B project {path!r} (filters={filters})")
    return derive(to_dataframe(records))
