"""The paper's tables from a records DataFrame (:func:`analysis.load.load_frame`), as markdown or LaTeX.

* :func:`table1`: Table 1's layout: steps, devices, method, PSNR (Orig), LPIPS G.T. / Orig, FID G.T. / Orig,
  MACs (T), latency, speedup (against the one-device row of the same setting).
* :func:`table2`: Table 2's layout: one row per devices and method, one column per resolution, each cell
  ``communication per device per step, latency``.

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

__all__ = ["PaperTable", "fmt_sig", "table1", "table2", "to_latex", "to_markdown"]

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


def _metric(row: pd.Series, name: str, digits: int = 3) -> tuple[str, bool]:
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


def _speedup(row: pd.Series) -> tuple[str, bool]:
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


def _prepare(df: pd.DataFrame, layout: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Ok rows, last record per row key, sorted as the paper; and the extra varying config columns."""
    ok = df[df["status"] == "ok"]
    layout_keys = [SHORT[k] for k in layout if k in SHORT] + [
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
            _sortable(-r[k] if k == "steps" and not _missing(r[k]) else r[k]) for k in layout
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
    ok, extra = _prepare(df, ["steps", "world_size"])
    rows, notes = [], set()
    for _, r in ok.iterrows():
        lp_gt, s1 = _metric(r, "lpips_vs_gt")
        lp_o, s2 = _metric(r, "lpips_vs_orig")
        fid_gt, s3 = _metric(r, "fid_vs_gt")
        fid_o, s4 = _metric(r, "fid_vs_orig")
        speedup, in_job = _speedup(r)
        if s1 or s2 or s3 or s4:
            notes.add(STANDIN_NOTE)
        if in_job:
            notes.add(IN_JOB_NOTE)
        row = {short_name(c): _cell(r[c]) for c in extra}
        row.update({
            "steps": _cell(r["steps"]), "devices": _cell(r["world_size"]), "method": r["method"],
            "PSNR (Orig)": _psnr(r), "LPIPS G.T. / Orig": f"{lp_gt} / {lp_o}", "FID G.T. / Orig": f"{fid_gt} / {fid_o}",
            "MACs (T)": _macs(r),
            "latency": fmt_sig(r["latency_s"], 3, " s"), "speedup": speedup,
        })  # fmt: skip
        rows.append(row)
    notes_out = [_latency_note(ok), *sorted(notes)]
    return PaperTable("Table 1: quality and latency", pd.DataFrame(rows), notes_out)


def _macs(r: pd.Series) -> str:
    """A ``macs`` column (multiply-accumulates of one call, e.g. merged from ``distri.dryrun``) in T; records
    carry none themselves, so the column shows ``-`` until one is merged."""
    macs = r.get("macs")
    return "-" if _missing(macs) else fmt_sig(macs / 1e12)


def _cell(v: Any) -> str:
    if _missing(v):
        return "-"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _latency_note(ok: pd.DataFrame) -> str:
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
    ok, extra = _prepare(df, ["world_size", "height", "width"])
    res = sorted(ok["resolution"].dropna().unique(), key=lambda s: _pixels(ok, s))
    row_keys = extra + ["world_size", "method"]
    rows = []
    for key, group in ok.groupby(row_keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {short_name(c): _cell(v) for c, v in zip(extra, key)}
        row.update(devices=_cell(key[-2]), method=key[-1])
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
        _latency_note(ok),
    ]
    if predictions is not None:
        notes.append("(predicted): the cost model's latency where the records have no measurement")
    return PaperTable("Table 2: communication and latency", pd.DataFrame(rows), notes)


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
