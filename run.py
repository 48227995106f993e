"""distri's Hydra entry point: compose and validate the config, run the job, write and log the result.

    python run.py                                    # the embedded default (conf/config.yaml)
    python run.py strategy=naive_patch world_size=4
    python run.py -m strategy=naive_patch,displaced_patch world_size=1,2,4   # a multirun sweep

Each job writes ``result.json`` into its output folder and appends the same record to ``results.jsonl`` in the
sweep (or run) folder; W&B gets the record too (offline by default). A failing job is recorded with
``status: failed`` and the sweep goes on; the command exits non-zero if any job failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from distri.config import ConfigError, register_configs, validate

register_configs()
FAILED: list[str] = []


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(b) < 1000 or unit == "GB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{b:.0f} B"
        b /= 1000
    return f"{b:.1f} GB"


def summary(rec: dict[str, Any]) -> str:
    """A one-screen summary of a job record."""
    c = rec["config"]
    s, sm = c["strategy"], c["sampler"]
    label = (
        s["name"]
        + (f"/{s['mode']}" if "mode" in s else "")
        + (f"/{s['split_scheme']}" if "split_scheme" in s else "")
    )
    label += (" +cfg_split" if s.get("cfg_split") else "") + f" x{c['world_size']}"
    lines = [
        f"distri: {c['model']['name']} {c['height']}x{c['width']}, {sm['name']} {sm['num_inference_steps']} steps, "
        f"guidance {sm['guidance_scale']}, {len(rec.get('prompts', []))} prompt(s), "
        f"{rec['env'].get('device_name', '?')} ({rec['env'].get('backend')})",
    ]
    if rec["status"] != "ok":
        lines.append(f"FAILED: {rec['error']}")
        tb = (rec.get("traceback") or "").strip().splitlines()
        lines += ["  " + t for t in tb[-15:]]
        return "\n".join(lines)
    lat, base, m, cm = rec["latency"], rec.get("baseline_latency"), rec["metrics"], rec["comm"]
    psnr = m.get("psnr_vs_orig")
    psnr_s = "-" if psnr is None else (psnr if isinstance(psnr, str) else f"{psnr:.2f}")
    head = f"  {'run':<44} {'latency (s)':>16} {'speedup':>8} {'PSNR vs orig':>13} {'bytes/step':>11}"
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    if base:
        lines.append(
            f"  {'single device (original)':<44} {base['mean_s']:>9.3f} ±{base['std_s']:.3f} {'1.00x':>8} "
            f"{'-':>13} {'-':>11}"
        )
    sp = rec.get("speedup")
    lines.append(
        f"  {label:<44} {lat['mean_s']:>9.3f} ±{lat['std_s']:.3f} {(f'{sp:.2f}x' if sp else '-'):>8} "
        f"{psnr_s:>13} {_fmt_bytes(cm.get('bytes_per_step')):>11}"
    )
    lines += [
        "",
        f"latency: mean ± std over timed runs; {lat['method']}",
        f"bytes/step: {cm.get('convention', '')}, averaged over {cm.get('steps_averaged')} non-warm-up steps",
    ]
    if "max_abs_err_vs_orig" in m:
        lines.append(
            f"vs original: PSNR {psnr_s} dB (per image, averaged), max abs err {m['max_abs_err_vs_orig']:.4g} "
            f"over {m.get('n_images')} image(s) in [0, 1]"
        )
    if rec.get("images"):
        lines.append(f"images: {Path(rec['images'][0]).parent}")
    return "\n".join(lines)


def _paths() -> tuple[str, str, str]:
    hc = HydraConfig.get()
    job_dir = hc.runtime.output_dir
    if hc.mode == RunMode.MULTIRUN:
        root = hc.sweep.dir
        name = f"{Path(root).name}-{hc.job.num}"
    else:
        root = job_dir
        name = Path(job_dir).name
    return job_dir, str(Path(root).resolve()), name


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from distri.logging import RunLogger, failed_record, write_result

    job_dir, root, name = _paths()
    d = OmegaConf.to_container(cfg, resolve=True)
    try:
        validate(d)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        write_result(failed_record(d, e), job_dir, root)
        FAILED.append(name)
        return
    from distri.runner import execute

    rec = execute(d, str(Path(job_dir).resolve()))
    if rec.get("rank", 0) != 0:
        return
    lg = dict(d["logger"])
    lg["dir"] = lg.get("dir") or job_dir
    logger = RunLogger(lg, run_name=name, group=Path(root).name if root != job_dir else None, config=d)
    logger.log_result(rec, captions=rec.get("prompts"))
    wandb_dir = logger.finish()
    rec["wandb_dir"] = str(wandb_dir) if wandb_dir else None
    write_result(rec, job_dir, root)
    print(summary(rec))
    print(f"result: {Path(job_dir) / 'result.json'} (and a line in {Path(root) / 'results.jsonl'})")
    if wandb_dir:
        print(
            f"W&B ({logger.mode}): {wandb_dir}"
            + (f"  -> upload with: wandb sync {wandb_dir}" if logger.mode == "offline" else "")
        )
    if rec["status"] != "ok":
        FAILED.append(name)


if __name__ == "__main__":
    main()
    if FAILED:
        print(f"{len(FAILED)} job(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)
