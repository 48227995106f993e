"""analysis/: known values from a small hand-written results.jsonl (derived columns, the paper's tables,
markdown and LaTeX, the Pareto front), plots written as PNG and SVG, predictions, W&B loading."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from analysis import plots, tables
from analysis.frame import method_label, predictions_frame, varying_columns
from analysis.load import load_frame, load_results, load_wandb
from analysis.paper import fmt_sig, table1, table2, to_latex, to_markdown
from analysis.plots import pareto_front, write_plots
from distri.job.results import read_results


def record(strategy: str, ws: int, latency: float, *, mode: str | None = None, steps: int = 50, height: int = 1024,
           metrics: dict | None = None, comm: dict | None = None, **top: Any) -> dict[str, Any]:  # fmt: skip
    """A record as run.py writes it, with only the fields analysis reads. The headline statistic is the
    trimmed mean; ``mean_s`` is set 10% higher so that a wrong pick shows."""
    s = {"_target_": f"distri.parallel.{strategy}.apply", "name": strategy, "cfg_split": False}
    if mode:
        s["mode"] = mode
    return {
        "status": "ok",
        "config": {
            "model": {"name": "sdxl", "id": "stabilityai/sdxl"}, "strategy": s, "world_size": ws,
            "sampler": {"name": "ddim", "num_inference_steps": steps, "guidance_scale": 5.0},
            "height": height, "width": height, "dtype": "float16", "device": "cuda",
            "runner": {"cpu_threads_per_rank": 1},
        },
        "latency": {"statistic": "trimmed_mean_s", "trimmed_mean_s": latency, "mean_s": latency * 1.1,
                    "samples_s": [latency] * 3},
        "comm": comm or {"bytes_per_step": 0.0, "wait_s_per_step": 0.0, "total_wait_s": 0.0},
        "metrics": metrics or {},
        "images": [], "speedup": None, **top,
    }  # fmt: skip


STANDIN = {"backbone_lpips_vs_orig": "stand-in", "backbone_lpips_vs_gt": "stand-in"}


def sweep_records() -> list[dict[str, Any]]:
    return [
        record("none", 1, 5.02, metrics={"psnr_vs_orig": None, "n_identical": 2, "lpips_vs_gt": 0.797, **STANDIN}),
        record("displaced_patch", 2, 3.35, mode="corrected_async_gn",
               metrics={"psnr_vs_orig": 24.6, "lpips_vs_orig": 0.146, "lpips_vs_gt": 0.797, **STANDIN},
               comm={"bytes_per_step": 0.425e9, "wait_s_per_step": 0.01, "total_wait_s": 0.35}),
        record("naive_patch", 2, 2.83, metrics={"psnr_vs_orig": 14.0, "lpips_vs_orig": 0.596},
               comm={"bytes_per_step": 1.6e6, "wait_s_per_step": 0.004}),  # no total: 0.004 x 50 steps
        record("displaced_patch", 2, 2.21, mode="full_sync", metrics={"psnr_vs_orig": "inf", "n_identical": 2},
               comm={"bytes_per_step": 0.42e9, "total_wait_s": 0.5}),
        record("tensor", 8, 3.61, height=2048, comm={"bytes_per_step": 5.33e9, "total_wait_s": 1.0}),
        record("displaced_patch", 8, 0.93, mode="corrected_async_gn", steps=25, speedup=2.7),  # no 1-device row
        {**record("tensor", 4, 1.0), "status": "failed", "error": "boom", "latency": {}},
    ]  # fmt: skip


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sweep"
    d.mkdir()
    with open(d / "results.jsonl", "w") as f:
        for r in sweep_records():
            f.write(json.dumps(r) + "\n")
    return d


def test_derived_columns(sweep_dir: Path) -> None:
    df = load_frame(sweep_dir)
    assert list(df["method"]) == ["Original", "DistriFusion", "Naive patch", "Sync. PP", "Sync. TP", "DistriFusion",
                                  "Sync. TP"]  # fmt: skip
    assert list(df["latency_s"][:4]) == [5.02, 3.35, 2.83, 2.21]  # the named statistic, not mean_s
    sp = df["speedup_vs_1"]
    assert sp[1] == pytest.approx(5.02 / 3.35) and sp[3] == pytest.approx(5.02 / 2.21) and sp[0] == 1.0
    assert math.isnan(sp[4]) and math.isnan(sp[5])  # 2048^2 and 25 steps: other settings, no 1-device row
    assert df["comm_exposed_s"][1] == 0.35 and df["comm_exposed_s"][2] == pytest.approx(0.2)
    assert df["compute_s"][1] == pytest.approx(3.0)
    assert math.isinf(df["metrics.psnr_vs_orig"][3]) and df["resolution"][4] == "2048^2"
    assert len(load_frame(sweep_dir, ok_only=True)) == 6


def test_method_labels() -> None:
    assert method_label("displaced_patch", "no_sync") == "No Comm."
    assert method_label("displaced_patch", "stale_gn") == "DistriFusion (stale GN)"
    assert method_label("tensor", float("nan"), True) == "Sync. TP + CFG split"
    assert method_label("toy", "fast") == "toy (fast)" and method_label("toy") == "toy"


def test_table1_in_the_paper_layout(sweep_dir: Path) -> None:
    t = table1(load_frame(sweep_dir))
    # height and steps vary: height gets a column (steps is already in the layout); model.id follows model.name
    assert list(t.frame.columns) == ["height", "steps", "devices", "method", "PSNR (Orig)", "LPIPS G.T. / Orig",
                                     "FID G.T. / Orig", "MACs (T)", "latency", "speedup"]  # fmt: skip
    rows = t.frame.values.tolist()
    assert rows == [
        ["1024", "50", "1", "Original", "inf", "0.797\u2020 / -", "- / -", "-", "5.02 s", "-"],
        ["1024", "50", "2", "Naive patch", "14.0", "- / 0.596", "- / -", "-", "2.83 s", "1.8x"],
        ["1024", "50", "2", "Sync. PP", "inf", "- / -", "- / -", "-", "2.21 s", "2.3x"],
        [
            "1024",
            "50",
            "2",
            "DistriFusion",
            "24.6",
            "0.797\u2020 / 0.146\u2020",
            "- / -",
            "-",
            "3.35 s",
            "1.5x",
        ],
        ["1024", "25", "8", "DistriFusion", "-", "- / -", "- / -", "-", "0.930 s", "2.7x*"],
        ["2048", "50", "8", "Sync. TP", "-", "- / -", "- / -", "-", "3.61 s", "-"],
    ]
    assert any("stand-in" in n for n in t.notes) and any(n.startswith("* no one-device row") for n in t.notes)
    md = to_markdown(t).splitlines()
    assert md[0] == "**Table 1: quality and latency**"
    assert md[2] == "| height | steps | devices | method | PSNR (Orig) | LPIPS G.T. / Orig | FID G.T. / Orig | MACs (T) " \
                    "| latency | speedup |"  # fmt: skip
    assert md[4] == "| 1024 | 50 | 1 | Original | inf | 0.797\u2020 / - | - / - | - | 5.02 s | - |"


def test_table2_and_predictions(sweep_dir: Path) -> None:
    df = load_frame(sweep_dir)
    pred = predictions_frame([
        {"strategy": "tensor", "world_size": 8, "height": 1024, "width": 1024, "total_s": 3.7},
        {"strategy": "none", "world_size": 1, "height": 2048, "width": 2048, "predicted_s": 23.7},
    ])  # fmt: skip
    t = table2(df[df["steps"] == 50], pred)
    assert list(t.frame.columns) == ["devices", "method", "1024^2", "2048^2"]
    assert t.frame.values.tolist() == [
        ["1", "Original", "5.02 s", "23.7 s (predicted)"],
        ["2", "Naive patch", "0.00160G, 2.83 s", "-"],
        ["2", "Sync. PP", "0.420G, 2.21 s", "-"],
        ["2", "DistriFusion", "0.425G, 3.35 s", "-"],
        ["8", "Sync. TP", "3.70 s (predicted)", "5.33G, 3.61 s"],
    ]
    tex = to_latex(t)
    assert r"\begin{tabular}{llll}" in tex and r"1024\textasciicircum{}2" in tex
    assert r"comm.bytes\_per\_step" in tex and tex.endswith(r"\end{table}")
    assert r"0.797$^\dagger$" in to_latex(table1(df))


def test_fmt_and_varying_columns() -> None:
    assert [fmt_sig(v) for v in (24.0, 4.86, 125, 0.797, 338.4, None, float("nan"), float("inf"))] == [
        "24.0", "4.86", "125", "0.797", "338", "-", "-", "inf"]  # fmt: skip
    assert fmt_sig(1.8, 2, "x") == "1.8x" and fmt_sig(0, 3) == "0"
    df = pd.DataFrame({"config.model.name": ["a", "b", "a"], "config.model.id": ["x", "y", "x"],
                       "config.seed": [0, 0, 0], "config.strategy._target_": ["p", "q", "p"],
                       "config.height": [64, 64, None]})  # fmt: skip
    assert varying_columns(df) == ["config.model.name"]
    df["config.model.resolution"] = [64, 64, 32]  # splits the rows as config.height does
    assert varying_columns(df, exclude=["config.height"]) == ["config.model.name"]


def test_pareto_front_known_points() -> None:
    pts = pd.DataFrame({"x": [1, 2, 3, 4, 2, 5], "y": [0.5, 0.3, 0.4, 0.1, 0.6, float("inf")]})
    front = pareto_front(pts, "x", "y")
    assert front[["x", "y"]].values.tolist() == [[1, 0.5], [2, 0.3], [4, 0.1]]
    up = pareto_front(pts, "x", "y", higher_y_better=True)
    assert up[["x", "y"]].values.tolist() == [[1, 0.5], [2, 0.6]]


def test_plots_written(sweep_dir: Path, tmp_path: Path) -> None:
    df = load_frame(sweep_dir)
    pred = predictions_frame([
        {"strategy": "none", "world_size": 1, "height": 1024, "width": 1024, "total_s": 5.0, "exposed_comm_s": 0.0},
        {"strategy": "displaced_patch", "mode": "corrected_async_gn", "world_size": 2, "height": 1024,
         "width": 1024, "total_s": 3.0, "exposed_comm_s": 0.2},
    ])  # fmt: skip
    paths = write_plots(df, tmp_path / "p", pred)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{n}.{e}" for n in ("speedup", "latency_split", "quality_latency") for e in ("png", "svg")
    )
    for p in paths:
        head = p.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in p.read_bytes()
    fig = plots.plot_speedup(df, pred)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "DistriFusion, predicted" in labels and "Original (steps=50, height=1024), measured" in labels
    assert "DistriFusion (steps=25, height=1024), measured" in labels  # a line per setting
    predicted = next(line for line in fig.axes[0].lines if line.get_label() == "DistriFusion, predicted")
    assert list(predicted.get_ydata()) == [pytest.approx(5.0 / 3.0)]  # Original's predicted 1-device latency
    split = plots.plot_latency_split(df)
    heights = [b.get_height() for b in split.axes[0].patches]
    assert heights[2:4] == [pytest.approx(3.0), pytest.approx(0.35)]  # DistriFusion: compute, measured wait
    with pytest.raises(ValueError, match="no quality metric"):
        plots.plot_quality_latency(df, "bogus")


def test_prediction_objects_and_errors() -> None:
    class Prediction:  # the shape of distri.predict's Prediction
        def to_dict(self) -> dict[str, Any]:
            setting = {"strategy": "displaced_patch", "world_size": 4, "height": 2048, "width": 2048,
                       "params": {"mode": "full_sync"}}  # fmt: skip
            return {"setting": setting, "total_s": 7.6, "compute_s": 6.0, "exposed_comm_s": 0.5}

    p = predictions_frame([Prediction()])
    assert (
        p.loc[0, "method"] == "Sync. PP"
        and p.loc[0, "predicted_s"] == 7.6
        and p.loc[0, "resolution"] == "2048^2"
    )
    with pytest.raises(ValueError, match="'world_size'"):
        predictions_frame([{"strategy": "tensor", "total_s": 1.0}])


def test_commands(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"strategy": "tensor", "world_size": 8, "height": 1024, "width": 1024,
                                "total_s": 3.7}) + "\n")  # fmt: skip
    assert tables.main([str(sweep_dir), "--table", "2", "--predictions", str(pred), "--failures"]) == 0
    out = capsys.readouterr().out
    assert (
        "| 8 | Sync. TP | 3.70 s (predicted) | 5.33G, 3.61 s |" in out and "model" not in out.splitlines()[0]
    )
    assert "7 job(s): 6 ok, 1 failed" in out and "failed: boom" in out
    assert plots.main([str(sweep_dir)]) == 0
    assert (sweep_dir / "plots" / "speedup.svg").is_file()
    assert tables.main([str(tmp_path / "nowhere")]) == 2


def test_reading_skips_corrupt_lines_and_loads_several_sweeps(sweep_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "results.jsonl"
    other.parent.mkdir()
    other.write_text(json.dumps(record("none", 1, 1.0)) + "\n{not json\n\n[1]\n")
    with pytest.warns(UserWarning) as caught:
        assert len(read_results(other)) == 1
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "skipped a line that is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        "skipped a line that is not a JSON object",
    ]
    with pytest.warns(UserWarning):
        recs = load_results(sweep_dir, other.parent)
    assert len(recs) == 8 and recs[-1]["_source"] == str(other)


def test_load_wandb_through_the_public_api_shape() -> None:
    full = record("naive_patch", 2, 2.0)
    runs = [
        SimpleNamespace(summary={"record": full, "status": "ok"}, config={}, path=["me", "proj", "a1"]),
        SimpleNamespace(
            summary={"status": "ok", "_step": 3},
            config={"world_size": 1, "strategy": {"name": "none"}},
            path=["me", "proj", "b2"],
        ),  # fmt: skip
    ]
    calls = []

    class Api:
        def runs(self, path: str, filters: dict | None = None) -> list:
            calls.append((path, filters))
            return runs

    df = load_wandb("me/proj", {"group": "g"}, api=Api())
    assert calls == [("me/proj", {"group": "g"})]
    assert list(df["method"]) == ["Naive patch", "Original"] and list(df["_source"]) == ["wandb:me/proj/a1",
                                                                                          "wandb:me/proj/b2"]  # fmt: skip
    assert df["latency_s"][0] == 2.0 and "_step" not in df.columns
