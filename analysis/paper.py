"""The paper's tables from a records DataFrame (:func:`analysis.load.load_frame`), as markdown or LaTeX.

* :func:`table1`: Table 1's layout: steps, devices, method, PSNR (Orig), LPIPS G.T. / Orig, FID G.T. / Orig,
  MACs (T), latency, speedup (against the one-device row of the same setting).
* :func:`table2`: Table 2's layout: one row per devices and method, one column per resolution, each cell
  ``communication per device per step, latency``.
* :func:`fig6`: Figure 6's numbers: a row per resolution and method, a column per device count, each cell
  ``latency (speedup)``.

Only ``ok`` jobs are tabulated. Missing values print as ``-``. A metric computed with a stand-in backbone
(``metrics.backbone_<metric>: stand-in``) is marked with a dagger and a note. Configuration keys that vary in
the sweep beyond the layout's own get a column each, so that no two rows look alike; a setting run twice keeps
the last record (a rerun with ``force=true``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis.frame import METHOD_ORDER, SHORT, short_name, varying_columns

__all__ = ["PaperTable", "fig6", "fmt_sig", "table1", "table2", "to_latex", "to_markdown"]

STANDIN = "\u2020"  # dagger
STANDIN_NOTE = (
    f"{STANDIN} stand-in metric backbone (metrics.backbone_*: stand-in): comparable only with other stand-in "
    "numbers, never with the paper's"
)


@dataclass
class PaperTable:
    """A table of formatted cells (``frame``), its ``title`` and the ``notes`` printed under it."""

    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_sig(v: Any, digits: int = 3, suffix: str = "") -> str:
    """``v`` with ``digits`` significant digits as the paper prints them (24.0, 4.86, 125, 0.797); ``-`` if
    missing; integers with more digits keep them all."""
    if _missing(v):
        return "-"
    v = float(v)
    if math.isinf(v):
        return "inf" + suffix
    if v == 0:
        return "0" + suffix
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}{suffix}"


def metric_cell(row: pd.Series, name: str, digits: int = 3) -> tuple[str, bool]:
    """The formatted metric and whether it came from a stand-in backbone."""
    value = row.get(f"metrics.{name}")
    standin = not _missing(value) and row.get(f"metrics.backbone_{name}") == "stand-in"
    return fmt_sig(value, digits) + (STANDIN if standin else ""), standin


def _psnr(row: pd.Series) -> str:
    v = row.get("metrics.psnr_vs_orig")
    if (
        _missing(v)
        and (row.get("metrics.psnr_vs_orig_n_identical") or row.get("metrics.n_identical") or 0) > 0
    ):
        return "inf"  # every pair bit-identical: the record holds null, the PSNR is infinite
    return fmt_sig(v)


def speedup_cell(row: pd.Series) -> tuple[str, bool]:
    """Against the one-device row of the setting; else the job's own in-job baseline, marked ``*``."""
    split = row.get("cfg_split")
    if row.get("world_size") == 1 and (_missing(split) or not bool(split)):
        return "-", False
    if not _missing(row.get("speedup_vs_1")):
        return fmt_sig(row["speedup_vs_1"], 2, "x"), False
    if not _missing(row.get("speedup")):
        return fmt_sig(row["speedup"], 2, "x") + "*", True
    return "-", False


IN_JOB_NOTE = (
    "* no one-device row of this setting in the records: speedup against the single-device run measured in the "
    "same job (record's `speedup`)"
)


