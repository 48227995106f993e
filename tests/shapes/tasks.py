"""Worker tasks for the shapes model's tests (run by a ``WorkerPool``, one call per rank)."""

from __future__ import annotations

from typing import Any

import torch

from distri.parallel.strategy import strategy_from_config

SHAPES_MODEL = {"name": "shapes_sdxl", "family": "sdxl", "source": "bundled", "id": "shapes_sdxl"}


def shapes_vs_single(
    env,
    captions: list[str],
    runs: list[dict[str, Any]],
    steps: int,
    guidance_scale: float = 5.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Images of ``captions`` (caption ``i`` with seed ``seed + i``) from the stock shapes pipeline, then with
    each strategy of ``runs`` (``{"strategy": name, "params": {...}}``) applied in turn."""
    from diffusers.utils import logging as dlog

    from distri.generate import generate
    from distri.models.loader import load_pipeline
    from distri.samplers import make_scheduler

    dlog.set_verbosity_error()
    pipe = load_pipeline(SHAPES_MODEL, env.device, torch.float32)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)

    def images() -> list[torch.Tensor]:
        return [generate(pipe, c, seed + i, steps, guidance_scale, 128, 128) for i, c in enumerate(captions)]

    out: dict[str, Any] = {"ref": images(), "images": []}
    for r in runs:
        handle = strategy_from_config({"name": r["strategy"], **r.get("params", {})}).apply(
            pipe.unet, env.context(1)
        )
        handle.reset()
        out["images"].append(images())
        handle.remove()
    return out
