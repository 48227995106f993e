"""Hydra callbacks of a distri sweep (configured in conf/config.yaml, ``hydra.callbacks.distri_sweep``).

Like run.py this file sees Hydra (the library, distri/, does not). :class:`SweepProgress` prints a
``job k/N`` line as each job of a multirun starts and, when the multirun ends, the sweep's table
(:func:`distri.job.summary.sweep_report`: the pure function :func:`distri.job.summary.sweep_table` over the
sweep folder's ``results.jsonl``, every job recorded there, also those of earlier runs of a resumed sweep).
A multirun ended early by Ctrl-C or SIGTERM never reaches ``on_multirun_end``: run.py prints the same table
then. Under ``torchrun`` or ``srun`` only global rank 0 prints.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _rank0() -> bool:
    from distri.torchrun import torchrun_rank

    return (torchrun_rank() or 0) == 0


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper makes of the command line's (and ``hydra.sweeper.params``')
    overrides: the product of the swept values' counts, a later override of a key replacing an earlier one, as
    the sweeper does (through Hydra's public override parser); None for another sweeper or a sweep it refuses."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    counts: dict[str, int] = {}
    for override in OverridesParser.create().parse_overrides([*params, *task]):
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return None  # e.g. an interval sweep: the basic sweeper rejects it, and says so
        discrete = override.is_sweep_override()
        counts[override.get_key_element()] = len(list(override.sweep_string_iterator())) if discrete else 1
    return math.prod(counts.values())


class SweepProgress(Callback):
    """``job k/N`` as each job of a multirun starts; the sweep's table when it ends."""

    def __init__(self) -> None:
        self.total: int | None = None  # known where the multirun started (not on a SLURM node)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.total = count_jobs(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hc = config.hydra
        if hc.mode != RunMode.MULTIRUN or not _rank0():
            return
        of = f"/{self.total}" if self.total else ""
        overrides = " ".join(hc.overrides.task)
        print(f"distri: job {hc.job.num + 1}{of}: {overrides}", file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from distri.job.summary import sweep_report

        report = sweep_report(config.hydra.sweep.dir) if _rank0() else None
        if report:
            print(report)
