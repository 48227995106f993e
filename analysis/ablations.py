"""The paper's ablations of displaced patch parallelism from a records DataFrame, in the layout of
:mod:`analysis.paper` (markdown or LaTeX through its renderers).

* :func:`gn_table`: the GroupNorm ablation: a row per GroupNorm scheme (``strategy.mode``): LPIPS against the
  single-device output (Orig), latency, speedup.
* :func:`warmup_table`: the warm-up ablation: a row per number of synchronous warm-up steps
  (``strategy.warmup_steps``): LPIPS (Orig), latency, speedup.

Both start with the Original's latency where the jobs timed the single-device pipeline themselves
(``baseline_latency``, with ``metrics.compare_to_original``), as the paper quotes it next to the warm-up
ablation. Rows follow :func:`analysis.paper.prepare` (ok jobs, the last record of a setting, extra varying
configuration keys as columns); a stand-in LPIPS backbone is marked with a dagger and a note.
"""

from __future__ import annotations

import pandas as pd

from analysis.frame import short_name
from analysis.paper import (
    IN_JOB_NOTE,
    STANDIN_NOTE,
    PaperTable,
    cell,
    fmt_sig,
    latency_note,
    metric_cell,
    prepare,
    speedup_cell,
)

__all__ = ["gn_table", "warmup_table"]

WARMUP = "config.strategy.warmup_steps"


def gn_table(df: pd.DataFrame) -> PaperTable:
    """The GroupNorm ablation: a row per ``strategy.mode`` (devices, GroupNorm, LPIPS (Orig), latency,
    speedup)."""
    return _ablation(df, "mode", "GroupNorm", "GroupNorm ablation: quality and latency per GroupNorm scheme")


def warmup_table(df: pd.DataFrame) -> PaperTable:
    """The warm-up ablation: a row per ``strategy.warmup_steps`` (devices, warm-up steps, LPIPS (Orig),
    latency, speedup)."""
    return _ablation(df, WARMUP, "warm-up steps", "Warm-up ablation: quality and latency per warm-up steps")


def _ablation(df: pd.DataFrame, key: str, header: str, title: str) -> PaperTable:
    """Rows of ``key``'s values (a short column or a flattened config key), after each setting's Original; a
    row without the key (another strategy) shows its method instead."""
    ok, extra = prepare(df, ["world_size", key])
    rows, notes = [], {latency_note(ok)}
    for values, group in ok.groupby(extra, sort=False, dropna=False) if extra else [((), ok)]:
        setting = {short_name(c): cell(v) for c, v in zip(extra, values)}
        rows += _original(group, setting, header)
        for _, r in group.iterrows():
            lpips, standin = metric_cell(r, "lpips_vs_orig")
            speedup, in_job = speedup_cell(r)
            notes |= ({STANDIN_NOTE} if standin else set()) | ({IN_JOB_NOTE} if in_job else set())
            value = cell(r.get(key))
            rows.append({**setting,
                "devices": cell(r["world_size"]), header: r["method"] if value == "-" else value,
                "LPIPS (Orig)": lpips, "latency": fmt_sig(r["latency_s"], 3, " s"), "speedup": speedup,
            })  # fmt: skip
    return PaperTable(title, pd.DataFrame(rows), sorted(notes))


def _original(group: pd.DataFrame, setting: dict[str, str], header: str) -> list[dict[str, str]]:
    """The single-device latency the jobs of a setting measured themselves (``baseline_latency``), by their
    headline statistic, averaged over the jobs (each timed the same stock pipeline); none if no job did."""
    if "latency.statistic" not in group.columns:
        return []
    base = group.apply(lambda r: r.get(f"baseline_latency.{r['latency.statistic']}"), axis=1)
    base = pd.to_numeric(base, errors="coerce").dropna()
    if base.empty:
        return []
    return [{**setting,
        "devices": "1", header: f"Original (in-job, mean of {len(base)})", "LPIPS (Orig)": "-",
        "latency": fmt_sig(base.mean(), 3, " s"), "speedup": "-",
    }]  # fmt: skip
