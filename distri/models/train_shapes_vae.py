"""The VAE phases of :mod:`distri.models.train_shapes` (1: the VAE on crops; 2: its decoder on whole images;
or, with ``--vae-from``, a trained pipeline's VAE instead), and what every phase shares: the scenes of a batch,
the per-step noise generators, a plain optimisation loop and atomic state saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from distri.data.shapes import make_scene, render

CROP = 64
"""Side of the random crops (aligned to the latent grid) the VAE is trained on: a quarter of the cost."""


def scene_batch(seed: int, start: int, n: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Scenes ``start .. start + n - 1`` of stream ``seed``: images in [-1, 1] (n, 3, size, size), captions."""
    scenes = [make_scene(seed, i) for i in range(start, start + n)]
    images = np.stack([np.asarray(render(s, size)[0]) for s in scenes])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, [s.caption for s in scenes]


def phase_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """The generator of step ``step`` of phase ``phase`` (1: VAE, 2: UNet, 3: decoder), seeded from all three."""
    return torch.Generator().manual_seed(seed * 1_000_003 + phase * 100_003 + step)


def vae_step(vae, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Loss of one VAE step: reconstruction MSE + 1e-6 * KL(posterior || N(0, 1)) per element."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=gen)).sample
    return F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean() / x[0].numel()


def optimise(desc: str, opt, start: int, steps: int, save_every: int, loss_at, checkpoint) -> None:
    """Steps ``start .. steps - 1`` of a plain phase (the VAE's, the decoder's): ``loss_at(step)``, one
    optimiser step, a tqdm bar; ``checkpoint(steps done)`` every ``save_every`` steps and at the end."""
    bar = tqdm(range(start, steps), desc=desc, mininterval=10)
    for step in bar:
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % save_every == 0 or step + 1 == steps:
            checkpoint(step + 1)


def train_vae(pipe, args, state: dict[str, Any]) -> None:
    vae = pipe.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    vae.train()

    def loss_at(step: int) -> torch.Tensor:
        x, _ = scene_batch(args.seed, step * args.vae_batch, args.vae_batch, args.size)
        gen = phase_generator(args.seed, 1, step)
        top, left = (8 * int(v) for v in torch.randint(0, (args.size - CROP) // 8 + 1, (2,), generator=gen))
        return vae_step(vae, x[:, :, top : top + CROP, left : left + CROP], gen)

    def checkpoint(done: int) -> None:
        state.update(vae_step=done, vae_opt=opt.state_dict(), vae=vae.state_dict())
        save_state(state, args.state)

    optimise("vae", opt, state.get("vae_step", 0), args.vae_steps, args.save_every, loss_at, checkpoint)
    vae.eval().requires_grad_(False)
    if "scaling_factor" not in state:
        with torch.no_grad():  # held batch: scenes of another stream
            x, _ = scene_batch(args.seed + 1, 0, 256, args.size)
            std = vae.encode(x).latent_dist.mean.std().item()
        state["scaling_factor"] = 1.0 / std
    vae.register_to_config(scaling_factor=state["scaling_factor"])


def decoder_step(vae, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Loss of one decoder fine-tuning step: reconstruction MSE of whole images from latents sampled from the
    frozen encoder's posterior (the latents the UNet learns to produce)."""
    with torch.no_grad():
        z = vae.encode(x).latent_dist.sample(generator=gen)
    return F.mse_loss(vae.decode(z).sample, x)


def train_decoder(pipe, args, state: dict[str, Any]) -> None:
    """Fine-tune the VAE's decoder (and ``post_quant_conv``) on whole images with the encoder frozen, as
    Stable Diffusion's ft-MSE decoders were: the latent space, and so the UNet phase, is unchanged."""
    vae = pipe.vae
    if "decoder" in state:
        vae.load_state_dict(state["decoder"])
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    if "decoder_opt" in state:
        opt.load_state_dict(state["decoder_opt"])
    vae.decoder.train().requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        x, _ = scene_batch(args.seed + 2, step * args.decoder_batch, args.decoder_batch, args.size)
        return decoder_step(vae, x, phase_generator(args.seed, 3, step))

    def checkpoint(done: int) -> None:
        state.update(decoder_step=done, decoder_opt=opt.state_dict(), decoder=vae.state_dict())
        save_state(state, args.state)

    start = state.get("decoder_step", 0)
    optimise("decoder", opt, start, args.decoder_steps, args.save_every, loss_at, checkpoint)
    vae.eval().requires_grad_(False)


def reuse_vae(pipe, folder: Path) -> int | None:
    """Phases 1 and 2 replaced: the VAE (weights and scaling factor) of the pipeline folder ``folder``; returns
    the decoder steps its ``training.json`` records (None without one)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    try:
        pipe.vae.load_state_dict(vae.state_dict())
    except RuntimeError as e:
        raise SystemExit(f"--vae-from {folder}: its VAE is not this script's architecture ({e})") from None
    pipe.vae.register_to_config(scaling_factor=vae.config.scaling_factor)
    pipe.vae.eval().requires_grad_(False)
    record = folder / "training.json"
    return json.loads(record.read_text()).get("decoder_step") if record.is_file() else None


def save_state(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
