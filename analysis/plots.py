"""Figures of a sweep, as PNG and SVG: speedup vs device count, latency split, quality vs latency.

Usage::

    python -m analysis.plots SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--metric lpips_vs_orig]
                             [--predictions FILE]

writes ``speedup.{png,svg}``, ``latency_split.{png,svg}`` and ``quality_latency.{png,svg}`` into ``--out``
(default: ``plots/`` in the first sweep folder). Every axis says how its numbers were measured.

* :func:`plot_speedup`: speedup against the one-device row of the same setting per method, measured (solid)
  and, with cost-model predictions (:func:`analysis.frame.predictions_frame`), predicted (dashed).
* :func:`plot_latency_split`: each job's latency as compute + exposed communication. Measured exposed
  communication is the ledger's wait (``comm.total_wait_s``, else ``comm.wait_s_per_step`` x steps), compute
  the rest of the headline latency; with predictions, the predicted split stands next to it (hatched).
* :func:`plot_quality_latency`: a quality metric against latency, with the Pareto front (:func:`pareto_front`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from analysis.frame import QUALITY, predictions_frame, setting_labels

__all__ = ["pareto_front", "plot_latency_split", "plot_quality_latency", "plot_speedup", "write_plots"]


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & df["latency_s"].notna()]


def _speedup_column(df: pd.DataFrame) -> pd.Series:
    """Against the one-device row of the setting; the in-job baseline where the sweep has none."""
    own = df["speedup"] if "speedup" in df.columns else pd.Series(float("nan"), index=df.index)
    return df["speedup_vs_1"].fillna(pd.to_numeric(own, errors="coerce"))


def _predicted_speedup(pred: pd.DataFrame) -> pd.DataFrame:
    """Per method and resolution: the predicted one-device latency (the method's own, else Original's, at the
    same resolution) / the predicted latency; ``label`` names the resolution when the predictions have several."""
    several = pred["resolution"].nunique() > 1
    rows = []
    for (method, res), g in pred.groupby(["method", "resolution"], sort=False, dropna=False):
        singles = pred[(pred["world_size"] == 1) & (pred["resolution"].astype(str) == str(res))]
        base = singles[singles["method"] == method]
        base = base if len(base) else singles[singles["method"] == "Original"]
        if base.empty:
            continue
        label = f"{method} ({res})" if several else method
        for _, r in g.sort_values("world_size").iterrows():
            speedup = float(base["predicted_s"].iloc[0]) / float(r["predicted_s"])
            rows.append({"label": label, "world_size": r["world_size"], "speedup": speedup})
    return pd.DataFrame(rows, columns=["label", "world_size", "speedup"])


def plot_speedup(df: pd.DataFrame, predictions: pd.DataFrame | None = None) -> plt.Figure:
    """Speedup vs device count: a line per method and setting (the configuration keys that vary beyond device
    count and method), measured solid, predicted dashed; linear scaling dotted."""
    ok = _ok(df)
    ok = ok.assign(speedup_plot=_speedup_column(ok), setting=setting_labels(ok))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (method, setting), g in ok.groupby(["method", "setting"], sort=False):
        g = g.dropna(subset=["speedup_plot"]).sort_values("world_size")
        label = f"{method} ({setting})" if setting else method
        ax.plot(g["world_size"], g["speedup_plot"], "o-", label=f"{label}, measured")
    if predictions is not None:
        for label, g in _predicted_speedup(predictions).groupby("label", sort=False):
            ax.plot(g["world_size"], g["speedup"], "s--", alpha=0.7, label=f"{label}, predicted")
    top = max([1, *ok["world_size"].dropna().tolist()])
    ax.plot([1, top], [1, top], ":", color="grey", label="linear")
    ax.set_xlabel("devices (world_size)")
    ax.set_ylabel("speedup vs one device")
    ax.set_title("Speedup: one-device latency / latency (headline statistic of the timed calls)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _bar_label(r: pd.Series) -> str:
    setting = f"\n{r['setting']}" if r["setting"] else ""
    return f"{r['method']}\n{int(r['world_size'])} dev{setting}"


def _match(pred: pd.DataFrame, r: pd.Series) -> pd.Series | None:
    hit = pred[(pred["method"] == r["method"]) & (pred["world_size"] == r["world_size"])]
    if "resolution" in pred.columns and pred["resolution"].notna().any():
        hit = hit[hit["resolution"] == r["resolution"]]
    return None if hit.empty else hit.iloc[-1]


def plot_latency_split(df: pd.DataFrame, predictions: pd.DataFrame | None = None) -> plt.Figure:
    """Stacked bars per job: compute (the headline latency minus exposed communication) and the ledger's
    measured communication wait; with ``predictions``, a hatched bar of the predicted split next to each."""
    ok = _ok(df)
    ok = ok.assign(setting=setting_labels(ok))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(ok) + 2), 4.2))
    width = 0.4 if predictions is not None else 0.7
    for i, (_, r) in enumerate(ok.iterrows()):
        comm = 0.0 if pd.isna(r["comm_exposed_s"]) else max(0.0, min(r["comm_exposed_s"], r["latency_s"]))
        ax.bar(
            i, r["latency_s"] - comm, width, color="tab:blue", label="compute (measured)" if i == 0 else None
        )
        ax.bar(i, comm, width, bottom=r["latency_s"] - comm, color="tab:orange",
               label="exposed communication (measured wait)" if i == 0 else None)  # fmt: skip
        p = _match(predictions, r) if predictions is not None else None
        if p is not None:
            exposed = float(p.get("exposed_comm_s", 0.0) or 0.0)
            ax.bar(i + width, p["predicted_s"] - exposed, width, color="tab:blue", hatch="//", alpha=0.5,
                   label="compute + non-split (predicted)" if i == 0 else None)  # fmt: skip
            ax.bar(i + width, exposed, width, bottom=p["predicted_s"] - exposed, color="tab:orange", hatch="//",
                   alpha=0.5, label="exposed communication (predicted)" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(ok)), [_bar_label(r) for _, r in ok.iterrows()], fontsize=7)
    ax.set_ylabel("latency of one pipeline call (s)")
    ax.set_title(
        "Latency split: communication = ledger wait over all steps; compute = headline latency minus it",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str, higher_y_better: bool = False) -> pd.DataFrame:
    """Rows not dominated in (lower ``x``, better ``y``), sorted by ``x``: no other row is at least as good in
    both and better in one. Rows with a missing or infinite value are left out."""
    pts = points[[x, y]].astype(float)
    finite = pts.apply(lambda c: c.map(math.isfinite)).all(axis=1)
    pts = pts[finite].sort_values([x, y], ascending=[True, not higher_y_better], kind="stable")
    keep, best = [], None
    for idx, (_, yv) in pts.iterrows():
        better = best is None or (yv > best if higher_y_better else yv < best)
        if better:
            keep.append(idx)
            best = yv
    return points.loc[keep]


def default_metric(df: pd.DataFrame) -> str | None:
    """The first quality metric the ok jobs have a finite value of: LPIPS vs Orig, FID vs Orig, PSNR, ..."""
    ok = _ok(df)
    for m in ("lpips_vs_orig", "fid_vs_orig", "psnr_vs_orig", "lpips_vs_gt", "fid_vs_gt", "clip_score"):
        col = f"metrics.{m}"
        if col in ok.columns and ok[col].astype(float).map(math.isfinite).any():
            return m
    return None


def plot_quality_latency(df: pd.DataFrame, metric: str | None = None) -> plt.Figure:
    """``metrics.<metric>`` against latency per job, the Pareto front as a step line. Jobs whose metric is
    missing or infinite (bit-identical images: infinite PSNR) are left out and counted in the title."""
    metric = metric or default_metric(df)
    if metric not in QUALITY:
        raise ValueError(f"no quality metric to plot (got {metric!r}); choose from {sorted(QUALITY)}")
    ok, col, higher = _ok(df), f"metrics.{metric}", QUALITY[metric]
    values = ok[col].astype(float) if col in ok.columns else pd.Series(float("nan"), index=ok.index)
    shown = ok[values.map(math.isfinite)].assign(**{col: values})
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for _, r in shown.iterrows():
        ax.scatter(r["latency_s"], r[col], s=30)
        ax.annotate(f"{r['method']}, {int(r['world_size'])}", (r["latency_s"], r[col]), fontsize=7)
    front = pareto_front(shown, "latency_s", col, higher)
    ax.step(front["latency_s"], front[col], where="post", color="black", lw=1, label="Pareto front")
    standin = (
        f"metrics.backbone_{metric}" in shown.columns
        and (shown[f"metrics.backbone_{metric}"] == "stand-in").any()
    )
    ax.set_xlabel("latency of one pipeline call (s, headline statistic)")
    ax.set_ylabel(
        metric + (" (stand-in backbone)" if standin else "") + (" (higher is better)" if higher else "")
    )
    left = len(ok) - len(shown)
    ax.set_title(f"Quality vs latency ({left} job(s) without a finite {metric} left out)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(
    df: pd.DataFrame,
    out_dir: str | Path,
    predictions: pd.DataFrame | None = None,
    metric: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Draw every figure and write it as each of ``formats`` into ``out_dir``; returns the paths written.
    The quality figure is left out when the jobs have no finite quality metric."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"speedup": plot_speedup(df, predictions), "latency_split": plot_latency_split(df, predictions)}
    if metric or default_metric(df):
        figures["quality_latency"] = plot_quality_latency(df, metric)
    paths = []
    for name, fig in figures.items():
        for fmt in formats:
            paths.append(out / f"{name}.{fmt}")
            fig.savefig(paths[-1], dpi=150)
        plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    from analysis.frame import read_predictions
    from analysis.load import load_frame

    matplotlib.use("Agg")  # files only, never a window (in a notebook the inline backend stays)
    parser = argparse.ArgumentParser(prog="python -m analysis.plots", description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", help="results.jsonl files or sweep directories (searched recursively)"
    )
    parser.add_argument("--out", help="output folder (default: plots/ in the first sweep folder)")
    parser.add_argument(
        "--metric", choices=sorted(QUALITY), help="quality axis (default: the first available)"
    )
    parser.add_argument("--predictions", help="cost-model predictions (CSV, JSON or JSON lines)")
    args = parser.parse_args(argv)
    try:
        df = load_frame(*args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if _ok(df).empty:
        print("no ok job with a latency: nothing to plot", file=sys.stderr)
        return 1
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "plots"
    pred = predictions_frame(read_predictions(args.predictions)) if args.predictions else None
    for p in write_plots(df, out, pred, args.metric):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
