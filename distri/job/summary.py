"""The one-screen summary of a job record that ``python run.py`` prints (how every number was measured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distri.units import format_bytes


def _latency_cell(stats: dict[str, Any]) -> str:
    value = stats[stats.get("statistic", "mean_s")]
    return f"{value:>9.3f} [{stats['min_s']:.2f}-{stats['max_s']:.2f}]"


def _comm_line(cm: dict[str, Any], steps: int) -> str:
    text = f"bytes/step: {cm.get('convention', '')}"
    sync = cm.get("sync_steps")
    if sync is not None and sync >= steps:
        return (
            text
            + f"; fully synchronous: all {steps} steps exchange blocking (warm-up or mode covers every step)"
        )
    n = cm.get("steps_averaged")
    if sync:
        return text + f", averaged over the {_steps(n)} after the {_steps(sync)} of synchronous warm-up"
    return text + f", averaged over all {_steps(n)}"


def _steps(n: int | None) -> str:
    return f"{n} step" + ("" if n == 1 else "s")


def _measured_lines(rec: dict[str, Any]) -> list[str]:
    lat, base, c = rec["latency"], rec.get("baseline_latency"), rec["config"]
    stat = lat.get("statistic", "mean_s")
    lines = [
        "",
        f"latency: {stat} of the timed runs [fastest-slowest]; {lat['method']}",
        f"per step: {lat['per_step_mean_s']:.4f} s on average, from {lat['per_step_method']}"
        if lat.get("per_step_mean_s") is not None
        else "per step: not measured",
    ]
    if base:
        lines.append(
            f"speedup: single-device {rec['speedup_statistic']} / parallel {rec['speedup_statistic']}"
        )
    lines.append(_comm_line(rec["comm"], c["sampler"]["num_inference_steps"]))
    return lines


def summary(rec: dict[str, Any]) -> str:
    """A one-screen summary of a job record."""
    from distri.parallel.strategy import strategy_from_config

    c = rec["config"]
    s, sm = c["strategy"], c["sampler"]
    label = strategy_from_config(s).label() + f" x{c['world_size']}"
    lines = [
        f"distri: {c['model']['name']} {c['height']}x{c['width']}, {sm['name']} {sm['num_inference_steps']} steps, "
        f"guidance {sm['guidance_scale']}, {len(rec.get('prompts', []))} prompt(s), "
        f"{rec['env'].get('device_name', '?')} ({rec['env'].get('backend')})",
    ]
    if rec["status"] != "ok":
        lines.append(f"{rec['status'].upper()}: {rec['error']}")
        if rec.get("failed_rank") is not None:  # a rank's traceback; the job layer's own errors say it all
            tb = (rec.get("traceback") or "").strip().splitlines()
            lines += ["  " + t for t in tb[-15:]]
        return "\n".join(lines)
    lat, base, m, cm = rec["latency"], rec.get("baseline_latency"), rec["metrics"], rec["comm"]
    head = (
        f"  {'run':<40} {'latency (s)':>21} {'speedup':>8} {'PSNR':>7} {'LPIPS':>7} {'FID':>8} "
        f"{'CLIP':>6} {'bytes/step':>11}"
    )
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    if base:
        bm = rec.get("baseline_metrics") or {}
        cells = f"{'-':>7} {'-':>7} {'-':>8} {_num(bm.get('clip_score'), '.2f', 6)}"
        lines.append(
            f"  {'single device (original)':<40} {_latency_cell(base)} {'1.00x':>8} {cells} {'-':>11}"
        )
    sp = rec.get("speedup")
    cells = (
        f"{_num(m.get('psnr_vs_orig'), '.2f', 7)} {_num(m.get('lpips_vs_orig'), '.4f', 7)} "
        f"{_num(m.get('fid_vs_orig'), '.3g', 8)} {_num(m.get('clip_score'), '.2f', 6)}"
    )
    lines.append(
        f"  {label:<40} {_latency_cell(lat)} {(f'{sp:.2f}x' if sp else '-'):>8} {cells} "
        f"{format_bytes(cm.get('bytes_per_step')):>11}"
    )
    lines += _measured_lines(rec) + _quality_lines(rec)
    if rec.get("images"):
        lines.append(f"images: {Path(rec['images'][0]).parent}")
    if rec.get("comparison_grid"):
        lines.append(f"comparison grid (original | parallel | difference): {rec['comparison_grid']}")
    return "\n".join(lines)


def _num(v: Any, fmt: str, width: int) -> str:
    return f"{'-' if not isinstance(v, (int, float)) else format(v, fmt):>{width}}"


def _quality_lines(rec: dict[str, Any]) -> list[str]:
    """What the quality columns are, against what, on how many images, and with which backbones."""
    m, bm = rec["metrics"], rec.get("baseline_metrics") or {}
    if not any(k in m for k in ("psnr_vs_orig", "lpips_vs_orig", "fid_vs_orig", "clip_score")):
        return []
    lines = [
        "quality: PSNR, LPIPS and FID against the single-device original (PSNR per image, averaged; "
        f"max abs err {_num(m.get('max_abs_err_vs_orig'), '.4g', 0)} in [0, 1]); CLIP score against the "
        f"prompts; {m.get('n_images_psnr_vs_orig', m.get('n_images_clip_score', '?'))} image(s)"
    ]
    if m.get("psnr_vs_orig_n_identical"):
        lines.append(
            f"  {m['psnr_vs_orig_n_identical']} image(s) bit-identical to the original (left out of PSNR)"
        )
    gt = [f"{k.split('_vs_')[0].upper()} {_num(bm.get(k), '.4g', 0)} / {_num(m.get(k), '.4g', 0)}"
          for k in ("lpips_vs_gt", "fid_vs_gt") if k in m]  # fmt: skip
    if gt:
        lines.append("  vs G.T. (original / parallel): " + ", ".join(gt))
    stand_in = sorted({k.removeprefix("backbone_").split("_vs_")[0].upper()
                       for k, v in m.items() if k.startswith("backbone_") and v == "stand-in"})  # fmt: skip
    if stand_in:
        lines.append(
            f"  {', '.join(stand_in)}: computed with STAND-IN backbones (built locally, not the real "
            "Inception/AlexNet/CLIP): not comparable with published numbers; `python -m distri.weights fetch` "
            "gets the real ones"
        )
    if "shape_accuracy" in m:
        lines.append(
            f"  shape accuracy (captions' attributes found by the {m.get('backbone_shape_accuracy')}), original / "
            f"parallel: {_num(bm.get('shape_accuracy'), '.3f', 0)} / {_num(m['shape_accuracy'], '.3f', 0)}; "
            f"agreement with the original {_num(m.get('shape_agreement_vs_orig'), '.3f', 0)}"
        )
    for metric, why in (m.get("skipped") or {}).items():
        lines.append(f"  {metric}: skipped ({why})")
    for metric, note in (m.get("notes") or {}).items():
        lines.append(f"  {metric}: {note}")
    return lines


_QUALITY_COLUMNS = (
    ("PSNR", "psnr_vs_orig", ".2f"),
    ("LPIPS", "lpips_vs_orig", ".4f"),
    ("FID", "fid_vs_orig", ".3g"),
)
_SHAPE_COLUMNS = (("shape acc.", "shape_accuracy", ".3f"), ("shape agr.", "shape_agreement_vs_orig", ".3f"))


def sweep_table(records: list[dict[str, Any]]) -> str:
    """The table printed at the end of a multirun, from the sweep's records (the last one of each job).

    A row per job: the job's folder name, every configuration key (flattened, ``strategy.mode``) whose value
    varies across the records (a key that splits the rows exactly as an earlier one, like
    ``strategy.split_scheme`` beside ``strategy.name`` in a sweep over strategies, is left out), status,
    headline latency, speedup, PSNR, LPIPS and FID against the single-device original, where a record has them
    (shapes models) the shape accuracy of the parallel images and their agreement with the original's, bytes per
    step. Below it the full reason of each job that is not ``ok`` (failed, skipped, interrupted).
    """
    import pandas as pd

    from distri.job.results import latest_per_job

    records = sorted(latest_per_job(records), key=_job_number)
    if not records:
        return "no records in this sweep"
    config = pd.json_normalize([r.get("config") or {} for r in records], sep=".")
    config = config.apply(lambda col: col.map(lambda v: str(v) if isinstance(v, list | dict) else v))
    names = [Path(r["output_dir"]).name if r.get("output_dir") else "?" for r in records]
    table = pd.concat([pd.DataFrame({"job": names}), config[_varying(config)]], axis=1)
    table["status"] = [r.get("status") for r in records]
    table["latency (s)"] = [_headline(r.get("latency") or {}) for r in records]
    table["speedup"] = [_num(r.get("speedup"), ".2f", 0) for r in records]
    metrics = [r.get("metrics") or {} for r in records]
    shapes = [c for c in _SHAPE_COLUMNS if any(c[1] in m for m in metrics)]  # only where a record has them
    for head, key, fmt in (*_QUALITY_COLUMNS, *shapes):
        table[head] = [_num(m.get(key), fmt, 0) for m in metrics]
    table["bytes/step"] = [format_bytes((r.get("comm") or {}).get("bytes_per_step")) for r in records]
    lines = [table.to_string(index=False, na_rep="-")]
    lines += [f"{name}: {r.get('status')}: {r.get('error')}"
              for name, r in zip(names, records) if r.get("status") != "ok"]  # fmt: skip
    return "\n".join(lines)


def sweep_report(folder: str | Path) -> str | None:
    """:func:`sweep_table` of the sweep folder's ``results.jsonl`` under a heading naming it; None without
    that file. Printed when a multirun ends, and when Ctrl-C or SIGTERM ends one early."""
    from distri.job.results import read_results

    results = Path(folder) / "results.jsonl"
    if not results.is_file():
        return None
    return f"\nsweep {results.parent} ({results}):\n{sweep_table(read_results(results))}"


def _job_number(record: dict[str, Any]) -> int:
    """A multirun job's number (its folder's name), so that the rows of a resumed sweep keep their order."""
    name = Path(record.get("output_dir") or "").name
    return int(name) if name.isdigit() else -1


def _varying(config: Any) -> list[str]:
    """Columns whose values differ between rows, each splitting the rows differently from those before it;
    not Hydra's instantiation keys (``strategy._target_``: the ``name`` beside it says the same)."""
    import pandas as pd

    kept, partitions = [], set()
    for key in config.columns:
        if key.rsplit(".", 1)[-1].startswith("_"):
            continue
        codes = tuple(pd.factorize(config[key], use_na_sentinel=False)[0].tolist())
        if len(set(codes)) > 1 and codes not in partitions:
            kept.append(key)
            partitions.add(codes)
    return kept


def _headline(stats: dict[str, Any]) -> str:
    return _num(stats.get(stats.get("statistic", "mean_s")), ".3f", 0)
