"""Sampler (scheduler) choice: the same base scheduler config, re-instantiated as DDIM, Euler or DPM-Solver++.

``make_scheduler(name, pipe.scheduler.config)`` keeps the model's noise schedule (betas, prediction type,
timestep spacing, steps offset) and changes only the solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, SchedulerMixin

SAMPLERS: tuple[str, ...] = ("ddim", "euler", "dpmpp")
"""Valid sampler names."""

_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    # DPM-Solver++(2M): second-order multistep, data prediction.
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """Build sampler ``name`` (one of :data:`SAMPLERS`) with ``Scheduler.from_config(base_config)``.

    ``base_config`` is a scheduler config such as ``pipe.scheduler.config``; keys the chosen scheduler does not
    take are ignored. ``dpmpp`` is ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"`` and
    ``solver_order=2`` (these two override the base config). Raises ValueError for an unknown name.
    """
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    cls, overrides = _SCHEDULERS[name]
    return cls.from_config(dict(base_config), **overrides)
