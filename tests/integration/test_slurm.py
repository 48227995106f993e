"""``hydra/launcher=slurm`` against a real SLURM cluster: a 2-job sweep, one job with 2 tasks (ranks) over gloo.

Needs a cluster that answers ``sinfo`` (``.ci/slurm-up.sh`` brings up a single-node one) and the extra
``slurm``. Without them the test skips and says why; with ``DISTRI_REQUIRE_SLURM=1`` (set by ``.ci/run``) it
fails instead, so CI cannot skip it silently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_run import FAST, ROOT


def no_cluster_reason() -> str | None:
    """Why no SLURM cluster can take the test's jobs here, or None when one can."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return "hydra-submitit-launcher is not installed (pip install -e '.[slurm]')"
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo) on the PATH; .ci/slurm-up.sh brings up a single-node cluster"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if p.returncode != 0:
        return f"sinfo failed: {p.stderr.strip()}"
    if not {"idle", "mixed"} & set(p.stdout.split()):
        return f"no SLURM node can take a job (node states: {' '.join(p.stdout.split()) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    reason = no_cluster_reason()
    if reason is not None:
        if os.environ.get("DISTRI_REQUIRE_SLURM") == "1":
            pytest.fail(f"DISTRI_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def sweep_on_slurm(
    tmp_path: Path, args: list[str], code: int = 0, **env_vars: str
) -> tuple[list[dict], Path, float]:
    """``run.py -m hydra/launcher=slurm ARGS`` from tmp_path, which must exit with ``code``: the records of
    results.jsonl, the sweep, seconds."""
    (tmp_path / "tmp").mkdir()
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", TMPDIR=str(tmp_path / "tmp"), **env_vars
    )
    env.pop("WANDB_API_KEY", None)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=slurm", "strategy=naive_patch"]
    t0 = time.monotonic()
    p = subprocess.run(
        [*cmd, "logger=none", *args, *FAST, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == code, p.stdout + p.stderr
    recs = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert not list((tmp_path / "tmp").glob("distri-rank*"))  # rank 1's Hydra folder was removed
    return recs, sweep, time.monotonic() - t0


@pytest.mark.slow
def test_two_job_sweep_through_the_slurm_launcher(slurm_cluster, tmp_path):
    recs, sweep, wall = sweep_on_slurm(tmp_path, ["world_size=1,2"])
    assert sorted(r["config"]["world_size"] for r in recs) == [1, 2]  # one record per job: rank 0's only
    by_size = {r["config"]["world_size"]: r for r in recs}
    for r in recs:
        assert r["status"] == "ok", r.get("traceback")
        assert r["rank"] == 0 and r["speedup"] > 0 and Path(r["images"][0]).is_file()
        assert json.loads((Path(r["output_dir"]) / "result.json").read_text()) == r
    # the 2-rank job ran as two srun tasks over gloo; the 1-rank job in its one task
    assert by_size[2]["env"]["launcher"] == "srun" and by_size[2]["env"]["backend"] == "gloo"
    assert by_size[1]["env"]["launcher"].startswith("distri.launch.WorkerPool")
    tasks = sorted(f.name.split("_", 1)[1] for f in sweep.glob(".submitit/*/*_result.pkl"))
    assert tasks == ["0_result.pkl", "0_result.pkl", "1_result.pkl"], tasks  # submitit saw every task end
    rank1_out = next(sweep.glob(".submitit/*/*_1_log.out")).read_text()
    assert "result:" not in rank1_out  # rank 1 printed no summary and wrote no record
    assert len(list(sweep.rglob("result.json"))) == 2
    assert wall < 240, f"the sweep took {wall:.0f} s"


@pytest.mark.slow
def test_a_rank_failing_under_slurm_gives_one_failed_record_and_every_task_ends(slurm_cluster, tmp_path):
    recs, sweep, wall = sweep_on_slurm(
        tmp_path, ["world_size=2", "runner.timeout_s=120"], code=1, DISTRI_FAULT="rank=1,at=start,kind=raise"
    )  # the submitting command exits 1: a job failed on the cluster
    (rec,) = recs
    assert rec["status"] == "failed" and rec["rank"] == 0 and rec["failed_rank"] == 1
    assert rec["env"]["launcher"] == "srun" and "FaultInjected" in rec["error"]
    assert "DISTRI_FAULT asked rank 1 to fail at start" in rec["traceback"]
    # both tasks returned to submitit (none ended the process early), so the sweep did not hang on them
    assert sorted(f.name.split("_", 1)[1] for f in sweep.glob(".submitit/*/*_result.pkl")) == [
        "0_result.pkl",
        "1_result.pkl",
    ]
    assert wall < 120, f"rank 0 waited for the process-group timeout ({wall:.0f} s)"
