"""Image-fidelity metrics against a reference (usually the single-device "original" output).

Images may be given as

* ``torch.Tensor`` of shape ``[C, H, W]`` (one image) or ``[N, C, H, W]`` (a batch), floating point in
  ``[0, 1]``; integer tensors (e.g. ``uint8``) are divided by 255;
* ``PIL.Image.Image`` (converted to RGB, divided by 255);
* ``numpy.ndarray`` in *channel-last* layout ``[H, W, C]`` or ``[N, H, W, C]`` (what diffusers returns with
  ``output_type="np"``), float in ``[0, 1]`` or integer (divided by 255).

All arithmetic is done in float64 on the CPU.

PSNR follows the DistriFusion evaluation: PSNR is computed *per image* (MSE over all channels and pixels of
that image) and the per-image values are averaged. Identical images have infinite PSNR; see
:func:`mean_psnr` for how infinities are aggregated and :func:`compare_to_reference` for how they are written
to JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "INF_STR",
    "compare_to_reference",
    "max_abs_err",
    "mean_abs_err",
    "mean_psnr",
    "psnr",
    "psnr_values",
]

INF_STR = "inf"
"""How an infinite PSNR is written in JSON results (``float("inf")`` parses it back)."""


def _to_chw(x: Any) -> torch.Tensor:
    """Convert one image or a batch to float64 tensors: ``[C, H, W]`` or ``[N, C, H, W]`` in image units."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
    elif hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode"):  # PIL.Image.Image
        import numpy as np

        arr = np.asarray(x.convert("RGB"))
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    elif type(x).__module__ == "numpy" and hasattr(x, "ndim"):
        import numpy as np

        arr = np.ascontiguousarray(x)
        t = torch.from_numpy(arr)
        if t.ndim == 3:
            t = t.permute(2, 0, 1)
        elif t.ndim == 4:
            t = t.permute(0, 3, 1, 2)
        else:
            raise ValueError(f"numpy images must be [H,W,C] or [N,H,W,C], got shape {tuple(arr.shape)}")
    else:
        raise TypeError(f"unsupported image type {type(x).__name__}")
    if t.ndim not in (3, 4):
        raise ValueError(f"images must be [C,H,W] or [N,C,H,W], got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        t = t.to(torch.float64)
    elif not t.is_floating_point():
        t = t.to(torch.float64) / 255.0
    return t.to(torch.float64)


def _as_image_list(images: Any) -> list[torch.Tensor]:
    """Turn a batch tensor/array or a sequence of images (each possibly a batch) into a list of [C,H,W]."""
    if isinstance(images, torch.Tensor) or type(images).__module__ == "numpy":
        t = _to_chw(images)
        return [t] if t.ndim == 3 else list(t.unbind(0))
    if hasattr(images, "convert") and hasattr(images, "mode"):  # a single PIL image
        return [_to_chw(images)]
    out: list[torch.Tensor] = []
    for im in images:
        t = _to_chw(im)
        out.extend([t] if t.ndim == 3 else list(t.unbind(0)))
    return out


def _pairs(list_a: Any, list_b: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    a, b = _as_image_list(list_a), _as_image_list(list_b)
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} images but {len(b)} references")
    if not a:
        raise ValueError("no images to compare")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(f"image {i}: shape {tuple(x.shape)} != reference shape {tuple(y.shape)}")
    return list(zip(a, b))


def _psnr_one(x: torch.Tensor, y: torch.Tensor, data_range: float) -> float:
    mse = float(torch.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def psnr(a: Any, b: Any, data_range: float = 1.0) -> float | list[float]:
    """Peak signal-to-noise ratio ``10 * log10(data_range**2 / MSE)`` in dB, per image.

    For one image (``[C, H, W]`` tensor, ``[H, W, C]`` array or a PIL image) returns a float; for a batch
    (``[N, C, H, W]``) returns one float per image. Identical images give ``float("inf")``.
    """
    ta, tb = _to_chw(a), _to_chw(b)
    if ta.shape != tb.shape:
        raise ValueError(f"shape mismatch: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    if ta.ndim == 3:
        return _psnr_one(ta, tb, data_range)
    return [_psnr_one(x, y, data_range) for x, y in zip(ta, tb)]


def psnr_values(list_a: Any, list_b: Any, data_range: float = 1.0) -> list[float]:
    """Per-image PSNR (dB) of paired images (sequences of images or batches); inf for identical pairs."""
    return [_psnr_one(x, y, data_range) for x, y in _pairs(list_a, list_b)]


def _aggregate_psnr(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("inf")
    return math.fsum(finite) / len(finite)


def mean_psnr(list_a: Any, list_b: Any, data_range: float = 1.0) -> float:
    """Mean of per-image PSNR (dB) over paired images, as the DistriFusion evaluation code averages it.

    Infinities (bit-identical pairs) are handled as follows: if *every* pair is identical the result is
    ``float("inf")``; otherwise the identical pairs are left out and the finite values are averaged (count the
    identical pairs with :func:`psnr_values`, or read ``n_identical`` from :func:`compare_to_reference`).
    Leaving them out is conservative: it never raises the mean. (A plain mean, as in the paper's
    torchmetrics-based code, would return inf as soon as one pair is identical.)
    """
    return _aggregate_psnr(psnr_values(list_a, list_b, data_range))


def max_abs_err(list_a: Any, list_b: Any) -> float:
    """Largest absolute pixel difference over all paired images, in image units (``[0, 1]`` scale)."""
    return max(float(torch.max(torch.abs(x - y))) for x, y in _pairs(list_a, list_b))


def mean_abs_err(list_a: Any, list_b: Any) -> float:
    """Mean over images of the per-image mean absolute pixel difference, in image units."""
    per = [float(torch.mean(torch.abs(x - y))) for x, y in _pairs(list_a, list_b)]
    return math.fsum(per) / len(per)


def compare_to_reference(
    images: Sequence[Any] | Any, refs: Sequence[Any] | Any, data_range: float = 1.0
) -> dict[str, Any]:
    """Fidelity of ``images`` against reference images ``refs`` (paired in order), as a JSON-safe dict.

    Returns ``psnr_vs_orig`` (:func:`mean_psnr`, dB; the *string* ``"inf"`` when every pair is identical,
    so the dict survives strict JSON), ``max_abs_err_vs_orig``, ``mean_abs_err_vs_orig`` (image units),
    ``n_images`` and ``n_identical`` (pairs with zero error, which are excluded from the PSNR mean).
    """
    pairs = _pairs(images, refs)
    values = [_psnr_one(x, y, data_range) for x, y in pairs]
    mean = _aggregate_psnr(values)
    abs_diffs = [torch.abs(x - y) for x, y in pairs]
    return {
        "psnr_vs_orig": mean if math.isfinite(mean) else INF_STR,
        "max_abs_err_vs_orig": max(float(d.max()) for d in abs_diffs),
        "mean_abs_err_vs_orig": math.fsum(float(d.mean()) for d in abs_diffs) / len(abs_diffs),
        "n_images": len(pairs),
        "n_identical": sum(1 for v in values if math.isinf(v)),
    }
