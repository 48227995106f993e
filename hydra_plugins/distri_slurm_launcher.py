"""Hydra glue for SLURM: the launcher behind ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml).

Like run.py this file sees Hydra (the library, distri/, does not); it lives in the ``hydra_plugins`` namespace
because Hydra takes launchers from there only (found there when run.py's folder is on the path). It is hydra-submitit-launcher's SLURM
launcher (the optional extra ``slurm``) with two changes:

* **Resources per job.** The plugin resolves its settings once, from the sweep's base configuration, so a
  sweep over ``world_size=1,2,4`` would give every job the same number of tasks. Here each job's settings are
  resolved from that job's own configuration (``tasks_per_node: ${world_size}``), checked (``nodes *
  tasks_per_node`` must be ``world_size``) before anything is submitted, and jobs with equal settings go to
  SLURM together as one job array.
* **Only global rank 0 writes.** Every task of a job runs the Hydra job (``srun`` starts one per rank;
  :mod:`distri.slurm` makes them torchrun-style ranks); on the other ranks Hydra's output folder is a
  temporary one, removed afterwards, and its job log is off, as under torchrun (see run.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

try:  # the optional extra "slurm"; without it Hydra says that hydra/launcher/submitit_slurm is missing
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _PluginLauncher
except ImportError:  # then SlurmLauncher below is no Hydra plugin, and Hydra does not register it
    _PluginLauncher = object

_INIT_KEYS = ("submitit_folder", "max_num_timeout")  # the executor's own; the rest are job parameters
_FAILED: list[str] = []  # this process's jobs that failed on SLURM (run.py's main returned "failed")


def remote_failures() -> list[str]:
    """The jobs of this process's sweeps that failed in SLURM jobs, for run.py's exit code (its own count
    only sees jobs that ran in its process)."""
    return list(_FAILED)


class SlurmLauncher(_PluginLauncher):
    """One SLURM job per sweep job, with that job's own resources (``world_size`` tasks)."""

    def __call__(self, sweep_overrides: list[str], *args: Any) -> JobReturn:
        rank = os.environ.get("SLURM_PROCID", "0")
        if rank == "0":
            return super().__call__(sweep_overrides, *args)
        tmp = tempfile.mkdtemp(prefix=f"distri-rank{rank}-")
        quiet = ["hydra.output_subdir=null", "hydra/job_logging=disabled", f"hydra.sweep.dir={tmp}"]
        try:
            return super().__call__([*sweep_overrides, *quiet], *args)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def job_params(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The launcher settings of one job, resolved from its own configuration, checked."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        params.pop("_target_", None)
        ranks = params["nodes"] * params["tasks_per_node"]
        if ranks != cfg.world_size:
            raise ValueError(
                f"job {' '.join(overrides) or '(no overrides)'}: SLURM would start nodes x tasks_per_node = "
                f"{params['nodes']} x {params['tasks_per_node']} = {ranks} ranks but world_size="
                f"{cfg.world_size}; set hydra.launcher.tasks_per_node=world_size/nodes"
            )
        return params

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import cloudpickle
        import submitit

        assert self.config is not None
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks need not import this file
        groups: dict[str, list[int]] = {}
        params = [self.job_params(o) for o in job_overrides]  # every job checked before any is submitted
        for i, p in enumerate(params):
            groups.setdefault(json.dumps(p, sort_keys=True), []).append(i)
        os.makedirs(str(self.config.hydra.sweep.dir), exist_ok=True)
        jobs: dict[int, Any] = {}
        for members in groups.values():
            p = dict(params[members[0]])
            init = {k: p.pop(k) for k in _INIT_KEYS}
            executor = submitit.AutoExecutor(
                cluster="slurm", folder=init["submitit_folder"], slurm_max_num_timeout=init["max_num_timeout"]
            )
            base = set(OmegaConf.structured(BaseQueueConf).keys())  # as the plugin: the others get "slurm_"
            executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in p.items()})
            args = []
            for i in members:
                idx = initial_job_idx + i
                print(f"[slurm] #{idx}: {' '.join(filter_overrides(job_overrides[i]))}", file=sys.stderr)
                args.append((list(job_overrides[i]), "hydra.sweep.dir", idx, f"job_id_for_{idx}"))
            state = Singleton.get_state()
            submitted = executor.map_array(self, *zip(*[(*a, state) for a in args]))
            jobs.update(zip(members, submitted))
        returns = [jobs[i].results()[0] for i in range(len(job_overrides))]
        _FAILED.extend(
            f"#{initial_job_idx + i}" for i, r in enumerate(returns)
            if r.status == JobStatus.FAILED or (r.status == JobStatus.COMPLETED and r.return_value == "failed")
        )  # fmt: skip
        return returns
