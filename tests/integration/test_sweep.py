"""Hydra multiruns through ``run.py -m`` (issue 12): Ctrl-C, resume, a rerun that recomputes nothing, a failing
job, an impossible one, the end-of-sweep table. Each sweep runs in its own session, as in tests/faults, so
that no process of it may be left. Tiny model at 64x64, 2 steps, 1 prompt, 1 timed run, no comparison.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.processes import assert_group_gone, start_in_session

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "model=tiny_sdxl", "height=64", "width=64", "sampler.num_inference_steps=2", "prompts.limit=1", "logger=none",
    "runner.warmup_runs=0", "runner.timed_runs=1", "metrics.compare_to_original=false",
]  # fmt: skip
GRID = ["strategy=naive_patch,tensor", "world_size=1,2,3"]  # naive_patch x3 cannot split 64 px: skipped


class Sweep:
    """``run.py -m`` in its own session, into ``sweep_dir``; its stdout and stderr in files under ``tmp``."""

    def __init__(self, tmp: Path, sweep_dir: Path, *args: str) -> None:
        tmp.mkdir(exist_ok=True)
        self.dir, self.err, self.out = sweep_dir, tmp / "stderr.txt", tmp / "stdout.txt"
        cmd = [sys.executable, str(ROOT / "run.py"), "-m", *args, *FAST, f"hydra.sweep.dir={sweep_dir}"]
        self.proc = start_in_session(cmd, tmp, self.out, self.err)

    def wait_for(self, *texts: str, limit_s: float) -> None:
        """Until stderr holds ``texts`` in this order."""
        t0 = time.monotonic()
        while True:
            err, at = self.err.read_text(), 0
            for text in texts:
                at = err.find(text, at)
                if at < 0:
                    break
            if at >= 0:
                return
            assert self.proc.poll() is None, err
            assert time.monotonic() - t0 < limit_s, f"never saw {texts}: {err}"
            time.sleep(0.1)

    def finish(self, limit_s: float) -> int:
        try:
            return self.proc.wait(timeout=limit_s)
        finally:
            assert_group_gone(self.proc.pid, within_s=15)

    def text(self) -> str:
        return (self.dir / "results.jsonl").read_text()


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _cell(rec: dict) -> tuple[str, int]:
    return rec["config"]["strategy"]["name"], rec["config"]["world_size"]


@pytest.mark.slow
def test_ctrl_c_then_resume_then_nothing_left_to_do(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = Sweep(tmp_path / "a", sweep_dir, *GRID)
    # job 5 is tensor x2: the only jobs with 2 workers are 2 and 5
    first.wait_for("distri: job 5/6", "distri: starting 2 worker processes", limit_s=400)
    os.killpg(first.proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    t = time.monotonic()
    assert first.finish(limit_s=60) == 130, first.err.read_text()
    assert time.monotonic() - t < 20  # workers stopped and the record written within seconds
    err = first.err.read_text()
    assert "distri: job 6/6" not in err  # the next job does not start
    table = first.out.read_text().split(f"sweep {sweep_dir}")[1].splitlines()[1:]  # printed all the same
    assert [row.split()[3] for row in table[1:6]] == ["ok", "ok", "skipped", "ok", "interrupted"]
    done = first.text()
    recs = _records(done)
    assert [(_cell(r), r["status"]) for r in recs] == [
        (("naive_patch", 1), "ok"), (("naive_patch", 2), "ok"), (("naive_patch", 3), "skipped"),
        (("tensor", 1), "ok"), (("tensor", 2), "interrupted"),
    ]  # fmt: skip
    assert "3 patches do not divide the latent height 8" in recs[2]["error"] and recs[2]["wall_s"] < 1.0
    # measured: validation refuses it in ~0.01 s; < 1 s means no worker was started

    second = Sweep(tmp_path / "b", sweep_dir, *GRID)  # the same command and folder: resume
    assert second.finish(limit_s=400) == 0, second.err.read_text()
    text = second.text()
    assert text.startswith(done)  # finished records untouched
    assert [(_cell(r), r["status"]) for r in _records(text[len(done) :])] == [
        (("tensor", 2), "ok"),
        (("tensor", 3), "ok"),
    ]  # only the missing jobs ran; the skipped one is not recorded again
    assert second.err.read_text().count("skipped: already done") == 3
    table = second.out.read_text().split(f"sweep {sweep_dir}")[1].splitlines()[1:]
    assert table[0].split()[:3] == ["job", "world_size", "strategy.name"]
    assert [row.split()[:4] for row in table[1:7]] == [
        ["0", "1", "naive_patch", "ok"], ["1", "2", "naive_patch", "ok"], ["2", "3", "naive_patch", "skipped"],
        ["3", "1", "tensor", "ok"], ["4", "2", "tensor", "ok"], ["5", "3", "tensor", "ok"],
    ]  # fmt: skip
    assert table[7].startswith("2: skipped: Infeasible: 3 patches do not divide")

    third = Sweep(tmp_path / "c", sweep_dir, *GRID)  # everything done: nothing recomputed
    assert third.finish(limit_s=200) == 0, third.err.read_text()
    assert third.text() == text
    err = third.err.read_text()
    assert err.count("skipped: already done") == 5 and "distri: starting" not in err  # no worker started


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """world_size=2 fails (rank 1 raises at step 1), world_size=1 runs after it (no rank 1), 3 is skipped."""
    sweep = Sweep(tmp_path, tmp_path / "sweep", "strategy=naive_patch", "world_size=2,1,3",
                  "fault='rank=1,at=step:1,kind=raise'")  # fmt: skip
    assert sweep.finish(limit_s=400) == 1, sweep.err.read_text()  # a failed job: non-zero, after every job
    recs = _records(sweep.text())
    assert [(r["config"]["world_size"], r["status"]) for r in recs] == [
        (2, "failed"),
        (1, "ok"),
        (3, "skipped"),
    ]
    assert recs[0]["failed_rank"] == 1 and "FaultInjected" in recs[0]["error"]
    assert recs[2]["wall_s"] < 1.0  # measured ~0.01 s: refused at validation, no worker
    err = sweep.err.read_text()
    assert "1 job(s) failed" in err and "distri: job 3/3" in err
    out = sweep.out.read_text()
    assert "0: failed: rank 1: " in out and "2: skipped: Infeasible: 3 patches" in out
