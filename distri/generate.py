"""One image from a stock diffusers text-to-image pipeline, with seeded CPU noise, as a [3, H, W] tensor;
saving it as a PNG and reading it back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def generate(
    pipe: Any,
    prompt: str,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    callback: Callable[..., dict[str, Any]] | None = None,
) -> torch.Tensor:
    """Run ``pipe`` on one prompt and return the image as a float32 CPU tensor [3, height, width] in [0, 1].

    The initial noise comes from ``torch.Generator(device="cpu").manual_seed(seed)``, so a run on CPU and one
    on GPU start from the same latents. ``callback`` is passed as ``callback_on_step_end`` (diffusers' signature
    ``callback(pipe, step, timestep, callback_kwargs) -> dict``) when given. The negative prompt is empty
    (SDXL: zero negative embeddings, its default ``force_zeros_for_empty_prompt``).
    """
    kwargs: dict[str, Any] = {}
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = pipe(
        prompt=prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        generator=generator,
        output_type="pt",
        **kwargs,
    )
    image = out.images[0]
    return image.detach().to(device="cpu", dtype=torch.float32)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """A [3, H, W] tensor in [0, 1] as the uint8 [3, H, W] CPU tensor a PNG of it holds (clamped, rounded)."""
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected an image tensor of shape [3, H, W], got {tuple(img.shape)}")
    return (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def to_pil(img: torch.Tensor) -> Image.Image:
    """Convert a [3, H, W] tensor (in [0, 1], or uint8 from :func:`to_uint8`) to an RGB PIL image."""
    arr = img if img.dtype == torch.uint8 else to_uint8(img)
    return Image.fromarray(np.ascontiguousarray(arr.permute(1, 2, 0).numpy()))


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    """Save a [3, H, W] image (float in [0, 1] or uint8) as a PNG at ``path`` (folders created); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(img).save(path, format="PNG")
    return path


def load_png(path: str | Path) -> torch.Tensor:
    """Read an RGB PNG back as a uint8 [3, H, W] tensor (what :func:`to_uint8` gave when it was saved)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
