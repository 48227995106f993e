"""Checks that read files, run before any worker starts: each bad input fails the job in seconds, once, with a
message naming what to change (the pure config checks are :func:`distri.config.validate`)."""

from __future__ import annotations

from typing import Any

from distri.config import ConfigError


def preflight(cfg: dict[str, Any]) -> None:
    """Raise :class:`~distri.config.ConfigError` listing every problem: a malformed fault, an unreadable,
    malformed or empty captions file, captions a shapes model cannot draw, real weights that are missing while offline, a metric backbone that
    ``metrics.backbones=real`` needs but the caches lack. Prints which metric backbones the job will use."""
    from distri.faults import fault_for
    from distri.models.loader import ModelNotFoundError, check_available
    from distri.prompts import load_prompts

    problems = []
    try:
        fault_for(cfg.get("fault"))
    except ValueError as e:
        problems.append(str(e))
    try:
        prompts = load_prompts(cfg["prompts"])
        if not prompts:
            problems.append("prompts: the prompt list is empty; drop prompts.limit=0 or give prompts")
        problems += _caption_problems(cfg["model"], prompts)
    except (OSError, ValueError) as e:
        problems.append(f"prompts: {e}")
    try:
        check_available(cfg["model"])
    except ModelNotFoundError as e:
        problems.append(str(e))
    problems += _backbone_problems(cfg)
    if problems:
        raise ConfigError(problems)


def _caption_problems(model_cfg: dict[str, Any], prompts: list[str]) -> list[str]:
    """A shapes model (``model.domain=shapes``) needs captions of the shapes grammar (its metric parses them)."""
    if model_cfg.get("domain") != "shapes":
        return []
    from distri.data.shapes import parse_caption

    for prompt in prompts:
        try:
            parse_caption(prompt)
        except ValueError as e:
            return [f"model={model_cfg['name']} draws procedural shapes and needs shapes captions (prompts=shapes "
                    f"or prompts.prompts=[...] in their grammar): {e}"]  # fmt: skip
    return []


def _backbone_problems(cfg: dict[str, Any]) -> list[str]:
    """The metric backbones, resolved without loading anything (``real``: every file must be cached)."""
    from distri.metrics.backbones import BackboneMissingError, resolve_backbones
    from distri.metrics.options import job_metric_config, metric_problems

    if not cfg["metrics"].get("compute"):
        return []
    options = job_metric_config(cfg)
    problems = metric_problems(options)
    if problems:
        return problems
    try:
        print(f"distri: metrics: {resolve_backbones(options).summary()}", flush=True)
    except BackboneMissingError as e:
        return [str(e)]
    return []
