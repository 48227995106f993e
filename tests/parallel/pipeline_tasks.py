"""Worker tasks on the tiny diffusers pipelines (importable by spawned workers)."""

from __future__ import annotations

from typing import Any

import torch


def patched_pipeline_twice(
    env, model: str, params: dict[str, Any], steps: int = 8, size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """The stock pipeline's image, then two direct calls of the patched pipeline with no ``handle.reset()``
    in between (as a notebook or a user's own loop would call it)."""
    from diffusers.utils import logging as dlog

    from distri.generate import generate
    from distri.models.loader import load_pipeline
    from distri.parallel.displaced_patch import apply
    from distri.worker.job import ensure_model

    dlog.set_verbosity_error()
    model_cfg = {"name": model, "family": "sdxl" if "sdxl" in model else "sd", "source": "tiny", "id": model}
    ensure_model(env, model_cfg)
    pipe = load_pipeline(model_cfg, env.device, torch.float32)

    def gen():
        return generate(pipe, "a red bicycle leaning on a brick wall", seed, steps, 5.0, size, size)

    ref = gen()
    handle = apply(pipe.unet, env.context(1), **params)
    first, second = gen(), gen()
    handle.remove()
    return {"ref": ref, "first": first, "second": second}