def prepare(df: pd.DataFrame, layout: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Ok rows, last record per row key, sorted as the paper; and the extra varying config columns.

    ``layout``: the table's own columns, as short names (:data:`analysis.frame.SHORT`) or flattened config keys
    (``config.strategy.warmup_steps``); rows sort by the extra columns, then by ``layout`` in order."""
    ok = df[df["status"] == "ok"]
    layout_keys = [SHORT.get(k, k) for k in layout] + [
        SHORT["mode"],
        SHORT["cfg_split"],
        SHORT["strategy"],
    ]
    extra = varying_columns(ok, exclude=layout_keys)
    keys = extra + [k for k in layout if k in ok.columns] + ["method"]
    ok = ok.drop_duplicates(subset=keys, keep="last")
    order = {m: i for i, m in enumerate(METHOD_ORDER)}

    def key(r: pd.Series) -> tuple:
        m = r["method"]
        # the paper's order: the longest schedule first, then fewer devices first
        cols = [_sortable(r[c]) for c in extra] + [
            _sortable(-r[k] if k == "steps" and not _missing(r[k]) else r.get(k)) for k in layout
        ]
        return (*cols, order.get(m.removesuffix(" + CFG split"), len(order)), m)

    ok = ok.loc[sorted(ok.index, key=lambda i: key(ok.loc[i]))]
    return ok, extra


def _sortable(v: Any) -> tuple:
    """Sort key: numbers first (by value), then strings, missing last; mixed columns never raise."""
    if _missing(v):
        return (2, 0.0, "")
    if isinstance(v, numbers.Number) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def table1(df: pd.DataFrame) -> PaperTable:
    """Table 1's layout (see the module docstring), one row per ok job."""
    ok, extra = prepare(df, ["steps", "world_size"])
    rows, notes = [], set()
    for _, r in ok.iterrows():
        lp_gt, s1 = metric_cell(r, "lpips_vs_gt")
        lp_o, s2 = metric_cell(r, "lpips_vs_orig")
        fid_gt, s3 = metric_cell(r, "fid_vs_gt")
        fid_o, s4 = metric_cell(r, "fid_vs_orig")
        speedup, in_job = speedup_cell(r)
        if s1 or s2 or s3 or s4:
            notes.add(STANDIN_NOTE)
        if in_job:
            notes.add(IN_JOB_NOTE)
        row = {short_name(c): cell(r[c]) for c in extra}
        row.update({
            "steps": cell(r["steps"]), "devices": cell(r["world_size"]), "method": r["method"],
            "PSNR (Orig)": _psnr(r), "LPIPS G.T. / Orig": f"{lp_gt} / {lp_o}", "FID G.T. / Orig": f"{fid_gt} / {fid_o}",
            "MACs (T)": _macs(r),
            "latency": fmt_sig(r["latency_s"], 3, " s"), "speedup": speedup,
        })  # fmt: skip
        rows.append(row)
    notes_out = [latency_note(ok), *sorted(notes)]
    return PaperTable("Table 1: quality and latency", pd.DataFrame(rows), notes_out)


def _macs(r: pd.Series) -> str:
    """A ``macs`` column (multiply-accumulates of one call, e.g. merged from ``distri.dryrun``) in T; records
    carry none themselves, so the column shows ``-`` until one is merged."""
    macs = r.get("macs")
    return "-" if _missing(macs) else fmt_sig(macs / 1e12)


def cell(v: Any) -> str:
    if _missing(v):
        return "-"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def latency_note(ok: pd.DataFrame) -> str:
    stats = sorted(ok["latency_statistic"].dropna().astype(str).unique()) if len(ok) else []
    return (
        f"latency: the records' headline statistic ({', '.join(stats) or '-'}) of the timed whole-pipeline "
        "calls; speedup: the one-device row's latency / this row's, by the same statistic"
    )


def _table2_cell(r: pd.Series | None, predicted: float | None) -> str:
    if r is None:
        return "-" if predicted is None else fmt_sig(predicted, 3, " s") + " (predicted)"
    lat = fmt_sig(r["latency_s"], 3, " s")
    comm = r.get("comm_bytes_per_step")
    if _missing(comm) or comm <= 0:
        return lat
    return f"{fmt_sig(comm / 1e9, 3, 'G')}, {lat}"


def table2(df: pd.DataFrame, predictions: pd.DataFrame | None = None) -> PaperTable:
    """Table 2's layout: rows (devices, method), a column per resolution (smallest first), cells
    ``G per device per step, latency``. With ``predictions`` (:func:`analysis.frame.predictions_frame`), a
    cell without a measurement shows the predicted latency, labelled ``(predicted)``."""
    ok, extra = prepare(df, ["world_size", "height", "width"])
    res = sorted(ok["resolution"].dropna().unique(), key=lambda s: _pixels(ok, s))
    row_keys = extra + ["world_size", "method"]
    rows = []
    for key, group in ok.groupby(row_keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {short_name(c): cell(v) for c, v in zip(extra, key)}
        row.update(devices=cell(key[-2]), method=key[-1])
        for name in res:
            hit = group[group["resolution"] == name]
            r = hit.iloc[-1] if len(hit) else None
            row[name] = _table2_cell(
                r, _predicted(predictions, key[-2], key[-1], name) if r is None else None
            )
        rows.append(row)
    notes = [
        "communication: comm.bytes_per_step in G (10^9 bytes) per device per denoising step, paper convention "
        "(ledger), with the job's own UNet batch (classifier-free guidance doubles the paper's batch-1 figures "
        "unless cfg_split)",
        latency_note(ok),
    ]
    if predictions is not None:
        notes.append("(predicted): the cost model's latency where the records have no measurement")
    return PaperTable("Table 2: communication and latency", pd.DataFrame(rows), notes)


def fig6(df: pd.DataFrame) -> PaperTable:
    """Figure 6's numbers: a row per resolution (smallest first) and parallel method, a column per device count,
    cells ``latency (speedup)``. The one-device column holds the resolution's one-device row (Original)."""
    ok, extra = prepare(df, ["height", "width", "world_size"])
    single = (ok["world_size"] == 1) & ~ok["cfg_split"].map(lambda v: not _missing(v) and bool(v))
    sizes = sorted(ok["world_size"].dropna().unique())
    keys = extra + ["resolution"]
    rows, notes = [], {latency_note(ok)}
    for key, group in ok.groupby(keys + ["method"], sort=False, dropna=False):
        same = (ok[keys].astype(str) == [str(v) for v in key[:-1]]).all(axis=1)
        if single[group.index].all() and (same & ~single).any():
            continue  # this one-device row fills the device-count-1 column of the parallel rows
        row = {short_name(c): cell(v) for c, v in zip(extra, key)}
        row.update(resolution=key[-2], method=key[-1])
        for n in sizes:
            hit = ok[same & single] if n == 1 else group[group["world_size"] == n]
            row[f"{cell(n)} device{'s' if n > 1 else ''}"] = _fig6_cell(hit, notes)
        rows.append(row)
    return PaperTable("Figure 6: latency vs resolution and devices", pd.DataFrame(rows), sorted(notes))


def _fig6_cell(hit: pd.DataFrame, notes: set[str]) -> str:
    if hit.empty:
        return "-"
    r = hit.iloc[-1]
    speedup, in_job = speedup_cell(r)
    if in_job:
        notes.add(IN_JOB_NOTE)
    lat = fmt_sig(r["latency_s"], 3, " s")
    return lat if speedup == "-" else f"{lat} ({speedup})"


def _pixels(df: pd.DataFrame, resolution: str) -> int:
    r = df[df["resolution"] == resolution].iloc[0]
    return int(r["height"]) * int(r["width"])


def _predicted(pred: pd.DataFrame | None, world_size: Any, method: str, resolution: str) -> float | None:
    if pred is None:
        return None
    hit = pred[
        (pred["world_size"] == world_size) & (pred["method"] == method) & (pred["resolution"] == resolution)
    ]
    return None if hit.empty else float(hit["predicted_s"].iloc[-1])


def to_markdown(t: PaperTable) -> str:
    """GitHub markdown: a bold title, the table, the notes as a list."""
    cols = list(t.frame.columns)
    lines = [f"**{t.title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in t.frame.itertuples(index=False)]
    return "\n".join(lines + [""] + [f"- {n}" for n in t.notes])


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          STANDIN: r"$^\dagger$"}  # fmt: skip


def _tex(s: Any) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(s))


def to_latex(t: PaperTable) -> str:
    """A LaTeX ``table`` with ``booktabs`` rules; the notes as footnote lines under the tabular."""
    cols = list(t.frame.columns)
    lines = [
        r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(t.title)}}}",
        r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule", " & ".join(_tex(c) for c in cols) + r" \\",
        r"\midrule",
    ]  # fmt: skip
    lines += [" & ".join(_tex(v) for v in row) + r" \\" for row in t.frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\footnotesize " + _tex(n) for n in t.notes]
    return "\n".join(lines + [r"\end{table}"])
