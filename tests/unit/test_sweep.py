"""The pieces of a sweep that need no worker: the configuration hash a sweep resumes by, skipped versus failed
at validation, the last record of each job, the end-of-sweep table, the progress lines, the W&B run's name,
tags and per-step history (read back with tests/wandb_offline.py)."""

from __future__ import annotations

import io
import json

import pytest

from analysis.load import load_results
from distri.config import ConfigError, Infeasible, validate
from distri.job.execute import already_done, runtime_config
from distri.job.progress import ProgressDisplay
from distri.job.record import config_hash, failed_record
from distri.job.results import latest_per_job, records_of
from distri.job.summary import sweep_table
from distri.job.wandb_logger import RunLogger, run_identity, scalar_metrics, step_rows
from distri.worker.env import Report
from tests.wandb_offline import read_offline_run

# ------------------------------------------------------------------------------------------ config hash


def test_config_hash_ignores_how_a_job_is_run_but_not_what_it_measures(cfg_of):
    d = cfg_of("strategy=naive_patch", "world_size=2")
    reordered = dict(reversed(list(d.items())))
    assert config_hash(d) == config_hash(reordered) and len(config_hash(d)) == 16
    for key, value in (("force", True), ("logger", {"name": "none"})):
        assert config_hash({**d, key: value}) == config_hash(d), key
    assert config_hash({**d, "runner": {**d["runner"], "timeout_s": 5.0}}) == config_hash(d)
    for key, value in (("world_size", 4), ("seed", 1), ("height", 512)):
        assert config_hash({**d, key: value}) != config_hash(d), key
    assert config_hash({**d, "sampler": {**d["sampler"], "name": "euler"}}) != config_hash(d)


def test_a_job_with_an_ok_record_is_done_unless_forced(cfg_of, tmp_path):
    d = cfg_of("strategy=naive_patch", "world_size=2")
    assert not already_done(d, str(tmp_path))  # no results.jsonl yet
    digest = config_hash(runtime_config(d))  # as the record's: device and dtype resolved
    assert runtime_config(d)["device"] in ("cpu", "cuda") and config_hash(d) != digest
    (tmp_path / "results.jsonl").write_text(json.dumps({"status": "failed", "config_hash": digest}) + "\n")
    assert not already_done(d, str(tmp_path))  # a failed record: run it again
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write(json.dumps({"status": "ok", "config_hash": digest}) + "\n")
    assert already_done(d, str(tmp_path)) and already_done({**d, "logger": {"name": "none"}}, str(tmp_path))
    assert not already_done({**d, "force": True}, str(tmp_path))
    assert not already_done({**d, "seed": 1}, str(tmp_path))


# ------------------------------------------------------------------------------- skipped versus failed


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            ["strategy=naive_patch", "world_size=3", "height=64", "width=64"],
            "3 patches do not divide the latent",
        ),
        (["model=tiny_sdxl", "strategy=tensor", "world_size=9"], "attention heads = 8"),  # tiny UNet: 8 heads
        (["strategy=displaced_patch", "strategy.cfg_split=true", "world_size=3"], "cfg_split needs an even"),
        (["strategy=none", "world_size=2"], "strategy=none runs the whole UNet on one rank"),
    ],
)
def test_a_combination_that_cannot_run_is_infeasible(cfg_of, overrides, words):
    with pytest.raises(Infeasible) as e:
        validate(cfg_of(*overrides))
    assert words in str(e.value)
    rec = failed_record(cfg_of(*overrides), e.value)
    assert rec["status"] == "skipped" and words in rec["error"] and rec["traceback"] is None


@pytest.mark.parametrize(
    "overrides",
    [
        ["sampler.name=heun"],  # a typo
        ["strategy=naive_patch", "world_size=3", "height=64", "width=64", "sampler.num_inference_steps=0"],
    ],  # a mistake beside a misfit: the mistake wins, the job fails
)
def test_a_mistake_is_not_infeasible(cfg_of, overrides):
    with pytest.raises(ConfigError) as e:
        validate(cfg_of(*overrides))
    assert not isinstance(e.value, Infeasible)
    assert failed_record(cfg_of(*overrides), e.value)["status"] == "failed"


# ------------------------------------------------------------------------------------- the last records


def _rec(status: str, digest: str | None, **kw) -> dict:
    return {"status": status, "config_hash": digest, **kw}


def test_latest_per_job_and_analysis_count_a_job_once(tmp_path):
    recs = [_rec("failed", "a", n=0), _rec("ok", "b", n=1), _rec("ok", "a", n=2), _rec("ok", None, n=3),
            _rec("ok", None, n=4)]  # fmt: skip
    assert [r["n"] for r in latest_per_job(recs)] == [1, 2, 3, 4]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [r["n"] for r in load_results(tmp_path)] == [1, 2, 3, 4]
    assert [r["n"] for r in records_of(tmp_path, "a")] == [0, 2]
    assert records_of(tmp_path / "nowhere", "a") == []


