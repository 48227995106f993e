"""distri's Hydra entry point: compose and validate the config, run the job, write and log the result.

    python run.py                                    # the embedded default (conf/config.yaml)
    python run.py strategy=naive_patch world_size=4
    python run.py -m strategy=naive_patch,displaced_patch world_size=1,2,4   # a multirun sweep

Each job writes ``result.json`` into its output folder and appends the same record to ``results.jsonl`` in the
sweep (or run) folder; W&B gets the record after it is on disk (offline by default). A failing job is
recorded with ``status: failed`` and the sweep goes on; the command exits non-zero if any job failed. A
combination the strategy cannot run (:class:`distri.config.Infeasible`) is recorded as ``skipped`` without
starting workers and does not count as a failure. A job whose configuration already has an ``ok`` record in
the folder's ``results.jsonl`` is skipped (no line added; ``force=true`` runs it again), so the same command
with the same ``hydra.sweep.dir`` resumes an interrupted sweep. SIGINT (Ctrl-C) or SIGTERM records the
running job as ``interrupted``, stops its workers and ends the command (exit code 130) before the next job.
A job holds a lock on its folder: a second live job given the same folder is refused. At the end of a
multirun ``hydra_plugins/distri_callbacks.py`` prints the sweep's table (after an interrupted job, run.py does).

Under ``torchrun`` (``torchrun --nproc_per_node=N run.py world_size=N ...``) every rank runs this script, and
only global rank 0 writes files and logs (the other ranks send Hydra's folder to a temporary one); a failure
on any rank gives rank 0's one failed record, and then every rank exits non-zero (see distri.torchrun).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from distri.config import ConfigError, Infeasible, register_configs, validate
from distri.job.execute import interrupt_on_sigterm
from distri.job.summary import summary, sweep_report
from distri.slurm import leave as leave_srun_step
from distri.slurm import under_submitit
from distri.torchrun import defer_sigterm, torchrun_rank
from hydra_plugins.distri_slurm_launcher import remote_failures

register_configs(ConfigStore.instance())
_JOB_ID = secrets.token_hex(3)  # one per process: run and sweep folders differ even within one second
OmegaConf.register_new_resolver("distri_uid", lambda: _JOB_ID)
FAILED: list[str] = []
LOGGED_IMAGES = 16  # the first images of a job go to W&B; all of them are on disk
_OTHER_RANK_DIR: str | None = None  # under torchrun, Hydra's folder of a rank other than 0 (removed at exit)


def _paths() -> tuple[str, str, str]:
    hc = HydraConfig.get()
    job_dir = hc.runtime.output_dir
    if hc.mode == RunMode.MULTIRUN:
        root = hc.sweep.dir
        name = f"{Path(root).name}-{hc.job.num}"
    else:
        root = job_dir
        name = Path(job_dir).name
    return job_dir, str(Path(root).resolve()), name


def _leave(code: int) -> None:
    """End the process. Under torchrun at once (``os._exit``): a failed job's thread may still be blocked in a
    collective, and a process-group teardown can wait on ranks that are gone."""
    if torchrun_rank() is None:
        sys.exit(code)
    if _OTHER_RANK_DIR:
        shutil.rmtree(_OTHER_RANK_DIR, ignore_errors=True)
    leave_srun_step()  # under srun, rank 0 hosts the failure store: it waits until every rank is done with it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _failed(name: str) -> None:
    """Count a failed job; under torchrun end this rank now (the ranks cannot go on together)."""
    FAILED.append(name)
    if torchrun_rank() is not None and not under_submitit():  # submitit saves the result once the job returns
        _leave(1)


def _hydra_quiet_on_other_ranks() -> str | None:
    """Under torchrun, ranks other than 0 write nothing: Hydra's folders go to a temporary one, no logs."""
    rank = torchrun_rank()
    if not rank:
        return None
    tmp = tempfile.mkdtemp(prefix=f"distri-rank{rank}-")
    sys.argv += [
        "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
        f"hydra.run.dir={tmp}", f"hydra.sweep.dir={tmp}",
    ]  # fmt: skip
    return tmp


