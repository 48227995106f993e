"""Unit tests for the job layer's records, results store, environment, W&B offline logging, and the analysis
package."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.load import flatten, load_results, to_dataframe
from analysis.tables import format_table
from analysis.tables import main as tables_main
from distri.job.environment import collect_env
from distri.job.record import RESULT_FIELDS, failed_record, to_jsonable, validate_record
from distri.job.results import read_results, write_result
from distri.job.wandb_logger import RunLogger, scalar_metrics
from tests.wandb_offline import read_offline_run

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_record(**overrides: object) -> dict:
    rec = {
        "status": "ok",
        "error": None,
        "traceback": None,
        "config": {
            "model": {"name": "sdxl"},
            "strategy": {"name": "displaced_patch", "mode": "full_sync"},
            "world_size": 2,
            "height": 1024,
            "sampler": {"num_inference_steps": 50},
        },
        "env": {"torch": torch.__version__, "backend": "gloo"},
        "latency": {"mean_s": 1.25, "std_s": 0.01, "n": 3, "samples_s": [1.2, 1.25, 1.3], "method": "m"},
        "metrics": {"psnr_vs_orig": 31.5, "n_images": 2},
        "comm": {"bytes_per_step": 3 * 2**20, "by_kind": {"conv_halo": 1024.0}},
        "images": ["img0.png"],
        "speedup": 1.8,
    }
    rec.update(overrides)
    return rec


# ------------------------------------------------------------------------------------------ JSON / store


def test_to_jsonable_makes_strict_json(tmp_path: Path) -> None:
    obj = {
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": -math.inf,
        "np_f": np.float32(1.5),
        "np_i": np.int64(3),
        "np_arr": np.array([[1, 2]]),
        "t0": torch.tensor(2.5),
        "t": torch.tensor([1.0, float("inf")]),
        "path": tmp_path / "x.png",
        "tuple": (1, 2),
        "dtype": torch.float16,
        1: "int key",
    }
    out = to_jsonable(obj)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == {
        "nan": None,
        "inf": "inf",
        "ninf": "-inf",
        "np_f": 1.5,
        "np_i": 3,
        "np_arr": [[1, 2]],
        "t0": 2.5,
        "t": [1.0, "inf"],
        "path": str(tmp_path / "x.png"),
        "tuple": [1, 2],
        "dtype": "torch.float16",
        "1": "int key",
    }
    assert float(out["inf"]) == math.inf


def test_write_result_twice(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    rec1 = make_record(metrics={"psnr_vs_orig": float("inf"), "x": np.float64(0.5)})
    rec2 = make_record(status="failed", error="RuntimeError: boom", speedup=None)
    write_result(rec1, sweep / "job0", sweep)
    write_result(rec2, sweep / "job1", sweep)

    lines = (sweep / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    parsed = [json.loads(line) for line in lines]
    assert parsed[0]["metrics"] == {"psnr_vs_orig": "inf", "x": 0.5}
    assert parsed[1]["status"] == "failed"

    on_disk = json.loads((sweep / "job0" / "result.json").read_text())
    assert on_disk == parsed[0]
    assert (sweep / "job0" / "result.json").read_text().startswith('{\n  "')  # indent 2
    assert "Infinity" not in (sweep / "results.jsonl").read_text()
    assert read_results(sweep / "results.jsonl") == parsed
    assert read_results(sweep) == parsed  # a directory works too
    assert not list((sweep / "job0").glob(".*.tmp"))


def test_read_results_skips_blank_and_corrupt_lines(tmp_path: Path) -> None:
    p = tmp_path / "results.jsonl"
    p.write_text('{"a": 1}\n\n   \n{"a": 2\n{"a": 3}\n')
    with pytest.warns(UserWarning, match="skipped a line that is not JSON"):
        assert read_results(p) == [{"a": 1}, {"a": 3}]
    with pytest.raises(ValueError, match=":4:"):
        read_results(p, strict=True)


def test_concurrent_appends_from_four_processes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    n_per_proc = 25
    script = textwrap.dedent(
        f"""
        import sys
        from distri.job.results import write_result
        p = int(sys.argv[1])
        for i in range({n_per_proc}):
            rec = {{"status": "ok", "proc": p, "i": i, "payload": str(p) * 20000}}
            write_result(rec, r"{sweep}" + f"/job{{p}}_{{i}}", r"{sweep}")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(p)], env=env) for p in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]

    lines = (sweep / "results.jsonl").read_text().split("\n")
    assert lines[-1] == ""
    recs = [json.loads(line) for line in lines[:-1]]
    assert len(recs) == 4 * n_per_proc
    assert sorted((r["proc"], r["i"]) for r in recs) == [(p, i) for p in range(4) for i in range(n_per_proc)]
    assert all(r["payload"] == str(r["proc"]) * 20000 for r in recs)