# ------------------------------------------------------------------------------------ the sweep table


def _job(n: int, cfg_split: bool, sampler: str, status: str = "ok", **kw) -> dict:
    config = {
        "model": {"name": "tiny_sdxl", "_target_": "x"},
        "strategy": {"_target_": "distri.parallel.displaced_patch.DisplacedPatch", "name": "displaced_patch",
                     "cfg_split": cfg_split},
        "sampler": {"name": sampler, "num_inference_steps": 2},
        "world_size": 2, "metrics": {"compute": ["psnr", "lpips"]},
    }  # fmt: skip
    rec = {"status": status, "config": config, "output_dir": f"/sweep/{n}", "config_hash": str(n)}
    rec.update(kw)
    return rec


def test_sweep_table_shows_every_key_that_varies_and_each_reason():
    lat = {"trimmed_mean_s": 0.5, "mean_s": 0.7, "statistic": "trimmed_mean_s"}
    records = [
        _job(1, False, "euler", latency=lat, speedup=1.5, metrics={"psnr_vs_orig": 30.0}),
        _job(0, False, "ddim", latency=lat, comm={"bytes_per_step": 2500.0}),
        _job(2, True, "ddim", "failed", error="rank 1: FaultInjected: boom at step:1"),
        _job(3, True, "euler", "skipped", error="Infeasible: 3 patches do not divide the latent height 8"),
    ]
    lines = sweep_table(records).splitlines()
    head = lines[0].split()
    assert head[:3] == ["job", "strategy.cfg_split", "sampler.name"]  # the swept keys, nothing constant
    assert "status" in head and "speedup" in head and "PSNR" in head and "strategy._target_" not in head
    rows = [line.split() for line in lines[1:5]]
    assert [r[:4] for r in rows] == [
        ["0", "False", "ddim", "ok"],
        ["1", "False", "euler", "ok"],
        ["2", "True", "ddim", "failed"],
        ["3", "True", "euler", "skipped"],
    ]  # in job order, however the lines were appended
    assert rows[1][4:7] == ["0.500", "1.50", "30.00"] and rows[0][-2:] == ["2.5", "kB"]
    assert lines[5:] == [
        "2: failed: rank 1: FaultInjected: boom at step:1",
        "3: skipped: Infeasible: 3 patches do not divide the latent height 8",
    ]


def test_sweep_table_shows_the_shape_metrics_where_a_record_has_them():
    plain = sweep_table([_job(0, False, "ddim", metrics={"psnr_vs_orig": 30.0})]).splitlines()[0]
    assert "shape" not in plain  # no shapes model in the sweep: no empty columns
    shapes = {"shape_accuracy": 0.8333, "shape_agreement_vs_orig": 0.9375}
    records = [
        _job(0, False, "ddim", metrics=shapes, comm={"bytes_per_step": 2500.0}),
        _job(1, True, "ddim", "skipped", error="Infeasible"),
    ]
    lines = sweep_table(records).splitlines()
    assert lines[0].endswith("FID shape acc. shape agr. bytes/step")
    assert lines[1].split()[-4:] == ["0.833", "0.938", "2.5", "kB"] and lines[2].split()[-3:] == ["-"] * 3


def test_sweep_table_leaves_out_keys_that_split_rows_like_an_earlier_one():
    records = [_job(0, False, "ddim"), _job(1, True, "euler")]  # cfg_split and sampler always go together
    head = sweep_table(records).splitlines()[0].split()
    assert head[:2] == ["job", "strategy.cfg_split"] and "sampler.name" not in head


# ------------------------------------------------------------------------------------ progress output


def test_progress_lines_without_a_terminal():
    out = io.StringIO()
    show = ProgressDisplay(out)  # a StringIO is no terminal: lines, no bar
    show(0, "loading the pipeline")
    show(1, Report("timed run", 1, 2))  # other ranks are not shown
    for i in (1, 2):
        for step in (1, 2):
            show(0, Report("timed run", i, 2, step=step, steps=2))
    show(0, Report("image quality metrics (rank 0)", note="10 s"))
    show(0, Report("image quality metrics (rank 0)", note="20 s"))
    show.close()
    # a repeated phase's next count waits QUIET_S (10 s) for its own line: "timed run 2/2" is not shown
    assert out.getvalue().splitlines() == [
        "distri: loading the pipeline",
        "distri: timed run 1/2",
        "distri: image quality metrics (rank 0) (10 s)",
    ]


