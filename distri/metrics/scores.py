"""PSNR, LPIPS, FID and CLIP score over image sets on disk, streamed in batches through the real libraries.

* PSNR: per image, ``10 log10(1 / MSE)`` with pixel values in ``[0, 1]`` (data range 1; MSE over all channels
  and pixels of the 8-bit image, in float64), then averaged over images, as in the paper's evaluation.
* LPIPS: the ``lpips`` package's ``LPIPS.forward(x, y, normalize=True)`` (inputs in ``[0, 1]``, which lpips scales
  to ``[-1, 1]``), per image, averaged.
* FID: clean-fid's clean mode (each image resized to 299x299 by PIL bicubic in float, then the feature extractor;
  ``get_files_features`` + ``fid_from_feats``, i.e. what ``compute_fid(dir1, dir2)`` does), or torchmetrics'
  ``FrechetInceptionDistance`` with the same resize and feature extractor given as its ``feature`` module.
* CLIP score: torchmetrics' ``CLIPScore`` (``max(100 * mean cosine(image, caption), 0)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distri.metrics.images import batches


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image PSNR (dB, data range [0, 1]) of two ``uint8`` batches ``[B, 3, H, W]``; inf when identical."""
    diff = (a.double() - b.double()) / 255.0
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return [math.inf if float(m) == 0.0 else -10.0 * math.log10(float(m)) for m in mse]


def mean_psnr(values: Sequence[float]) -> tuple[float | None, int]:
    """``(mean of the finite values, number of infinite ones)``; the mean is ``None`` when every pair is identical.

    Bit-identical pairs have infinite PSNR. They are counted, and left out of the mean (which they could only
    raise), so the mean is always a finite float or ``None``: JSON-safe, and never a string.
    """
    finite = [v for v in values if math.isfinite(v)]
    n_identical = len(values) - len(finite)
    return (math.fsum(finite) / len(finite) if finite else None), n_identical


def paired_scores(
    images: Sequence[Path],
    refs: Sequence[Path],
    *,
    lpips_model: Any = None,
    psnr: bool = True,
    resize_refs: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "",
) -> dict[str, list[float]]:
    """Per-pair PSNR and max / mean absolute pixel difference in ``[0, 1]`` units (``psnr``) and LPIPS
    (``lpips_model``, an ``lpips.LPIPS``) of two paired image sets.

    One pass over the files; ``resize_refs`` resizes each reference to its image (G.T. images).
    """
    out: dict[str, list[float]] = {"psnr": [], "max_abs": [], "mean_abs": [], "lpips": []}
    for a, b in batches(
        images, refs, batch_size=batch_size, num_workers=num_workers, resize_last=resize_refs, desc=desc,
        progress=progress,
    ):  # fmt: skip
        if psnr:
            out["psnr"] += psnr_uint8(a, b)
            diff = (a.double() - b.double()).abs().flatten(1) / 255.0
            out["max_abs"] += diff.max(dim=1).values.tolist()
            out["mean_abs"] += diff.mean(dim=1).tolist()
        if lpips_model is not None:
            with torch.no_grad():
                x, y = (t.to(device, torch.float32) / 255.0 for t in (a, b))
                out["lpips"] += lpips_model(x, y, normalize=True).flatten().double().cpu().tolist()
    return out


def clean_fid_features(
    paths: Sequence[Path],
    extractor: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "",
) -> np.ndarray:
    """Features ``[N, d]`` of the images, through clean-fid's clean-mode loader and ``extractor``."""
    from cleanfid.fid import get_files_features

    return get_files_features(
        [str(p) for p in paths], model=extractor, num_workers=num_workers, batch_size=batch_size,
        device=torch.device(device), mode="clean", description=desc, verbose=progress,
    )  # fmt: skip


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """clean-fid's Fréchet distance between the Gaussians fitted to two feature sets."""
    from cleanfid.fid import fid_from_feats

    return float(fid_from_feats(feats1, feats2))


def _clean_resized(paths: Sequence[Path], batch_size: int, num_workers: int, desc: str, progress: bool):
    from cleanfid.utils import ResizeDataset
    from tqdm import tqdm

    data = ResizeDataset([str(p) for p in paths], mode="clean")
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return tqdm(loader, desc=desc, disable=not progress)


def torchmetrics_fid(
    images: Sequence[Path],
    refs: Mapping[str, Sequence[Path]],
    feature: torch.nn.Module,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """FID of ``images`` against each reference set, with torchmetrics' ``FrechetInceptionDistance``.

    Images are resized as in clean-fid's clean mode, and ``feature`` (an ``nn.Module`` with ``num_features``) is
    torchmetrics' feature extractor. The generated images' statistics are accumulated once and kept
    (``reset_real_features=False``; FID is symmetric, so they stand in torchmetrics' "real" slot).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    # sync_on_compute=False: this process computes the metric alone, even inside an initialised process group
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=False, sync_on_compute=False).to(
        device
    )
    for batch in _clean_resized(images, batch_size, num_workers, "FID (torchmetrics) generated", progress):
        metric.update(batch.to(device), real=True)
    out = {}
    for name, paths in refs.items():
        metric.reset()
        for batch in _clean_resized(paths, batch_size, num_workers, f"FID (torchmetrics) {name}", progress):
            metric.update(batch.to(device), real=False)
        out[name] = float(metric.compute())
    return out


def clip_score(
    images: Sequence[Path],
    prompts: Sequence[str],
    loader: Callable[[], tuple[Any, Any]],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
) -> float:
    """torchmetrics' ``CLIPScore`` of image ``i`` with ``prompts[i]``; ``loader`` gives (model, processor)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    metric = CLIPScore(model_name_or_path=loader, sync_on_compute=False).to(device)  # see torchmetrics_fid
    start = 0
    for (imgs,) in batches(images, batch_size=batch_size, num_workers=num_workers, desc="CLIP score",
                           progress=progress):  # fmt: skip
        with torch.no_grad():
            metric.update(imgs.to(device), list(prompts[start : start + len(imgs)]))
        start += len(imgs)
    return float(metric.compute())
