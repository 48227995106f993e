"""Print a sweep's tables: one row per job, then the paper's Table 1 and Table 2 layouts.

Usage::

    python -m analysis.tables SWEEP_DIR [SWEEP_DIR ...] [--table all|jobs|1|2|fig6|gn|warmup]
                              [--format markdown|latex]
                              [--predictions FILE] [--sort model,height,strategy] [--failures]

A directory is searched recursively for ``results.jsonl`` files. The jobs table needs the standard library
only; the paper tables (:mod:`analysis.paper`: Table 1, Table 2, Figure 6; :mod:`analysis.ablations`: the
GroupNorm and warm-up ablations) need pandas.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from analysis.load import flatten, load_results
from distri.units import format_bytes

__all__ = ["COLUMNS", "format_table", "main", "rows_from_records"]


def _fmt_num(fmt: str, suffix: str = "") -> Callable[[Any], str]:
    def f(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        if math.isinf(v):
            return "inf"
        return format(v, fmt) + suffix

    return f


def _fmt_bytes(v: Any) -> str:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        return str(v)
    return format_bytes(v)


def _fmt_plain(v: Any) -> str:
    return "-" if v is None else str(v)


COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("model", "config.model.name", _fmt_plain),
    ("strategy", "config.strategy.name", _fmt_plain),
    ("mode", "config.strategy.mode", _fmt_plain),
    ("world_size", "config.world_size", _fmt_plain),
    ("height", "config.height", _fmt_plain),
    ("steps", "config.sampler.num_inference_steps", _fmt_plain),
    ("latency mean", "latency.mean_s", _fmt_num(".3f", " s")),
    ("speedup", "speedup", _fmt_num(".2f", "x")),
    ("psnr_vs_orig", "metrics.psnr_vs_orig", _fmt_num(".2f")),
    ("bytes_per_step", "comm.bytes_per_step", _fmt_bytes),
    ("status", "status", _fmt_plain),
]
"""Table columns: (header, flattened record key, formatter)."""


def rows_from_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Raw (unformatted) column values per record, keyed by column header."""
    rows = []
    for rec in records:
        flat = flatten(rec)
        rows.append({header: flat.get(key) for header, key, _ in COLUMNS})
    return rows


def _sort_key(row: Mapping[str, Any], cols: Sequence[str]) -> tuple:
    key = []
    for c in cols:
        v = row.get(c)
        # None sorts last; numbers before strings so mixed columns do not raise.
        if v is None:
            key.append((2, 0, ""))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            key.append((0, v, ""))
        else:
            key.append((1, 0, str(v)))
    return tuple(key)


def format_table(records: Sequence[Mapping[str, Any]], sort: Sequence[str] | None = None) -> str:
    """Render records as an aligned plain-text table (one row per record, columns :data:`COLUMNS`)."""
    rows = rows_from_records(records)
    if sort:
        unknown = [c for c in sort if c not in {h for h, _, _ in COLUMNS}]
        if unknown:
            raise ValueError(f"unknown sort column(s) {unknown}; choose from {[h for h, _, _ in COLUMNS]}")
        rows.sort(key=lambda r: _sort_key(r, sort))
    headers = [h for h, _, _ in COLUMNS]
    cells = [[fmt(row[h]) for h, _, fmt in COLUMNS] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = {"world_size", "height", "steps", "latency mean", "speedup", "psnr_vs_orig", "bytes_per_step"}

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if h in numeric else v.ljust(w)
            for v, w, h in zip(values, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _paper_tables(
    records: Sequence[Mapping[str, Any]], which: str, fmt: str, predictions: str | None
) -> list[str]:
    """The paper tables of ``records``, rendered (needs pandas)."""
    from analysis.ablations import gn_table, warmup_table
    from analysis.frame import derive, predictions_frame, read_predictions
    from analysis.load import to_dataframe
    from analysis.paper import fig6, table1, table2, to_latex, to_markdown

    df = derive(to_dataframe(records))
    if not (df["status"] == "ok").any():
        return ["(no ok job: no paper table)"]
    pred = predictions_frame(read_predictions(predictions)) if predictions else None
    builders = {
        "1": table1,
        "2": lambda d: table2(d, pred),
        "fig6": fig6,
        "gn": gn_table,
        "warmup": warmup_table,
    }
    tables = [builders[k](df) for k in (("1", "2") if which == "all" else (which,))]
    render = to_latex if fmt == "latex" else to_markdown
    return [render(t) for t in tables]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", help="results.jsonl files or sweep directories (searched recursively)"
    )
    parser.add_argument(
        "--table",
        choices=("all", "jobs", "1", "2", "fig6", "gn", "warmup"),
        default="all",
        help="jobs: one row per job; 1, 2: the paper's Table 1 / Table 2 layout; fig6: Figure 6's latency and "
        "speedup per resolution and devices; gn, warmup: the GroupNorm / warm-up ablation; all (default): jobs, "
        "1 and 2",
    )
    parser.add_argument(
        "--format", choices=("markdown", "latex"), default="markdown", help="of the paper tables"
    )
    parser.add_argument("--predictions", help="cost-model predictions (CSV, JSON or JSON lines) for Table 2")
    parser.add_argument(
        "--sort", default="", help="jobs table: comma-separated column headers, e.g. model,height"
    )
    parser.add_argument("--failures", action="store_true", help="also print the error of each failed job")
    args = parser.parse_args(argv)  # fmt: skip
    try:
        records = load_results(*args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"no results found under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    if args.table in ("all", "jobs"):
        sort = [c.strip() for c in args.sort.split(",") if c.strip()]
        print(format_table(records, sort=sort or None))
    if args.table != "jobs":
        for text in _paper_tables(records, args.table, args.format, args.predictions):
            print("\n" + text)
    failed = [r for r in records if r.get("status") != "ok"]
    n_skipped = sum(r.get("status") == "skipped" for r in records)
    tail = f", {n_skipped} skipped" if n_skipped else ""
    print(f"\n{len(records)} job(s): {len(records) - len(failed)} ok, {len(failed) - n_skipped} failed{tail}")
    if args.failures:
        for r in failed:
            name = flatten(r).get("config.name") or flatten(r).get("config.model.name") or "?"
            print(f"  [{name}] {r.get('status')}: {r.get('error') or r.get('reason')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
