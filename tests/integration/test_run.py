"""``run.py`` end to end in a temporary folder: result.json, results.jsonl, W&B offline files, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wandb_offline import read_offline_run

ROOT = Path(__file__).resolve().parents[2]
TINY = "model=tiny_sdxl"  # the tests' model (the embedded default, shapes_sdxl, has its own tests)
FAST = [
    TINY,
    "sampler.num_inference_steps=3",
    "height=64",
    "width=64",
    "prompts.limit=1",
    "runner.warmup_runs=0",
    "runner.timed_runs=2",
]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_single_device_run_writes_records_and_wandb(tmp_path):
    out = tmp_path / "job"
    p = run(["strategy=none", "world_size=1", f"hydra.run.dir={out}", *FAST], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rec = json.loads((out / "result.json").read_text())
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == rec
    assert rec["status"] == "ok"
    assert rec["config"]["model"]["name"] == "tiny_sdxl" and rec["config"]["height"] == 64
    for k in ("torch", "diffusers", "device_name", "backend", "git_commit", "hostname"):
        assert k in rec["env"]
    lat = rec["latency"]
    for k in ("mean_s", "std_s", "median_s", "min_s", "max_s", "trimmed_mean_s", "per_step_mean_s", "method"):
        assert k in lat
    assert len(lat["per_step_s"]) == 3 and lat["timed_runs"] == 2
    assert lat["statistic"] == "trimmed_mean_s" and "separate untimed call" in lat["per_step_method"]
    assert rec["threads_per_rank"] == 1 and "1 CPU thread(s) per rank" in lat["method"]  # as in 2-rank jobs
    assert isinstance(rec["metrics"], dict) and isinstance(rec["comm"], dict)
    assert rec["images"] and Path(rec["images"][0]).is_file()
    run_dir = Path(rec["wandb_dir"])
    assert run_dir.is_dir() and list(run_dir.glob("*.wandb"))
    logged = read_offline_run(run_dir)
    assert logged["summary"]["latency/mean_s"] == pytest.approx(lat["mean_s"])
    assert logged["summary"]["status"] == "ok"
    assert "distri:" in p.stdout and "result.json" in p.stdout


def test_the_embedded_default_runs_the_shapes_model_on_its_captions(tmp_path):
    """``python run.py`` with nothing but fewer steps, prompts and calls: the shapes model, its held-out captions,
    2 ranks of displaced patch, its shape metrics against the single device, and the comparison grid."""
    from distri.prompts import load_prompts

    out = tmp_path / "job"
    args = ["sampler.num_inference_steps=6", "prompts.limit=2", "runner.warmup_runs=0", "runner.timed_runs=1"]
    p = run([*args, "logger=none", f"hydra.run.dir={out}"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rec = json.loads((out / "result.json").read_text())
    cfg = rec["config"]
    assert (cfg["model"]["name"], cfg["prompts"]["name"]) == ("shapes_sdxl", "shapes")
    assert (cfg["strategy"]["name"], cfg["world_size"]) == ("displaced_patch", 2)
    assert rec["prompts"] == load_prompts({"name": "shapes", "limit": 2})
    assert cfg["height"] == cfg["width"] == 128
    for k in ("shape_accuracy", "shape_agreement_vs_orig", "lpips_vs_orig", "psnr_vs_orig"):
        assert 0 <= rec["metrics"][k] < float("inf"), k
    assert Path(rec["comparison_grid"]).is_file()
    assert "shape accuracy" in p.stdout and "shapes_sdxl 128x128" in p.stdout


@pytest.mark.slow  # 27 s on 2 cores
def test_sweep_of_patch_strategies_with_failures_kept(tmp_path):
    """A 2-rank multirun: displaced patch compared with the single device, plus a job that fails (missing
    weights of the real SDXL) whose failure is recorded without losing the finished job's row."""
    sweep = tmp_path / "sweep"
    p = run(
        ["-m", "model=tiny_sdxl,sdxl", "strategy=displaced_patch", "strategy.warmup_steps=1", "world_size=2", "logger=none",
         f"hydra.sweep.dir={sweep}", *[a for a in FAST if a != TINY]],
        tmp_path,
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    rows = [json.loads(x) for x in (sweep / "results.jsonl").read_text().splitlines()]
    assert [r["config"]["model"]["name"] for r in rows] == ["tiny_sdxl", "sdxl"]
    ok, bad = rows
    assert ok["status"] == "ok" and ok["speedup"] > 0 and ok["speedup_statistic"] == "trimmed_mean_s"
    assert ok["speedup"] == ok["baseline_latency"]["trimmed_mean_s"] / ok["latency"]["trimmed_mean_s"]
    assert ok["threads_per_rank"] == 1 and "on every rank at once" in ok["baseline_latency"]["method"]
    assert ok["comm"]["sync_steps"] == 2 and ok["comm"]["steps_averaged"] == 1  # warm-up 1 + step 0
    assert ok["metrics"]["max_abs_err_vs_orig"] >= 0 and "psnr_vs_orig" in ok["metrics"]
    assert ok["comm"]["bytes_per_step"] > 0 and "conv_halo" in ok["comm"]["by_kind"]
    assert bad["status"] == "failed" and "stabilityai/stable-diffusion-xl-base-1.0" in bad["error"]
    assert not list(sweep.rglob("wandb"))


def test_bad_config_fails_before_any_worker(tmp_path):
    p = run(["sampler.guidance_scale=-1", f"hydra.run.dir={tmp_path / 'bad'}", *FAST], tmp_path)
    assert p.returncode == 1
    assert "sampler.guidance_scale must be >= 0, got -1" in p.stderr
    rec = json.loads((tmp_path / "bad" / "result.json").read_text())
    assert rec["status"] == "failed" and "env" in rec
    assert "guidance_scale must be >= 0, got -1" in rec["error"]  # the reason, not only "invalid config"
    assert rec["output_dir"] == str(tmp_path / "bad")


def test_a_combination_that_cannot_run_is_skipped_not_failed(tmp_path):
    p = run(["strategy=naive_patch", "world_size=3", f"hydra.run.dir={tmp_path / 'job'}", *FAST], tmp_path)
    assert p.returncode == 0, p.stderr  # not a failure: the strategy cannot split 64 px over 3 ranks
    assert "skipped: cannot run this combination" in p.stderr and "distri: starting" not in p.stderr
    rec = json.loads((tmp_path / "job" / "result.json").read_text())
    assert rec["status"] == "skipped" and "world sizes that work at 64 px: [1, 2]" in rec["error"]
