"""run.py's summary says how each number was measured: the named statistic, and fully synchronous runs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from distri.metrics.latency import latency_stats
from tests.integration.test_run import ROOT


@pytest.fixture(scope="module")
def run_script():
    spec = importlib.util.spec_from_file_location("distri_run_script", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def summary(run_script):
    from distri.job.summary import summary as job_summary

    return job_summary


def record(sync_steps, steps_averaged: int, samples: list[float]) -> dict:
    lat = dict(latency_stats(samples, trim=0.4), statistic="trimmed_mean_s", method="M", per_step_mean_s=0.5)
    lat["per_step_method"] = "one separate untimed call"
    base = dict(latency_stats([2.0] * 5, trim=0.4), statistic="trimmed_mean_s", method="B")
    return {
        "status": "ok",
        "config": {
            "model": {"name": "tiny_sdxl"}, "height": 64, "width": 64, "world_size": 2,
            "strategy": {"name": "displaced_patch", "mode": "full_sync"},
            "sampler": {"name": "ddim", "num_inference_steps": 3, "guidance_scale": 5.0},
        },
        "env": {"device_name": "cpu", "backend": "gloo"}, "prompts": ["p"], "latency": lat,
        "baseline_latency": base, "speedup": 2.0, "speedup_statistic": "trimmed_mean_s",
        "metrics": {"psnr_vs_orig": None, "psnr_vs_orig_n_identical": 1, "max_abs_err_vs_orig": 0.0, "n_images_psnr_vs_orig": 1},
        "comm": {"convention": "C", "bytes_per_step": 1e6, "sync_steps": sync_steps, "steps_averaged": steps_averaged},
        "images": [],
    }  # fmt: skip


def test_fully_synchronous_run_is_named_so(summary):
    text = summary(record(3, 3, [1.0] * 5))
    assert "fully synchronous: all 3 steps exchange blocking" in text
    assert "warm-up steps" not in text and "averaged over" not in text


@pytest.mark.parametrize(
    "sync, averaged, says",
    [
        (2, 1, "averaged over the 1 step after the 2 steps of synchronous warm-up"),
        (None, 3, "over all 3 steps"),
    ],
)
def test_steps_averaged_are_named(summary, sync, averaged, says):
    assert says in summary(record(sync, averaged, [1.0] * 5))


def test_latency_column_is_the_named_statistic_not_the_mean(summary):
    text = summary(record(3, 3, [1.0, 1.0, 1.0, 1.0, 9.0]))  # one stalled run: mean 2.6, trimmed mean 1.0
    row = next(line for line in text.splitlines() if "displaced_patch/full_sync x2" in line)
    assert "1.000 [1.00-9.00]" in row and "2.00x" in row
    assert "latency: trimmed_mean_s of the timed runs" in text
    assert "speedup: single-device trimmed_mean_s / parallel trimmed_mean_s" in text


def test_a_finished_record_survives_an_interrupt_while_wandb_starts(run_script, tmp_path, monkeypatch):
    """Ctrl-C during W&B start-up, after the measurement: the record is on disk, and its sweep line too."""
    import distri.job.wandb_logger

    class Interrupting:
        def __init__(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(distri.job.wandb_logger, "RunLogger", Interrupting)
    rec = record(3, 3, [1.0] * 5)
    job, root = tmp_path / "sweep" / "0", tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        run_script._record_and_log(
            rec, {**rec["config"], "logger": {"name": "wandb"}}, str(job), str(root), "s-0"
        )
    on_disk = json.loads((job / "result.json").read_text())
    (line,) = (root / "results.jsonl").read_text().splitlines()
    assert on_disk == json.loads(line) and on_disk["status"] == "ok" and on_disk["speedup"] == 2.0
