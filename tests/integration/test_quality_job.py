"""Image quality in real jobs: a sweep's second job reuses the first one's originals, every metric is recorded
(stand-in backbones labelled, absent references skipped with the reason), the folder command gives the job's
numbers, and ``metrics.backbones=real`` with a backbone missing fails before any worker starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distri.config import ConfigError
from distri.job.preflight import preflight
from tests.integration.test_run import FAST, ROOT, run

QUALITY = ("psnr_vs_orig", "lpips_vs_orig", "lpips_vs_gt", "fid_vs_orig", "fid_vs_gt", "clip_score")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    fast = [a for a in FAST if not a.startswith("sampler.num_inference_steps")]
    # its own originals cache, empty at the start whatever ran before: the first job makes them, the second reuses
    args = ["-m", "strategy=naive_patch,displaced_patch", "world_size=2", "logger=none", *fast,
            "sampler.num_inference_steps=6",
            "prompts.limit=2", "metrics.backbones=stand-in", f"hydra.sweep.dir={tmp / 'sweep'}",
            f"metrics.originals_dir={tmp / 'originals'}"]  # fmt: skip
    p = run(args, tmp)
    assert p.returncode == 0, p.stdout + p.stderr
    records = [json.loads(x) for x in (tmp / "sweep" / "results.jsonl").read_text().splitlines()]
    return sorted(records, key=lambda r: r["config"]["strategy"]["name"], reverse=True), tmp


@pytest.mark.slow
def test_the_second_job_of_a_sweep_reuses_the_originals(sweep):
    (first, second), _ = sweep
    assert first["config"]["strategy"]["name"] == "naive_patch"
    assert first["originals"]["generated"] == 2 and first["originals"]["reused"] == 0
    assert second["originals"]["generated"] == 0 and second["originals"]["reused"] == 2
    assert first["originals"]["dir"] == second["originals"]["dir"]


@pytest.mark.slow
def test_every_metric_is_recorded_or_skipped_with_its_reason(sweep):
    for rec in sweep[0]:
        m = rec["metrics"]
        for key in QUALITY:
            assert (key in m) != (key in m["skipped"]), key
        assert "G.T." in m["skipped"]["lpips_vs_gt"] and "G.T." in m["skipped"]["fid_vs_gt"]
        for key in ("lpips_vs_orig", "fid_vs_orig", "clip_score"):
            assert isinstance(m[key], float) and m[f"backbone_{key}"] == "stand-in"
        assert isinstance(m["psnr_vs_orig"], float) and m["n_images_psnr_vs_orig"] == 2
        assert os.path.isfile(rec["comparison_grid"])
        assert "clip_score" in rec["baseline_metrics"]


@pytest.mark.slow
def test_the_folder_command_gives_the_jobs_numbers(sweep):
    (_, rec), tmp = sweep
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(rec["prompts"]) + "\n")
    job = rec["output_dir"]
    p = subprocess.run(
        [sys.executable, "-m", "distri.metrics", f"{job}/images", "--ref", f"{job}/reference",
         "--prompts", str(prompts), "--backbones", "stand-in", "--json", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    folder = json.loads(p.stdout)
    for key in ("psnr_vs_orig", "lpips_vs_orig", "fid_vs_orig", "clip_score"):
        assert folder[key] == pytest.approx(rec["metrics"][key], rel=1e-6, abs=1e-9), key


def test_real_backbones_missing_fail_before_any_worker_with_the_fetch_command(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from distri.config import register_configs

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no AlexNet/VGG checkpoint there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(
            compose("config", overrides=["model=tiny_sdxl", "metrics.backbones=real"]), resolve=True
        )
    with pytest.raises(ConfigError, match="distri.weights fetch"):
        preflight(cfg)
