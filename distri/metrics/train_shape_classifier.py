"""Train the shape-accuracy classifier (:class:`distri.metrics.shapes.ShapeNet`) on procedural scenes.

``python -m distri.metrics.train_shape_classifier [--steps N] [--out FILE]``: scenes of stream 100 of
:mod:`distri.data.shapes` (the diffusion model trains on stream 0; held-out captions are stream 10000) rendered
at 128x128, with their label masks sampled at the centre of each 8x8 cell as the 16x16 target map. Each batch
is perturbed so that the classifier also reads imperfect generated images: a Gaussian blur of random width
(sigma up to 2 px), a brightness gain and a per-channel offset, and Gaussian pixel noise. Loss: cross-entropy
of the class map plus cross-entropy of the background. Adam, deterministic given ``--seed`` (batch ``s`` is
scenes ``s * batch ...``; its perturbations come from a generator seeded with ``(seed, s)``). The weights are
saved as safetensors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from distri.data.shapes import BACKGROUNDS, make_scene, render
from distri.metrics.shapes import MAP_SIDE, WEIGHTS, ShapeNet

STREAM = 100
SIDE = 128


def labelled_batch(stream: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``[n, 3, 128, 128]`` in [0, 1], target maps ``[n, 16, 16]`` and backgrounds ``[n]``."""
    cell = SIDE // MAP_SIDE
    scenes = [make_scene(stream, i) for i in range(start, start + n)]
    rendered = [render(s, SIDE) for s in scenes]
    images = np.stack([np.asarray(im) for im, _ in rendered])
    maps = np.stack([m[cell // 2 :: cell, cell // 2 :: cell] for _, m in rendered])
    bgs = [list(BACKGROUNDS).index(s.background) for s in scenes]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(maps).long(), torch.tensor(bgs)


def perturb(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, brightness gain, per-channel offset and pixel noise, each drawn per image from ``gen``."""
    from torchvision.transforms.functional import gaussian_blur

    n = x.shape[0]
    sigma = 0.1 + 1.9 * torch.rand(n, generator=gen)
    x = torch.stack([gaussian_blur(im, kernel_size=9, sigma=float(s)) for im, s in zip(x, sigma)])
    gain = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    offset = 0.1 * torch.rand(n, 3, 1, 1, generator=gen) - 0.05
    noise = 0.06 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return (x * gain + offset + noise).clamp(0, 1)


def train(steps: int, batch: int, seed: int, lr: float) -> ShapeNet:
    torch.manual_seed(seed)
    net = ShapeNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(range(steps), desc="shape classifier", mininterval=10)
    for step in bar:
        x, maps, bgs = labelled_batch(STREAM + seed, step * batch, batch)
        class_logits, bg_logits = net(perturb(x, torch.Generator().manual_seed(seed * 1_000_003 + step)))
        loss = F.cross_entropy(class_logits, maps) + F.cross_entropy(bg_logits, bgs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(prog="python -m distri.metrics.train_shape_classifier", description=__doc__)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = train(args.steps, args.batch, args.seed, args.lr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
