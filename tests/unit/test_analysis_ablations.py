"""Figure 6's table and the GroupNorm and warm-up ablation tables on hand-written records with the paper's
numbers (shared/reference/distrifusion.md), so the expected cells are the paper's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import tables
from analysis.ablations import gn_table, warmup_table
from analysis.frame import derive
from analysis.load import to_dataframe
from analysis.paper import STANDIN_NOTE, fig6, to_latex, to_markdown
from tests.unit.test_analysis import record


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    return derive(to_dataframe(records))


def split(r: dict[str, Any]) -> dict[str, Any]:
    r["config"]["strategy"]["cfg_split"] = True
    return r


def fig6_records() -> list[dict[str, Any]]:
    df = "corrected_async_gn"
    return [
        record("none", 1, 5.02), record("displaced_patch", 2, 3.35, mode=df),
        record("displaced_patch", 4, 2.26, mode=df), record("displaced_patch", 8, 1.77, mode=df),
        split(record("displaced_patch", 8, 1.50, mode=df)),
        record("none", 1, 23.7, height=2048), record("displaced_patch", 2, 13.3, mode=df, height=2048),
        record("displaced_patch", 8, 4.81, mode=df, height=2048),  # no 4-device job at 2048^2
        record("none", 1, 140.0, height=3840),  # only the one-device job at 3840^2
    ]  # fmt: skip


def test_fig6_rows_per_resolution_and_method_columns_per_device_count() -> None:
    t = fig6(frame(fig6_records()))
    assert list(t.frame.columns) == [
        "resolution",
        "method",
        "1 device",
        "2 devices",
        "4 devices",
        "8 devices",
    ]
    assert t.frame.values.tolist() == [  # the paper's Figure 6 speedups: 1.5x, 2.2x, 2.8x; 1.8x, 4.9x
        ["1024^2", "DistriFusion", "5.02 s", "3.35 s (1.5x)", "2.26 s (2.2x)", "1.77 s (2.8x)"],
        ["1024^2", "DistriFusion + CFG split", "5.02 s", "-", "-", "1.50 s (3.3x)"],
        ["2048^2", "DistriFusion", "23.7 s", "13.3 s (1.8x)", "-", "4.81 s (4.9x)"],
        ["3840^2", "Original", "140 s", "-", "-", "-"],
    ]
    assert to_markdown(t).splitlines()[0] == "**Figure 6: latency vs resolution and devices**"


def gn_records() -> list[dict[str, Any]]:
    """8 devices, the paper's LPIPS and latency per scheme; each job timed the single device itself (5.00 to
    5.04 s, mean 5.02 s) and its in-job speedup is 5.02 s / its latency."""
    paper = {"corrected_async_gn": (0.211, 1.77, 5.00), "separate_gn": (0.317, 1.64, 5.04),
             "stale_gn": (0.247, 1.76, 5.02), "sync_gn": (0.207, 1.85, 5.02)}  # fmt: skip
    out = []
    for mode, (lpips, lat, base) in paper.items():
        metrics = {"lpips_vs_orig": lpips, "backbone_lpips_vs_orig": "real"}
        out.append(record("displaced_patch", 8, lat, mode=mode, metrics=metrics, speedup=5.02 / lat,
                          baseline_latency={"trimmed_mean_s": base}))  # fmt: skip
    out[1]["metrics"]["backbone_lpips_vs_orig"] = "stand-in"
    return out


def test_gn_table_in_the_paper_order_with_the_in_job_original() -> None:
    t = gn_table(frame(gn_records()))
    assert list(t.frame.columns) == ["devices", "GroupNorm", "LPIPS (Orig)", "latency", "speedup"]
    assert t.frame.values.tolist() == [
        ["1", "Original (in-job, mean of 4)", "-", "5.02 s", "-"],
        ["8", "corrected_async_gn", "0.211", "1.77 s", "2.8x*"],
        ["8", "separate_gn", "0.317\u2020", "1.64 s", "3.1x*"],
        ["8", "stale_gn", "0.247", "1.76 s", "2.9x*"],
        ["8", "sync_gn", "0.207", "1.85 s", "2.7x*"],
    ]
    assert STANDIN_NOTE in t.notes and any(n.startswith("* no one-device row") for n in t.notes)
    tex = to_latex(t)
    assert r"separate\_gn & 0.317$^\dagger$ & 1.64 s & 3.1x* \\" in tex


def warmup_records() -> list[dict[str, Any]]:
    """The 10-step DPM-Solver ablation: a one-device job (1.01 s) and 0, 1, 2 warm-up steps on 8 devices."""
    out = [record("none", 1, 1.01, steps=10)]
    for w, (lpips, lat) in enumerate([(0.404, 0.374), (0.288, 0.388), (0.196, 0.400)]):
        r = record("displaced_patch", 8, lat, mode="corrected_async_gn", steps=10,
                   metrics={"lpips_vs_orig": lpips}, baseline_latency={"trimmed_mean_s": 1.01})  # fmt: skip
        r["config"]["strategy"]["warmup_steps"] = w
        out.append(r)
    for r in out:
        r["config"]["sampler"]["name"] = "dpmpp"
    return out[::-1]  # the table sorts them


def test_warmup_table_rows_by_warmup_steps_speedup_against_the_one_device_job() -> None:
    t = warmup_table(frame(warmup_records()))
    assert list(t.frame.columns) == ["devices", "warm-up steps", "LPIPS (Orig)", "latency", "speedup"]
    assert t.frame.values.tolist() == [  # the paper: 0.404 / 0.374 s, 0.288 / 0.388 s, 0.196 / 0.400 s
        ["1", "Original (in-job, mean of 3)", "-", "1.01 s", "-"],
        ["1", "Original", "-", "1.01 s", "-"],
        ["8", "0", "0.404", "0.374 s", "2.7x"],
        ["8", "1", "0.288", "0.388 s", "2.6x"],
        ["8", "2", "0.196", "0.400 s", "2.5x"],
    ]
    assert not any(n.startswith("* no one-device row") for n in t.notes)


def test_a_varying_key_beyond_the_layout_gets_a_column() -> None:
    records = warmup_records()[:-1]  # the 8-device jobs
    records += [json.loads(json.dumps(r)) for r in records]
    for r in records[3:]:
        r["config"]["height"] = r["config"]["width"] = 2048
        r["baseline_latency"] = {"trimmed_mean_s": 4.0}
    t = warmup_table(frame(records))
    assert list(t.frame.columns)[:2] == ["height", "devices"]  # width splits the rows as height: left out
    assert [row[:3] + row[4:5] for row in t.frame.values.tolist()] == [
        ["1024", "1", "Original (in-job, mean of 3)", "1.01 s"],
        *[["1024", "8", str(w), lat] for w, lat in ((0, "0.374 s"), (1, "0.388 s"), (2, "0.400 s"))],
        ["2048", "1", "Original (in-job, mean of 3)", "4.00 s"],
        *[["2048", "8", str(w), lat] for w, lat in ((0, "0.374 s"), (1, "0.388 s"), (2, "0.400 s"))],
    ]


@pytest.mark.parametrize(
    ("which", "title"), [("fig6", "Figure 6"), ("gn", "GroupNorm"), ("warmup", "Warm-up")]
)
def test_tables_command_prints_each(which: str, title: str, tmp_path: Path, capsys) -> None:
    recs = {"fig6": fig6_records, "gn": gn_records, "warmup": warmup_records}[which]()
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert tables.main([str(tmp_path), "--table", which]) == 0
    out = capsys.readouterr().out
    assert f"**{title}" in out and f"{len(recs)} job(s): {len(recs)} ok, 0 failed" in out
