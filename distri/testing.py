"""Worker tasks and small models shared by the test-suite and the benchmarks.

Tasks run on every rank of a :class:`distri.launch.WorkerPool` (``pool.run("distri.testing:NAME", ...)``).
The small UNets here are built from config dicts under a fixed seed, like diffusers' own fast tests.
"""

from __future__ import annotations

from typing import Any

import torch

from distri.launch import locate

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
    """Run the toy loop with the stock UNet and with ``strategy`` applied; return both and the ledger."""
    dt = getattr(torch, dtype)
    ctx = env.context(2 if cfg_split else 1)
    unet = small_unet(kind, dt)
    inputs = unet_inputs(kind, 2, size, dt)
    ref = sample_loop(unet, inputs, steps)
    handle = locate(strategy)(unet, ctx, cfg_split=cfg_split, **(params or {}))
    out = sample_loop(unet, inputs, steps, handle)
    ledger = ctx.ledger.per_step()
    handle.remove()
    again = sample_loop(unet, inputs, steps)
    return {"ref": ref, "out": out, "ledger": ledger, "restored": torch.equal(again, ref)}
