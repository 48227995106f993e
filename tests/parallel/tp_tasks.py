"""Worker tasks and small UNets for the tensor-parallelism tests (``tests/parallel/test_tensor.py``).

The tasks run inside :class:`distri.launch.WorkerPool` workers, so they live in an importable module. Every
rank builds the same UNet from a config dict with a fixed seed, computes the single-device reference output
locally, then applies ``tensor`` parallelism and compares.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from distri.launch import WorkerEnv
from distri.parallel import tensor

LATENT = 16  # latent side of the test inputs
TEXT_LEN = 8  # encoder tokens

# SDXL-shaped: 3 levels, text_time added conditioning, 2 transformer layers at the lowest level.
# attention_head_dim is the head *count* per level in diffusers' SD configs; level 0 has no attention.
SDXL_SHAPED: dict[str, Any] = {
    "sample_size": LATENT,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 2,
    "attention_head_dim": (2, 4, 8),
    "transformer_layers_per_block": (1, 1, 2),
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}

# SD1.5-shaped: 4 levels, the last without attention, conv proj_in/proj_out.
SD15_SHAPED: dict[str, Any] = {
    "sample_size": LATENT,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 2,
    "attention_head_dim": 4,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}

# SD-shaped with scale-shift time conditioning in the ResNets (time_emb_proj emits [scale; shift]).
SD_SCALE_SHIFT: dict[str, Any] = {**SD15_SHAPED, "resnet_time_scale_shift": "scale_shift"}

CONFIGS = {"sdxl": SDXL_SHAPED, "sd15": SD15_SHAPED, "sd_scale_shift": SD_SCALE_SHIFT}


def build_unet(model: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> UNet2DConditionModel:
    """The test UNet ``model`` (a key of :data:`CONFIGS`), with every parameter perturbed so that no bias is zero
    and no norm weight is one (a wrongly sliced shard then shows in the output)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**CONFIGS[model])
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=0.05)
    # .double()/.float(), not .to(dtype): diffusers' ModelMixin.to warns about fp32-pinned modules.
    return (unet.double() if dtype == torch.float64 else unet.float()).eval()


def make_inputs(
    model: str, batch: int = 2, dtype: torch.dtype = torch.float64, seed: int = 1
) -> dict[str, Any]:
    """UNet keyword arguments: random latents, a timestep, encoder states and (SDXL) added conditioning."""
    g = torch.Generator().manual_seed(seed)
    cfg = CONFIGS[model]
    kw: dict[str, Any] = {
        "sample": torch.randn(batch, 4, LATENT, LATENT, generator=g, dtype=dtype),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(
            batch, TEXT_LEN, cfg["cross_attention_dim"], generator=g, dtype=dtype
        ),
    }
    if cfg.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 32, generator=g, dtype=dtype),
            "time_ids": torch.tensor(
                [[LATENT * 8, LATENT * 8, 0, 0, LATENT * 8, LATENT * 8]] * batch, dtype=dtype
            ),
        }
    return kw


def tp_check(env: WorkerEnv, model: str, cfg_split: bool, dtype: str = "float64", steps: int = 2) -> dict:
    """Reference vs tensor-parallel output, ledger per step, parameter report, the state after remove()."""
    dt = getattr(torch, dtype)
    ctx = env.context(2 if cfg_split else 1)
    unet = build_unet(model, dt)
    inputs = make_inputs(model, dtype=dt)
    n_params = sum(p.numel() for p in unet.parameters())
    # one pipeline call's steps: decreasing timesteps (a timestep that does not decrease starts a new call)
    step_inputs = [{**inputs, "timestep": inputs["timestep"] - s} for s in range(steps)]
    with torch.no_grad():
        refs = [unet(**kw).sample for kw in step_inputs]
        ref = refs[0]
        handle = tensor.apply(unet, ctx, cfg_split=cfg_split)
        outs = [unet(**kw).sample for kw in step_inputs]
        ledger = ctx.ledger.per_step()
        report = handle.param_report()
        handle.remove()
        after = unet(**inputs).sample
    return {
        "par_size": ctx.par_size,
        "shape_ok": all(o.shape == ref.shape for o in outs),
        "max_err": max(float((o - r).abs().max()) for o, r in zip(outs, refs)),
        "ref_max": float(ref.abs().max()),
        "equal": all(torch.equal(o, r) for o, r in zip(outs, refs)),
        "ledger": {s: {k: dict(v) for k, v in d.items()} for s, d in ledger.items()},
        "report": report,
        "skipped": list(handle.skipped),
        "restored_identical": torch.equal(after, ref),
        "restored_params": sum(p.numel() for p in unet.parameters()) == n_params,
        "restored_processors": all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values()),
    }


def tp_pipeline_check(env: WorkerEnv, name: str, cfg_split: bool, cache_dir: str, steps: int = 2) -> dict:
    """End to end through :func:`distri.generate.generate` on a tiny pipeline: stock vs tensor parallel."""
    from distri.generate import generate
    from distri.models.loader import load_pipeline
    from distri.models.tiny import build_tiny

    # Build on rank 0 only: transformers 5 ``save_pretrained`` silently skips the weight files on ranks != 0
    # once torch.distributed is initialised, so a build won by another rank would lack its text encoders.
    if env.rank == 0:
        build_tiny(name, cache_dir)
    env.context(1).barrier()
    family = "sdxl" if "sdxl" in name else "sd"
    pipe = load_pipeline({"name": name, "family": family, "cache_dir": cache_dir}, env.device, torch.float32)
    kw = {"prompt": "a red cube", "seed": 3, "num_inference_steps": steps, "guidance_scale": 5.0}
    ref = generate(pipe, height=64, width=64, **kw)
    ctx = env.context(2 if cfg_split else 1)
    handle = tensor.apply(pipe.unet, ctx, cfg_split=cfg_split)
    handle.reset()
    out = generate(pipe, height=64, width=64, **kw)
    handle.remove()
    return {"max_err": float((out - ref).abs().max()), "bytes": ctx.ledger.summary(steps)["bytes_per_step"]}


def tp_free_full(env: WorkerEnv) -> dict:
    """``free_full=True``: the full layers are freed (weakref dies), same output, remove() raises."""
    import gc
    import weakref

    ctx = env.context(1)
    unet = build_unet("sd15")
    inputs = make_inputs("sd15")
    full_conv = weakref.ref(unet.conv_out)
    with torch.no_grad():
        ref = unet(**inputs).sample
        handle = tensor.apply(unet, ctx, free_full=True)
        gc.collect()
        err = float((unet(**inputs).sample - ref).abs().max())
    try:
        handle.remove()
        remove_error = ""
    except RuntimeError as e:
        remove_error = str(e)
    return {
        "freed": full_conv() is None,
        "max_err": err,
        "report": handle.param_report(),
        "remove_error": remove_error,
    }
