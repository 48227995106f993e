"""Worker tasks and small models shared by the test-suite and the benchmarks.

Tasks run on every rank of a :class:`distri.launch.WorkerPool` (``pool.run("tests.parallel.tasks:NAME", ...)``).
The small UNets here are built from config dicts under a fixed seed, like diffusers' own fast tests.
"""

from __future__ import annotations

from typing import Any

import torch

from distri.parallel.strategy import strategy_from_config

SMALL_UNETS: dict[str, dict[str, Any]] = {
    # SDXL-shaped: 3 levels, 2 down-samplings, text_time added conditioning
    "sdxl": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 4, 4),
        norm_num_groups=8,
        cross_attention_dim=16,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 16,
    ),
    # SD-1.5-shaped: 4 levels, 3 down-samplings
    "sd15": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=4,
        norm_num_groups=8,
        cross_attention_dim=16,
    ),
}


def small_unet(kind: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SMALL_UNETS[kind])
    return unet.to(dtype).eval()


def unet_inputs(kind: str, batch: int, size: int, dtype: torch.dtype, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    cfg = SMALL_UNETS[kind]
    kw: dict[str, Any] = {
        "sample": torch.randn(batch, 4, size, size, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 7, cfg["cross_attention_dim"], generator=g).to(dtype),
    }
    if cfg.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 16, generator=g).to(dtype),
            "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch).to(dtype),
        }
    return kw


@torch.no_grad()
def sample_loop(unet, inputs: dict[str, Any], steps: int, handle=None) -> torch.Tensor:
    """A toy denoising loop ``x <- x - 0.1 * eps(x, t)`` over ``steps`` UNet calls; returns the final ``x``."""
    if handle is not None:
        handle.reset()
    x = inputs["sample"]
    for i in range(steps):
        t = torch.tensor(999 - i * (999 // max(steps, 1)))
        kw = {k: v for k, v in inputs.items() if k != "sample"}
        eps = unet(x, t, return_dict=False, **kw)[0]
        x = x - 0.1 * eps
    return x


def strategy_vs_single(
    env,
    kind: str,
    strategy: str,
    params: dict[str, Any] | None = None,
    cfg_split: bool = False,
    steps: int = 3,
    size: int = 16,
    dtype: str = "float64",
) -> dict[str, Any]:
    """Run the toy loop with the stock UNet and with ``strategy`` (a name) applied; return both and the ledger."""
    dt = getattr(torch, dtype)
    ctx = env.context(2 if cfg_split else 1)
    unet = small_unet(kind, dt)
    inputs = unet_inputs(kind, 2, size, dt)
    ref = sample_loop(unet, inputs, steps)
    spec = strategy_from_config({"name": strategy, "cfg_split": cfg_split, **(params or {})})
    handle = spec.apply(unet, ctx)
    out = sample_loop(unet, inputs, steps, handle)
    ledger = ctx.ledger.per_step()
    repeat = sample_loop(unet, inputs, steps, handle)  # a second call reuses the strategy's buffers
    handle.remove()
    again = sample_loop(unet, inputs, steps)
    return {
        "ref": ref,
        "out": out,
        "ledger": ledger,
        "repeat_equal": torch.equal(repeat, out),
        "restored": torch.equal(again, ref),
    }


def fail_on_rank(env, rank: int = 1, message: str = "planned failure") -> None:
    """Raise on ``rank`` while the other ranks block in a collective (tests the teardown path)."""
    import torch.distributed as dist

    if env.rank == rank:
        raise RuntimeError(message)
    dist.barrier()


def ledger_shapes(kind: str, size: int, batch: int = 2) -> dict[str, Any]:
    """Activation shapes of the stock small UNet at full resolution, recorded by forward hooks.

    Used for an independent count of what patch parallelism must exchange: input shapes of every 'same'
    convolution with a kernel above 1, token counts and inner widths of every self-attention, and the group
    count of every GroupNorm.
    """
    from diffusers.models.attention_processor import Attention

    unet = small_unet(kind)
    convs, attns, gns, hooks = [], [], [], []
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1 and name != "conv_in":
            hooks.append(
                m.register_forward_hook(lambda m, a, o: convs.append((tuple(a[0].shape), m.padding[0])))
            )
        elif isinstance(m, torch.nn.GroupNorm):
            hooks.append(m.register_forward_hook(lambda m, a, o: gns.append((a[0].shape[0], m.num_groups))))
        elif isinstance(m, Attention) and not m.is_cross_attention:
            hooks.append(
                m.register_forward_hook(
                    lambda m, a, o: attns.append((a[0].shape[0], a[0].shape[1], m.to_k.out_features))
                )
            )
    with torch.no_grad():
        unet(**unet_inputs(kind, batch, size, torch.float32), timestep=torch.tensor(10))
    for h in hooks:
        h.remove()
    return {"convs": convs, "attns": attns, "gns": gns}


def pipeline_vs_single(
    env,
    model: str,
    runs: list[dict[str, Any]],
    sampler: str = "ddim",
    steps: int = 4,
    size: int = 128,
    guidance_scale: float = 5.0,
    dtype: str = "float32",
    prompt: str = "a red bicycle leaning on a brick wall",
    seed: int = 0,
) -> dict[str, Any]:
    """The tiny pipeline's image from the stock UNet, then with each strategy of ``runs`` applied in turn.

    ``runs`` items: ``{"strategy": name, "params": {...}, "cfg_split": bool}``. Returns the
    reference image, one image per run, and each run's ledger summary (all steps: ``warmup_steps=0``).
    """
    from diffusers.utils import logging as dlog

    from distri.generate import generate
    from distri.models.loader import load_pipeline
    from distri.samplers import make_scheduler

    dlog.set_verbosity_error()
    from distri.worker.job import ensure_model

    family = "sdxl" if "sdxl" in model else "sd"
    model_cfg = {"name": model, "family": family, "source": "tiny", "id": model}
    ensure_model(env, model_cfg)
    pipe = load_pipeline(model_cfg, env.device, getattr(torch, dtype))
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)

    def gen():
        return generate(pipe, prompt, seed, steps, guidance_scale, size, size)

    out: dict[str, Any] = {"ref": gen(), "images": [], "comm": [], "per_step": []}
    for r in runs:
        ctx = env.context(2 if r.get("cfg_split") else 1)
        spec = {"name": r["strategy"], "cfg_split": bool(r.get("cfg_split")), **r.get("params", {})}
        handle = strategy_from_config(spec).apply(pipe.unet, ctx)
        handle.reset()
        out["images"].append(gen())
        out["comm"].append(ctx.ledger.summary(steps, 0))
        out["per_step"].append(ctx.ledger.per_step())
        handle.remove()
    out["restored"] = torch.equal(gen(), out["ref"])
    return out
