"""A job run in place under ``torchrun``: every rank runs it, global rank 0 alone reports it.

``torchrun`` starts one process per rank, each running ``run.py`` (with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set). :func:`run_in_place` runs the job
(:func:`distri.worker.job.run_job`) in a thread while the process's main thread watches for

* the job finishing: rank 0 gets its record, the other ranks ``None``;
* a failure on any rank: a failing rank writes its error and traceback into torchrun's TCP store (keys under
  ``distri/<run id>/<restart>/<job>/``), so the other ranks learn of it within :data:`POLL_S` seconds even
  while their own job is blocked in a collective with the failed rank;
* SIGTERM, with which torchrun stops the remaining ranks once one has exited non-zero.

In every case but success it raises :class:`~distri.launch.WorkerError` naming the first rank that failed,
with that rank's traceback: rank 0 turns it into the one failed record, the other ranks write nothing. A job
thread blocked in a collective cannot be stopped, so the process has to end after a failed job; ``run.py``
leaves with ``os._exit`` (a failed job also ends the rest of a sweep under torchrun). The SIGTERM handler
(:func:`defer_sigterm`, which ``run.py`` installs first thing) only sets a flag, so a rank that is writing its
record finishes it first (torchrun sends SIGKILL 30 s after SIGTERM); and a failing rank other than 0 exits
only once rank 0 has taken up its failure (or after :data:`STORE_TIMEOUT_S`).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from distri.slurm import adopt_srun_env

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
POLL_S = 0.2
STORE_TIMEOUT_S = 120.0
_TERMINATED = threading.Event()
_JOB_SEQ = itertools.count()
_DECISIONS = itertools.count()


def torchrun_rank() -> int | None:
    """This process's global rank when ``torchrun`` started it (its variables are set), else None.

    A task of a multi-task ``srun`` step counts as one: SLURM's variables are mapped first (:mod:`distri.slurm`).
    """
    adopt_srun_env()
    if not all(k in os.environ for k in TORCHRUN_VARS):
        return None
    return int(os.environ["RANK"])


def _on_sigterm(signum: int, frame: Any) -> None:
    _TERMINATED.set()


def defer_sigterm() -> None:
    """Turn SIGTERM into a flag that the running (or next) job reads (call from the main thread, early)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _store(prefix: str) -> Any:
    """torchrun's TCP store (hosted by its agent, or by rank 0 under srun), keys under ``distri/.../prefix``."""
    import torch.distributed as dist

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=timedelta(seconds=STORE_TIMEOUT_S),
    )  # fmt: skip
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"distri/{run_id}/{restart}/{prefix}", store)


def rank0_decides(value: bool) -> bool:
    """Rank 0's ``value``, on every rank: for what only rank 0 can see (the sweep folder; the other ranks'
    Hydra folders are temporary ones). Every rank must call it at the same point of the same jobs."""
    store = _store(f"decision/{next(_DECISIONS)}/")
    if torchrun_rank() == 0:
        store.set("value", json.dumps(value))
        return value
    return bool(json.loads(store.get("value")))


class _Failures:
    """This job's failures in torchrun's TCP store, numbered in the order the ranks reported them."""

    def __init__(self, job_seq: int) -> None:
        self.store = _store(f"{job_seq}/")

    def report(self, rank: int, tb: str) -> None:
        n = self.store.add("count", 1)
        self.store.set(f"failure/{n}", json.dumps({"rank": rank, "traceback": tb}))

    def first(self) -> dict[str, Any] | None:
        if self.store.add("count", 0) < 1:
            return None
        return json.loads(self.store.get("failure/1"))

    def seen_by_rank0(self) -> None:
        self.store.set("seen", "1")

    def wait_seen(self) -> None:
        """Wait (at most STORE_TIMEOUT_S) until rank 0 has taken up the failure, so that it is not stopped
        by torchrun (once this rank exits) before it could record it."""
        try:
            self.store.wait(["seen"], timedelta(seconds=STORE_TIMEOUT_S))
        except RuntimeError:  # rank 0 gone too: nothing to wait for
            pass


def run_in_place(
    cfg: dict[str, Any], job_dir: str, threads: int, progress: Callable[[Any], None] | None = None
) -> dict[str, Any] | None:
    """Run the job on this torchrun rank; rank 0's record, None on the others; WorkerError on any failure.
    ``progress``: called with this rank's progress reports (:class:`distri.worker.env.Report`)."""
    import torch

    from distri.launch import WorkerError
    from distri.worker.env import torchrun_env
    from distri.worker.job import run_job

    rank, world_size = torchrun_rank(), int(os.environ["WORLD_SIZE"])
    if rank is None:
        raise RuntimeError("run_in_place needs the environment torchrun sets (RANK, WORLD_SIZE, ...)")
    if world_size != cfg["world_size"]:
        raise RuntimeError(
            f"torchrun started {world_size} processes but world_size={cfg['world_size']}; "
            f"pass world_size={world_size}"
        )
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        defer_sigterm()
    torch.set_num_threads(threads)
    box: dict[str, Any] = {}

    def job() -> None:
        try:
            env = torchrun_env(cfg["device"], cfg["runner"]["timeout_s"])
            if progress is not None:
                env.progress = progress
            box["record"] = run_job(env, cfg, job_dir)
        except BaseException:  # noqa: BLE001 - reported to every rank below
            box["traceback"] = traceback.format_exc()

    thread = threading.Thread(target=job, name=f"distri-job-rank{rank}", daemon=True)
    thread.start()
    failures = _Failures(next(_JOB_SEQ))
    while thread.is_alive() and not _TERMINATED.is_set() and failures.first() is None:
        thread.join(POLL_S)
    if not thread.is_alive() and "record" in box:
        return box["record"]
    if "traceback" in box:
        failures.report(rank, box["traceback"])
    cause = failures.first() or {
        "rank": rank,
        "traceback": "SIGTERM: torchrun stopped this rank (another rank exited, or the job was cancelled)",
    }
    if rank == 0:
        failures.seen_by_rank0()
    elif "traceback" in box:
        failures.wait_seen()
    raise WorkerError(f"rank {cause['rank']} failed", rank=cause["rank"], worker_traceback=cause["traceback"])