def test_progress_bar_counts_the_steps():
    out = io.StringIO()
    show = ProgressDisplay(out, bar=True)
    for step in (1, 2, 3):
        show(0, Report("timed run", 1, 5, step=step, steps=3))
    assert show._bar.n == 3 and show._bar.total == 3
    show(0, Report("timed run", 2, 5, step=1, steps=3))
    assert show._bar.n == 1 and "timed run 2/5" in show._bar.desc
    show.close()
    assert out.getvalue().startswith("distri: timed run 1/5\n")


# ---------------------------------------------------------------------------------------------- W&B


def _record_with_steps() -> dict:
    per_step = {
        str(i): {"conv_halo": {"calls": 4, "elements": 10, "bytes": 100.0 * (i + 1), "wait_s": 0.01},
                 "attn_kv": {"calls": 2, "elements": 5, "bytes": 50.0, "wait_s": 0.02}}
        for i in range(3)
    }  # fmt: skip
    config = {
        "model": {"name": "tiny_sdxl"}, "world_size": 2,
        "strategy": {"name": "displaced_patch", "mode": "corrected_async_gn", "cfg_split": False},
    }  # fmt: skip
    return {
        "status": "ok", "config": config,
        "latency": {"mean_s": 1.0, "per_step_s": [0.3, 0.2, 0.25], "statistic": "mean_s"},
        "baseline_latency": {"per_step_s": [0.5, 0.4, 0.45]},
        "comm": {"bytes_per_step": 175.0, "per_step": per_step}, "metrics": {}, "images": [],
    }  # fmt: skip


def test_wandb_run_is_named_and_tagged_and_steps_are_history(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    rec = _record_with_steps()
    name, tags = run_identity(rec["config"], "sweep-3")
    assert name == "tiny_sdxl displaced_patch/corrected_async_gn x2 (sweep-3)"
    assert tags == ["model:tiny_sdxl", "strategy:displaced_patch", "mode:corrected_async_gn", "world_size:2"]
    assert set(scalar_metrics(rec)) == {"latency/mean_s", "comm/bytes_per_step"}  # no comm/per_step/...
    assert step_rows(rec)[1] == {
        "denoising_step": 1, "step/latency_s": 0.2, "step/baseline_latency_s": 0.4,
        "step/comm_bytes": 250.0, "step/comm_wait_s": 0.03,
        "step/comm_bytes/conv_halo": 200.0, "step/comm_bytes/attn_kv": 50.0,
    }  # fmt: skip

    logger = RunLogger({"name": "wandb", "dir": str(tmp_path), "tags": tags}, run_name=name, group="sweep")
    logger.log_result(rec)
    run = read_offline_run(logger.finish())
    assert (run["name"], run["tags"], run["group"]) == (name, tags, "sweep")
    steps = [h for h in run["history"] if "denoising_step" in h]
    assert [h["denoising_step"] for h in steps] == [0, 1, 2]
    assert [h["step/latency_s"] for h in steps] == [0.3, 0.2, 0.25]
    assert [h["step/comm_bytes"] for h in steps] == [150.0, 250.0, 350.0]
    summary = run["summary"]
    assert not [k for k in summary if k.startswith(("step/", "comm/per_step"))]  # no scalar per step
    assert (
        "per_step" not in summary["record"]["comm"] and summary["record"]["comm"]["bytes_per_step"] == 175.0
    )


@pytest.mark.parametrize(
    "params, task",
    [
        ({}, ["world_size=1,2", "strategy=naive_patch,displaced_patch", "seed=3"]),
        ({"world_size": "1,2,4"}, ["height=64,128", "world_size=2,4"]),  # the command line replaces params
        ({}, ["sampler.steps=range(2,10,3)", "+x=choice(a,b,c)", "height=64"]),
        ({}, []),
    ],
)
def test_count_jobs_is_the_basic_sweepers_count(params, task):
    """The ``job k/N`` total, against Hydra's own basic sweeper splitting the same overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from hydra_plugins.distri_callbacks import BASIC_SWEEPER, count_jobs

    config = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": BASIC_SWEEPER, "params": params}, "overrides": {"task": task}}}
    )
    parsed = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *task])
    assert count_jobs(config) == len(BasicSweeper.split_arguments(parsed, None)[0])
    config.hydra.sweeper._target_ = "some.other.Sweeper"
    assert count_jobs(config) is None


def test_count_jobs_is_unknown_for_a_sweep_the_basic_sweeper_refuses():
    from omegaconf import OmegaConf

    from hydra_plugins.distri_callbacks import BASIC_SWEEPER, count_jobs

    task = ["world_size=1,2", "+lr=interval(0,1)"]
    config = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": BASIC_SWEEPER}, "overrides": {"task": task}}}
    )
    assert count_jobs(config) is None
