"""The fault matrix (issue 8), through ``run.py`` at 2 ranks with the tiny model and the fault injection.

Every case starts ``run.py`` in a new session (so its workers and helpers share one process group), and checks
that it ends within its stated time, that no process of that group is left afterwards, that the earlier line of
the job's ``results.jsonl`` is byte-identical, and that the new record's status says what happened. SIGKILL of
the main process can record nothing: there the workers must be gone within seconds, and no line is added.
Slow cases (``@pytest.mark.slow``, run by .ci/run after the quick suite): all but raising mid-sampling and
SIGKILL of the main process.
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
EARLIER = '{"status": "ok", "note": "an earlier job of this sweep"}\n'
BASE = [
    "model=tiny_sdxl", "world_size=2", "strategy=displaced_patch", "strategy.warmup_steps=1", "logger=none",
    "sampler.num_inference_steps=3", "height=64", "width=64", "prompts.limit=1",
    "runner.warmup_runs=0", "runner.timed_runs=1", "metrics.compare_to_original=false",
]  # fmt: skip


class Job:
    """``run.py`` in its own session, its output in files, the job folder pre-seeded with an earlier record."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.dir, self.err = tmp / "job", tmp / "stderr.txt"
        self.dir.mkdir()
        (self.dir / "results.jsonl").write_text(EARLIER)
        cmd = [sys.executable, str(ROOT / "run.py"), *BASE, f"hydra.run.dir={self.dir}", *args]
        self.proc = start_in_session(cmd, tmp, tmp / "stdout.txt", self.err)
        self.t0 = time.monotonic()

    def wait_for_fault(self, limit_s: float) -> None:
        while "distri fault:" not in self.err.read_text():
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() - self.t0 < limit_s, "the fault never fired"
            time.sleep(0.2)

    def finish(self, limit_s: float) -> int:
        """The exit code, within ``limit_s`` of the start; then no process of the group may remain."""
        try:
            code = self.proc.wait(timeout=max(1.0, limit_s - (time.monotonic() - self.t0)))
        finally:
            self.assert_group_gone(15)
        return code

    def assert_group_gone(self, within_s: float) -> None:
        assert_group_gone(self.proc.pid, within_s)

    def lines(self) -> list[str]:
        text = (self.dir / "results.jsonl").read_text()
        assert text.startswith(EARLIER)  # the earlier record is byte-identical
        return text[len(EARLIER) :].splitlines()

    def record(self) -> dict:
        (line,) = self.lines()
        rec = json.loads(line)
        assert rec == json.loads((self.dir / "result.json").read_text())
        return rec


def _failed(job: Job, limit_s: float) -> dict:
    assert job.finish(limit_s) == 1, job.err.read_text()
    rec = job.record()
    assert rec["status"] == "failed" and rec["output_dir"] == str(job.dir)
    return rec


@pytest.mark.parametrize(
    "at", [pytest.param("start", marks=pytest.mark.slow), "step:1"], ids=["at-start", "mid-sampling"]
)
def test_a_rank_raising(tmp_path, at):
    rec = _failed(Job(tmp_path, f"fault='rank=1,at={at},kind=raise'"), limit_s=300)
    assert rec["failed_rank"] == 1 and "FaultInjected" in rec["error"] and "Traceback" in rec["traceback"]


@pytest.mark.slow
def test_a_rank_exiting(tmp_path):
    rec = _failed(Job(tmp_path, "fault='rank=1,at=step:1,kind=exit'"), limit_s=300)
    assert rec["failed_rank"] == 1 and "worker rank 1 died (exit code 13)" in rec["error"]


@pytest.mark.slow
@pytest.mark.parametrize("at", ["start", "step:1"], ids=["at-start", "mid-sampling"])
def test_a_rank_hanging_ends_after_the_timeout(tmp_path, at):
    """A deadlocked rank (still answering heartbeats): no progress for runner.timeout_s=25 ends the job."""
    rec = _failed(Job(tmp_path, f"fault='rank=1,at={at},kind=hang'", "runner.timeout_s=25"), limit_s=300)
    assert "made no progress for" in rec["error"] and "runner.timeout_s=25" in rec["error"]
    if at != "start":
        assert "rank 1: timed run 1/1, step 2/3: fault injection (hang)" in rec["error"]


@pytest.mark.slow
@pytest.mark.parametrize("at", ["start", "step:1"], ids=["while-creating-groups", "mid-sampling"])
def test_a_frozen_rank_is_named(tmp_path, at):
    """SIGSTOP-ed rank 1 (no heartbeat): the watchdog names it after runner.timeout_s=25."""
    rec = _failed(Job(tmp_path, f"fault='rank=1,at={at},kind=freeze'", "runner.timeout_s=25"), limit_s=300)
    assert rec["failed_rank"] == 1 and "rank 1 stopped responding: no heartbeat" in rec["error"]


@pytest.mark.parametrize(
    "sig, to_group",
    [
        pytest.param(signal.SIGINT, True, marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow),
    ],
    ids=["SIGINT-to-the-group", "SIGTERM-to-main"],
)
def test_interrupting_the_main_process_records_interrupted(tmp_path, sig, to_group):
    """Ctrl-C reaches the whole process group; `timeout`, SLURM, docker send SIGTERM to the main process."""
    job = Job(tmp_path, "fault='rank=1,at=step:1,kind=hang'")
    job.wait_for_fault(limit_s=150)
    (os.killpg if to_group else os.kill)(job.proc.pid, sig)
    t = time.monotonic()
    assert job.finish(limit_s=300) == 130, job.err.read_text()
    assert time.monotonic() - t < 20  # workers stopped and the record written within seconds
    rec = job.record()
    assert rec["status"] == "interrupted" and rec["error"].startswith(
        "KeyboardInterrupt" if sig == signal.SIGINT else "Interrupted: stopped by SIGTERM"
    )


def test_sigkill_of_the_main_process_leaves_no_worker(tmp_path):
    job = Job(tmp_path, "fault='rank=1,at=step:1,kind=hang'")
    job.wait_for_fault(limit_s=150)
    os.kill(job.proc.pid, signal.SIGKILL)
    job.proc.wait(timeout=10)
    job.assert_group_gone(within_s=10)  # workers notice their parent is gone (and PDEATHSIG)
    assert job.lines() == []  # nothing could be recorded: a re-run sees the job as unfinished
