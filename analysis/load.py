"""Load job records from ``results.jsonl`` files into flat dicts or a pandas DataFrame.

Only the standard library and ``distri.logging`` (which imports no torch) are needed, except for
:func:`to_dataframe` (pandas). JSONL reading is :func:`distri.logging.read_results`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["find_results_files", "flatten", "load_results", "read_jsonl", "to_dataframe"]


def find_results_files(path_or_dir: str | os.PathLike) -> list[Path]:
    """``[path]`` for a file; for a directory every ``results.jsonl`` below it (recursively), sorted."""
    p = Path(path_or_dir)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(p.rglob("results.jsonl"))
    raise FileNotFoundError(f"no such file or directory: {p}")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse one JSON object per line, skipping blank lines and (with a warning) lines that are not JSON."""
    from distri.logging import read_results  # torch-free

    return read_results(path)


def load_results(path_or_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a ``results.jsonl`` file, or from every ``results.jsonl`` under a directory.

    Each record gets a ``_source`` key: the path of the file it came from. Blank lines are skipped and
    corrupt lines (e.g. from a job killed mid-write) skipped with a warning.
    """
    records: list[dict[str, Any]] = []
    for f in find_results_files(path_or_dir):
        for rec in read_jsonl(f):
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


def to_dataframe(records: Iterable[Mapping[str, Any]]) -> Any:
    """A ``pandas.DataFrame`` with one row per record and one column per flattened key.

    Raises:
        ImportError: if pandas is not installed (``pip install pandas``).
    """
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "to_dataframe needs pandas: install it with `pip install pandas` "
            "(or use analysis.load.flatten / `python -m analysis.tables`, which need only the stdlib)"
        ) from e
    return pd.DataFrame([flatten(r) for r in records])
