"""What one job does on a rank, call by call (in this process, world_size=1, tiny model at 64 px).

The pipeline calls are observed by wrapping ``distri.generate.generate``: timed calls carry no per-step
callback (no synchronisation inside a timed call), the per-step profile is one separate call after them,
and no image a call returns is still alive when the next call starts (images are streamed, not kept).
"""

from __future__ import annotations

import gc
import json
import re
import tempfile
import weakref
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import distri.generate
from distri.config import ConfigError, register_configs, validate
from distri.devices import resolve_runtime
from distri.job.execute import execute
from distri.launch import WorkerEnv
from distri.metrics.latency import StepTimer
from distri.worker.job import run_job

CONF = str(Path(__file__).resolve().parents[2] / "conf")
SMALL = [
    "model=tiny_sdxl",
    "height=64",
    "width=64",
    "sampler.num_inference_steps=2",
    "logger=none",
    "world_size=1",
]


def config(*overrides: str) -> dict:
    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        d = OmegaConf.to_container(compose("config", overrides=[*SMALL, *overrides]), resolve=True)
    validate(d)
    return resolve_runtime(d)  # what the workers receive: device and dtype resolved


class Calls:
    """Wraps generate: which callback each call got, and how many earlier images were still alive."""

    def __init__(self, monkeypatch) -> None:
        self.callbacks: list[object] = []
        self.alive_at_call: list[int] = []
        self._refs: list[weakref.ref] = []
        real = distri.generate.generate

        def generate(*args, callback=None, **kwargs):
            gc.collect(0)
            self.alive_at_call.append(sum(r() is not None for r in self._refs))
            self.callbacks.append(callback)
            img = real(*args, callback=callback, **kwargs)
            self._refs.append(weakref.ref(img))
            return img

        monkeypatch.setattr(distri.generate, "generate", generate)

    def kinds(self) -> str:
        return "".join("P" if isinstance(c, StepTimer) else "." if c is None else "?" for c in self.callbacks)


def run(cfg: dict, tmp_path: Path) -> dict:
    env = WorkerEnv(0, 1, torch.device("cpu"), "none")
    cfg["metrics"]["originals_dir"] = tempfile.mkdtemp()  # a cache per test: each makes its own originals
    rec = run_job(
        env, resolve_runtime(cfg), str(tmp_path)
    )  # as execute() hands it: device and dtype resolved
    json.dumps(rec, allow_nan=False)
    return rec


@pytest.mark.slow
def test_timed_calls_are_only_timed_and_images_stream(monkeypatch, tmp_path):
    calls = Calls(monkeypatch)
    cfg = config(
        "strategy=naive_patch", "prompts.limit=5", "runner.warmup_runs=1", "runner.timed_runs=3",
        "runner.trim=0.67", "runner.statistic=trimmed_mean",
    )  # fmt: skip
    rec = run(cfg, tmp_path)
    # parallel: 1 warm-up + 3 timed, 1 profiled, 5 images; single device: the same, then 5 references
    assert calls.kinds() == "...." + "P" + "....." + "...." + "P" + "....."
    assert max(calls.alive_at_call) <= 1, calls.alive_at_call  # nothing accumulates per prompt
    for lat in (rec["latency"], rec["baseline_latency"]):
        assert len(lat["samples_s"]) == 3 and lat["n_trimmed_each_side"] == 1
        assert lat["statistic"] == "trimmed_mean_s" and len(lat["per_step_s"]) == 2
        assert "separate untimed call" in lat["per_step_method"]
        assert "device synchronised before and after each run only" in lat["method"]
        assert f"{torch.get_num_threads()} CPU thread(s) per rank" in lat["method"]  # this process runs it
    assert "on every rank at once" in rec["baseline_latency"]["method"]
    assert rec["speedup_statistic"] == "trimmed_mean_s"
    assert rec["speedup"] == pytest.approx(
        rec["baseline_latency"]["trimmed_mean_s"] / rec["latency"]["trimmed_mean_s"]
    )
    # naive patch on one rank is the stock UNet: every PNG equals its reference
    m = rec["metrics"]
    assert m["psnr_vs_orig"] is None and m["n_images_psnr_vs_orig"] == m["psnr_vs_orig_n_identical"] == 5
    assert [Path(p).name for p in rec["images"]] == [f"{i:04d}.png" for i in range(5)]
    # the originals, linked from the cache beside the images
    assert [Path(p).parent.name for p in rec["reference_images"]] == ["reference"] * 5
    assert rec["originals"]["generated"] + rec["originals"]["reused"] == 5
    assert rec["comm"]["sync_steps"] is None and rec["threads_per_rank"] == torch.get_num_threads()


@pytest.mark.slow
def test_without_saved_images_the_comparison_still_reads_pngs_then_removes_them(monkeypatch, tmp_path):
    calls = Calls(monkeypatch)
    cfg = config(
        "strategy=naive_patch", "prompts.limit=2", "runner.warmup_runs=0", "runner.timed_runs=1",
        "runner.save_images=false", "runner.statistic=median",
    )  # fmt: skip
    rec = run(cfg, tmp_path)
    assert calls.kinds() == ".P.." + ".P.."
    assert rec["images"] == [] and rec["comparison_grid"] is None
    assert not list(tmp_path.rglob("*.png"))  # the originals stay in the cache, outside the job folder
    assert rec["metrics"]["n_images_psnr_vs_orig"] == 2 and rec["speedup_statistic"] == "median_s"


def test_single_device_job_has_no_baseline_and_counts_sync_steps(monkeypatch, tmp_path):
    calls = Calls(monkeypatch)
    cfg = config("strategy=none", "prompts.limit=1", "runner.warmup_runs=0", "runner.timed_runs=1")
    rec = run(cfg, tmp_path)
    assert calls.kinds() == ".P."
    assert rec["baseline_latency"] is None and rec["speedup"] is None
    # no original to compare with: only the prompt-based CLIP score, the others skipped with the reason
    assert "clip_score" in rec["metrics"] and "psnr_vs_orig" in rec["metrics"]["skipped"]
    assert len(rec["images"]) == 1 and Path(rec["images"][0]).is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("runner.statistic=p90", "unknown runner.statistic 'p90'; valid: trimmed_mean, median, mean"),
        ("runner.cpu_threads_per_rank=0", "runner.cpu_threads_per_rank must be >= 1"),
    ],
)
def test_bad_runner_settings_are_refused_before_any_worker(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(override)


def test_execute_refuses_a_malformed_fault_before_any_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTRI_FAULT", "rank=1,at=step,kind=raise")
    rec = execute(config("strategy=naive_patch"), str(tmp_path))
    assert rec["status"] == "failed" and "at must be start or step:N" in rec["error"]
    assert rec["env"] == {} and not list(tmp_path.iterdir())
