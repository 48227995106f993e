"""``torchrun --nproc_per_node=2 run.py ...`` on CPU: only global rank 0 writes, in every path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_run import FAST, ROOT


def torchrun(args: list[str], cwd: Path, **env_vars: str) -> tuple[subprocess.CompletedProcess, float]:
    (cwd / "tmp").mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", TMPDIR=str(cwd / "tmp"), **env_vars)
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    t0 = time.monotonic()
    p = subprocess.run(
        [*cmd, str(ROOT / "run.py"), *args, "world_size=2", "strategy.warmup_steps=1", *FAST],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return p, time.monotonic() - t0


def only_rank0_wrote(tmp_path: Path, jobs: int) -> list[dict]:
    """The one results.jsonl (with ``jobs`` lines), one result.json per job, one Hydra folder: rank 0's."""
    stores = list(tmp_path.rglob("results.jsonl"))
    assert len(stores) == 1, stores
    assert len(list(tmp_path.rglob("result.json"))) == jobs
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1  # rank 1 made no Hydra folder here
    assert not list((tmp_path / "tmp").glob("distri-rank*"))  # and removed its temporary one
    return [json.loads(line) for line in stores[0].read_text().splitlines()]


def test_rank1_failing_gives_exactly_one_record_written_by_rank0(tmp_path):
    p, wall = torchrun(
        ["logger=none", "runner.timeout_s=240"], tmp_path, DISTRI_FAULT="rank=1,at=start,kind=raise"
    )
    assert p.returncode != 0, p.stdout + p.stderr
    (rec,) = only_rank0_wrote(tmp_path, jobs=1)
    assert rec["status"] == "failed" and rec["rank"] == 0 and rec["failed_rank"] == 1
    assert rec["error"].startswith("rank 1: ") and "FaultInjected" in rec["error"]
    assert "DISTRI_FAULT asked rank 1 to fail at start" in rec["traceback"]
    assert rec["env"]["launcher"] == "torchrun"
    assert "rank 1: job failed" in p.stderr and "FAILED: rank 1" in p.stdout
    assert wall < 200, f"rank 0 waited for the process-group timeout ({wall:.0f} s)"


@pytest.mark.slow  # 27 s on 2 cores
def test_sweep_under_torchrun_writes_one_record_per_job(tmp_path):
    p, _ = torchrun(["-m", "seed=0,1", "hydra.sweep.dir=outputs/sweep/x"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = only_rank0_wrote(tmp_path, jobs=2)
    assert [r["config"]["seed"] for r in recs] == [0, 1]
    for r in recs:
        assert r["status"] == "ok" and r["env"]["launcher"] == "torchrun" and r["threads_per_rank"] == 1
        assert r["speedup"] > 0 and r["speedup_statistic"] == "trimmed_mean_s"
        assert Path(r["wandb_dir"]).is_dir() and Path(r["images"][0]).is_file()
