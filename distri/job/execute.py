"""The parent side of one job: resolve the device, choose the launcher, build tiny models, and turn every
outcome into a record (:class:`~distri.job.record.JobRecord`).

:func:`execute` runs in the launching process (``run.py``, or any script: it needs no Hydra). It starts the
worker pool (:class:`distri.launch.WorkerPool`) or, under ``torchrun``, runs the job in place
(:mod:`distri.torchrun`); every rank runs :func:`distri.worker.job.run_job`. It never raises for a failing
job: the record then has ``status: failed`` (with the failing rank's error and traceback) or, for SIGINT /
SIGTERM (:func:`interrupt_on_sigterm`), ``status: interrupted``; the workers are gone by the time it returns.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from distri.job.progress import ProgressDisplay
from distri.job.record import JobRecord

POOL_TASK = "distri.worker.job:run_job"


class Interrupted(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, SLURM, ``docker stop`` and Kubernetes send), raised in the main thread."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Interrupted` in the main thread (as SIGINT raises KeyboardInterrupt)."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


def warn_oversubscribed(cfg: dict[str, Any]) -> None:
    """On the CPU, say on stderr when ranks x threads exceed the cores: timings are then oversubscribed."""
    ranks, threads = cfg["world_size"], cfg["runner"]["cpu_threads_per_rank"]
    here = int(os.environ.get("LOCAL_WORLD_SIZE", ranks))
    cores = os.cpu_count() or 1
    if cfg["device"] == "cpu" and here * threads > cores:
        print(
            f"warning: {here} rank(s) x {threads} thread(s) on {cores} CPU core(s): the ranks share cores, "
            "so latencies and speedups are oversubscribed (the record says so too)",
            file=sys.stderr,
        )


def _run_pool(cfg: dict[str, Any], job_dir: str, display: ProgressDisplay) -> dict[str, Any]:
    from distri.launch import WorkerPool

    if cfg["model"]["source"] == "tiny":  # built here, outside torch.distributed (see ensure_model)
        from distri.models.tiny import build_tiny

        build_tiny(cfg["model"]["name"], cfg["model"].get("cache_dir"))
    r, n = cfg["runner"], cfg["world_size"]
    display(0, f"starting {n} worker process{'es' if n > 1 else ''} ({cfg['device']})")
    pool = WorkerPool(
        n, cfg["device"], r["timeout_s"], r["cpu_threads_per_rank"], port=r["port"], on_progress=display
    )
    with pool:
        return pool.run(POOL_TASK, cfg=cfg, job_dir=job_dir)[0]


def _launch(cfg: dict[str, Any], job_dir: str, env_info: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0's measurements (None on another torchrun rank); rank 0's progress shown on stderr."""
    from distri.slurm import in_srun_step
    from distri.torchrun import run_in_place, torchrun_rank

    display = ProgressDisplay()
    try:
        if torchrun_rank() is not None:
            env_info["launcher"] = "srun" if in_srun_step() else "torchrun"
            shown = (lambda report: display(0, report)) if torchrun_rank() == 0 else None
            return run_in_place(cfg, job_dir, cfg["runner"]["cpu_threads_per_rank"], progress=shown)
        env_info["launcher"] = "distri.launch.WorkerPool (spawn)"
        return _run_pool(cfg, job_dir, display)
    finally:
        display.close()


def _failure(cfg: dict[str, Any], e: BaseException, env_info: dict[str, Any]) -> JobRecord:
    from distri.launch import WorkerError

    status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
    rec = JobRecord.from_exception(status, cfg, e, env=env_info)
    if isinstance(e, WorkerError):
        rec.extra = {"failed_rank": e.rank}
        rec.error = f"{type(e).__name__}: {e}".splitlines()[0]
        if e.worker_traceback:
            rec.traceback = e.worker_traceback
            rec.error = f"rank {e.rank}: {e.worker_traceback.strip().splitlines()[-1]}"
    return rec


def already_done(cfg: dict[str, Any], sweep_root: str) -> bool:
    """Whether ``sweep_root/results.jsonl`` holds an ``ok`` record of this job: one whose ``config_hash``
    (:func:`distri.job.record.config_hash`) is that of ``cfg`` with its device and dtype resolved, as the
    record's would be. Always False with ``force: true``. Under ``torchrun`` rank 0 decides for every rank."""
    from distri.job.record import config_hash
    from distri.job.results import records_of
    from distri.torchrun import rank0_decides, torchrun_rank

    if cfg.get("force"):
        return False
    found = any(r["status"] == "ok" for r in records_of(sweep_root, config_hash(runtime_config(cfg))))
    return rank0_decides(found) if torchrun_rank() is not None else found


def runtime_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with device and dtype resolved as a job's record holds them (quietly), or ``cfg`` as it is
    where they cannot be resolved here (then the job cannot start, and its record says why)."""
    from distri.config import ConfigError
    from distri.devices import resolve_runtime

    try:
        return resolve_runtime(cfg, say=False)
    except (ConfigError, RuntimeError, KeyError, ValueError):
        return cfg


def execute(cfg: dict[str, Any], job_dir: str) -> dict[str, Any]:
    """Run a validated job: workers (or ``torchrun`` in place); returns rank 0's record as a dict.

    Under ``torchrun`` every rank gets a record with its ``rank``; only rank 0's is a full one, and only rank
    0 may write or log it (``run.py`` does so); a failure on any rank makes rank 0's record the failed one.
    """
    from distri.devices import resolve_runtime
    from distri.job.environment import collect_env
    from distri.job.preflight import preflight
    from distri.torchrun import torchrun_rank

    t0, rank, env_info = time.time(), torchrun_rank(), {}
    try:
        preflight(cfg)  # bad files, a malformed fault, missing weights: refused before any worker starts
        cfg = resolve_runtime(cfg)  # device and dtype "auto" resolved; workers and the record see the result
        backend = ("nccl" if cfg["device"] == "cuda" else "gloo") if cfg["world_size"] > 1 else "none"
        env_info = collect_env(cfg["device"], backend, cfg["world_size"])
        warn_oversubscribed(cfg)
        results = _launch(cfg, job_dir, env_info)
        if rank:
            return JobRecord("ok", cfg, rank=rank).to_dict()
        rec = JobRecord("ok", cfg, env=env_info, results=results, extra={"pid": os.getpid()})
    except BaseException as e:  # noqa: BLE001 - the record carries the failure (KeyboardInterrupt too)
        if not isinstance(e, Exception | KeyboardInterrupt):
            raise
        rec = _failure(cfg, e, env_info)
    rec.wall_s, rec.output_dir, rec.rank = time.time() - t0, job_dir, rank or 0
    return rec.to_dict()