def _record_and_log(rec: dict[str, Any], d: dict[str, Any], job_dir: str, root: str, name: str) -> None:
    """``result.json`` first, then W&B (which can block or fail), then the sweep's line, whatever happens."""
    from distri.job.results import append_to_sweep, write_job_file
    from distri.job.wandb_logger import RunLogger, run_identity

    write_job_file(rec, job_dir)
    try:
        lg = dict(d["logger"])
        lg["dir"] = lg.get("dir") or job_dir
        run_name, tags = run_identity(d, name)
        lg["tags"] = [*tags, *(lg.get("tags") or [])]
        logger = RunLogger(
            lg, run_name=run_name, group=Path(root).name if root != job_dir else None, config=d
        )
        logger.log_result(rec, images=rec["images"][:LOGGED_IMAGES], captions=rec.get("prompts"))
        wandb_dir = logger.finish()
        if wandb_dir:
            rec["wandb_dir"] = str(wandb_dir)
            write_job_file(rec, job_dir)
            print(
                f"W&B ({logger.mode}): {wandb_dir}"
                + (f"  -> upload with: wandb sync {wandb_dir}" if logger.mode == "offline" else "")
            )
    except Exception as e:  # noqa: BLE001 - the record is on disk; W&B failing does not fail the job
        print(f"W&B logging failed ({type(e).__name__}: {e}); the record is in {job_dir}", file=sys.stderr)
    finally:
        append_to_sweep(rec, root)


def _refused(d: dict[str, Any], e: ConfigError, job_dir: str, root: str, name: str, t0: float) -> None:
    """A job refused by validation, before any worker: ``skipped`` when the strategy says the combination
    cannot run (:class:`~distri.config.Infeasible`; not a failure), else ``failed`` (a mistake to fix)."""
    from distri.job.execute import runtime_config
    from distri.job.record import failed_record
    from distri.job.results import records_of, write_result

    skipped = isinstance(e, Infeasible)
    print(f"{'skipped' if skipped else 'error'}: {e}", file=sys.stderr)
    rec = failed_record(runtime_config(d), e, output_dir=job_dir, wall_s=time.monotonic() - t0)
    before = records_of(root, rec["config_hash"])[-1:] if skipped else []
    if (torchrun_rank() or 0) == 0 and not (before and before[0]["error"] == rec["error"]):
        write_result(rec, job_dir, root)  # a sweep run again does not repeat its skipped lines
    if not skipped:
        _failed(name)


def _run_job(d: dict[str, Any], job_dir: str, root: str, name: str) -> None:
    from distri.job.execute import execute
    from distri.job.results import check_writable

    rank = torchrun_rank() or 0
    if rank == 0:
        check_writable(job_dir, root)  # an unwritable results file fails the job now, not after computing
    rec = execute(d, str(Path(job_dir).resolve()))
    if rank != 0:  # only global rank 0 writes and logs; it records a failure on any rank
        if rec["status"] != "ok":
            print(f"rank {rank}: job failed ({rec['error']}); rank 0 records it", file=sys.stderr)
            _failed(name)
        return
    _record_and_log(rec, d, job_dir, root, name)
    print(summary(rec))
    print(f"result: {Path(job_dir) / 'result.json'} (and a line in {Path(root) / 'results.jsonl'})")
    if rec["status"] == "interrupted":
        print(f"interrupted: {rec['error']}; the job is recorded as interrupted", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # Hydra's on_multirun_end will not run
            print(sweep_report(root))
        raise SystemExit(130)
    if rec["status"] != "ok":
        _failed(name)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> str:
    """One job; returns ``"failed"`` when it failed, else ``"done"``: the value Hydra's job return carries back
    to a launcher that ran it in another process (the SLURM launcher counts failed jobs from it)."""
    before = len(FAILED)
    _job(cfg)
    return "failed" if len(FAILED) > before else "done"


def _job(cfg: DictConfig) -> None:
    from distri.job.execute import already_done
    from distri.job.results import FolderInUse, JobFolderLock

    t0 = time.monotonic()
    job_dir, root, name = _paths()
    d = OmegaConf.to_container(cfg, resolve=True)
    try:
        validate(d)
    except ConfigError as e:
        _refused(d, e, job_dir, root, name, t0)
        return
    if already_done(d, root):
        print(
            f"skipped: already done (an ok record of this configuration is in {Path(root) / 'results.jsonl'}; "
            "force=true runs it again)",
            file=sys.stderr,
        )
        return
    try:
        with JobFolderLock(job_dir):
            _run_job(d, job_dir, root, name)
    except (FolderInUse, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        _failed(name)


if __name__ == "__main__":
    if torchrun_rank() is not None:
        defer_sigterm()  # from here on, torchrun's SIGTERM cannot cut a record short (see distri.torchrun)
    else:
        interrupt_on_sigterm()  # SIGTERM: the job is recorded as interrupted, its workers stopped
    _OTHER_RANK_DIR = _hydra_quiet_on_other_ranks()
    main()
    FAILED += remote_failures()  # jobs that ran in SLURM jobs (hydra/launcher=slurm), not in this process
    if FAILED:
        print(f"{len(FAILED)} job(s) failed: {', '.join(FAILED)}", file=sys.stderr)
    _leave(1 if FAILED else 0)