def test_record_helpers() -> None:
    assert validate_record(make_record()) == []
    assert "missing key 'comm'" in validate_record({k: None for k in RESULT_FIELDS if k != "comm"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as e:
        rec = failed_record({"a": 1}, e)
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: boom"
    assert "Traceback" in rec["traceback"] and validate_record(rec) == []
    assert scalar_metrics(make_record(metrics={"psnr_vs_orig": "inf", "ok": True, "v": 2.0})) == {
        "latency/mean_s": 1.25,
        "latency/std_s": 0.01,
        "latency/n": 3,
        "metrics/v": 2.0,
        "comm/bytes_per_step": 3 * 2**20,
        "comm/by_kind/conv_halo": 1024.0,
        "speedup": 1.8,
    }


def test_collect_env_cpu() -> None:
    env = collect_env("cpu", "gloo", 2)
    for key in ("torch", "diffusers", "transformers", "python", "hostname", "device_name", "cpu_count"):
        assert env[key], key
    assert env["backend"] == "gloo" and env["world_size"] == 2 and env["device"] == "cpu"
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert env["git_dirty"] in (None, True, False)
    json.dumps(env, allow_nan=False)


# ----------------------------------------------------------------------------------------------- W&B


@pytest.fixture
def offline_wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every W&B path at tmp_path and make any network attempt fail fast."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    for var, sub in (
        ("WANDB_DIR", "wandb_default"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_DATA_DIR", "wandb_data"),
        ("WANDB_ARTIFACT_DIR", "wandb_artifacts"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def test_run_logger_offline_writes_readable_run(offline_wandb_env: Path) -> None:
    out_dir = offline_wandb_env / "sweep"
    cfg = {"name": "wandb", "mode": "offline", "project": "distri-test", "dir": str(out_dir), "tags": ["t"]}
    record = make_record(metrics={"psnr_vs_orig": 31.5, "max_abs_err_vs_orig": 0.25})
    images = [torch.rand(3, 8, 8), Image.new("RGB", (8, 8), (255, 0, 0))]

    logger = RunLogger(cfg, run_name="job0", group="sweep-a", config=record["config"])
    assert logger.enabled and logger.mode == "offline"
    logger.log_result(record, images=images, captions=["rank-0 patch", "red"])
    run_dir = logger.finish()
    assert logger.finish() == run_dir  # idempotent

    assert run_dir is not None and run_dir.is_dir()
    assert run_dir.parent == out_dir / "wandb" and run_dir.name.startswith("offline-run-")
    assert len(list(run_dir.glob("run-*.wandb"))) == 1

    run = read_offline_run(run_dir)
    assert (run["project"], run["group"], run["name"], run["tags"]) == (
        "distri-test",
        "sweep-a",
        "job0",
        ["t"],
    )
    assert run["config"]["model"] == {"name": "sdxl"}
    assert run["config"]["sampler"]["num_inference_steps"] == 50
    summary = run["summary"]
    assert summary["latency/mean_s"] == 1.25
    assert summary["metrics/psnr_vs_orig"] == 31.5
    assert summary["comm/bytes_per_step"] == 3 * 2**20
    assert summary["speedup"] == 1.8
    assert summary["status"] == "ok"
    assert summary["record"]["latency"]["samples_s"] == [1.2, 1.25, 1.3]
    assert summary["samples"]["count"] == 2 and summary["samples"]["captions"] == ["rank-0 patch", "red"]
    assert run["history"][0]["latency/mean_s"] == 1.25
    assert run["exit_code"] == 0
    pngs = [f for f in run["files"] if f.startswith("media/images/") and f.endswith(".png")]
    assert len(pngs) == 2


def test_run_logger_failed_record_marks_run_failed(offline_wandb_env: Path) -> None:
    cfg = {"name": "wandb", "dir": str(offline_wandb_env / "sweep")}  # mode defaults to offline
    long_tb = "Traceback (most recent call last):\n" + "  frame\n" * 20000  # > 32 KiB: spans log blocks
    with RunLogger(cfg, run_name="bad", group="g") as logger:
        logger.log_result(
            make_record(status="failed", error="RuntimeError: x", traceback=long_tb, latency={})
        )
    run = read_offline_run(logger.run_dir)
    assert run["exit_code"] == 1 and run["summary"]["status"] == "failed"
    assert run["summary"]["record"]["traceback"] == long_tb


def test_run_logger_none_and_disabled_write_nothing(offline_wandb_env: Path) -> None:
    out_dir = offline_wandb_env / "nothing"
    for cfg in (
        {"name": "none", "dir": str(out_dir)},
        {"name": "wandb", "mode": "disabled", "dir": str(out_dir)},
    ):
        logger = RunLogger(cfg, run_name="x", config={"a": 1})
        assert not logger.enabled and logger.run is None
        logger.log_result(make_record(), images=[torch.rand(3, 4, 4)])
        assert logger.finish() is None
    assert not out_dir.exists()
    assert not any((offline_wandb_env / "wandb_default").iterdir())


# ------------------------------------------------------------------------------------------ analysis


def test_flatten_and_load(tmp_path: Path) -> None:
    flat = flatten(make_record())
    assert flat["config.strategy.name"] == "displaced_patch"
    assert flat["config.sampler.num_inference_steps"] == 50
    assert flat["comm.by_kind.conv_halo"] == 1024.0
    assert "images" not in flat and "latency.samples_s" not in flat
    write_result(make_record(), tmp_path / "a" / "j0", tmp_path / "a")
    write_result(make_record(), tmp_path / "b" / "j0", tmp_path / "b")
    recs = load_results(tmp_path)
    assert len(recs) == 2 and recs[0]["_source"].endswith(os.path.join("a", "results.jsonl"))
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            to_dataframe(recs)
    else:
        assert len(to_dataframe(recs)) == 2


def test_tables_prints_a_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    write_result(make_record(), sweep / "j0", sweep)
    base = make_record(speedup=None, metrics={"psnr_vs_orig": "inf"})
    base["config"]["strategy"] = {"name": "none"}
    write_result(base, sweep / "j1", sweep)

    assert tables_main([str(sweep), "--sort", "strategy"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "strategy", "mode"]
    rows = [line.split() for line in out[2:4]]
    assert rows[0] == ["sdxl", "displaced_patch", "full_sync", "2", "1024", "50", "1.250", "s", "1.80x", "31.50",
                       "3.146", "MB", "ok"]  # fmt: skip
    assert rows[1] == ["sdxl", "none", "-", "2", "1024", "50", "1.250", "s", "-", "inf", "3.146", "MB", "ok"]
    assert "2 job(s): 2 ok, 0 failed" in out[-1]
    assert "displaced_patch" in format_table(load_results(sweep / "results.jsonl"))

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.tables", str(sweep / "results.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "displaced_patch" in proc.stdout and "psnr_vs_orig" in proc.stdout


def test_job_folder_lock_refuses_a_second_live_job(tmp_path: Path) -> None:
    from distri.job.results import FolderInUse, JobFolderLock

    script = textwrap.dedent(
        f"""
        import sys, time
        from distri.job.results import JobFolderLock
        with JobFolderLock(r"{tmp_path}"):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=f"in use by another running job \\(pid {holder.pid}\\)"):
            JobFolderLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with JobFolderLock(tmp_path):  # the OS released the dead job's lock
        pass


def test_unwritable_results_fail_before_the_job(tmp_path: Path) -> None:
    from distri.job.results import check_writable

    root = tmp_path / "sweep"
    root.mkdir()
    (root / "results.jsonl").mkdir()  # unwritable even for root (a read-only file is not, to root)
    with pytest.raises(PermissionError, match="results.jsonl.*hydra.sweep.dir"):
        check_writable(root / "0", root)
    check_writable(tmp_path / "job", tmp_path / "job")
    assert not (tmp_path / "job" / "result.json").exists()  # only probed


def test_online_without_a_server_falls_back_to_offline_and_says_so(
    offline_wandb_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = {"name": "wandb", "mode": "online", "dir": str(offline_wandb_env / "sweep")}
    logger = RunLogger(cfg, run_name="j", group="g")
    assert logger.mode == "offline" and logger.enabled
    logger.finish()
    assert "not reachable within 5 s; logging offline instead" in capsys.readouterr().err
