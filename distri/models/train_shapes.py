"""Train ``shapes_sdxl``: a tiny SDXL-shaped pipeline that draws the procedural shapes of :mod:`distri.data.shapes`.

``python -m distri.models.train_shapes [--out DIR] [--size 128] [--vae-steps N] [--unet-steps N] ...``

Three phases, on CPU (``torch.set_num_threads(--threads)``, default 1: on a 2-core machine shared with other
work, 2 threads made a step up to 10 times slower than 1, their synchronisation waiting on descheduled threads),
deterministic given ``--seed`` and the thread count: batch ``s`` of a phase holds scenes
``s * batch ... (s + 1) * batch - 1`` of the training stream and its noise comes from a generator seeded with
``(seed, phase, s)``, so a resumed run continues exactly. Only the UNet's final learning-rate decay
(``--decay-steps``) depends on the total number of steps: before it, a run stopped after ``N`` UNet steps
equals a run with ``--unet-steps N``.

1. The VAE (``AutoencoderKL``, 4 levels, scale factor 8, no attention in its middle block) alone, on random
   64x64 crops of the scenes: mean squared reconstruction error plus a KL term of weight 1e-6 per element
   (the weighting of Stable Diffusion's autoencoders, without their adversarial and perceptual terms). It is then frozen and its ``scaling_factor``
   set to 1 / std of the latents of a held batch, so the diffusion model sees unit-variance latents.
2. The decoder alone (``--decoder-steps``), the encoder frozen: reconstruction MSE of whole images of another
   stream from latents sampled from the encoder's posterior, as Stable Diffusion's ft-MSE decoders were tuned.
   The latent space is unchanged, so this phase does not affect the next one (the 500 steps of phase 1 leave
   blurred, off-colour reconstructions: shape accuracy 0.82 on held-out scenes; after 1000 decoder steps 0.98).
3. The UNet and both CLIP text encoders together: the epsilon-prediction loss of DDPM training with the
   pipeline's scheduler (1000 steps, scaled-linear betas); timesteps uniform. The text goes through the
   pipeline's own ``encode_prompt`` (penultimate hidden states of both encoders, concatenated; pooled
   projection of the second), and the SDXL time ids are those the pipeline passes at ``--size``. A caption
   is dropped with probability 0.1: its embeddings are set to zero, which is what the SDXL pipeline uses for
   the unconditional branch of classifier-free guidance (``force_zeros_for_empty_prompt``). The latents of
   a fixed set of ``--scenes`` scenes are encoded once (posterior mean and std; a latent is sampled from it
   per step). ``--snr-gamma G`` weights each sample's loss by min-SNR-G (:func:`min_snr_weight`; default 5, 0
   for the plain loss). AdamW at ``--unet-lr`` (:func:`lr_factor`: linear warm-up over 200 steps; with
   ``--decay-steps N`` a linear decay to zero over the last N steps). The weights saved are an exponential
   moving average (decay 0.999) of the trained ones; the flags of the shipped weights are in their
   ``training.json`` and the README.

``--vae-from DIR`` replaces phases 1 and 2 by the VAE of a pipeline folder written by this script (its weights
and scaling factor), so that a UNet recipe is tried, or the shipped UNet retrained, on a VAE already trained.

The architecture flags (``--unet-channels``, ``--text-width``, ``--attention-levels``;
:func:`distri.models.shapes_spec.shapes_spec`) default to the shipped model's; a state file is resumed only with
the architecture and the recipe (:data:`RECIPE`) it was trained with.

Every ``--save-every`` steps the pipeline is saved with ``save_pretrained`` (safetensors; the UNet in float16
to keep the shipped weights small) into ``--out``, and the training state into ``--state`` (resumed from
there on a restart).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from distri.models.bundled import WEIGHTS_DIR
from distri.models.shapes_spec import ATTENTION_LEVELS, build_pipeline
from distri.models.tiny import quiet_progress_bars
from distri.models.train_shapes_vae import (
    phase_generator,
    reuse_vae,
    save_state,
    scene_batch,
    train_decoder,
    train_vae,
)

DEFAULT_OUT = WEIGHTS_DIR / "shapes_sdxl"


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of the epsilon loss (Hang et al., ICCV 2023): ``min(SNR(t), gamma) / SNR(t)``,
    ``SNR(t) = abar_t / (1 - abar_t)`` (diffusers' ``compute_snr``); ``gamma`` 0: all ones (the plain loss)."""
    from diffusers.training_utils import compute_snr

    if not gamma:
        return torch.ones(t.shape)
    snr = compute_snr(scheduler, t)
    return snr.clamp(max=gamma) / snr


def unet_step(
    pipe, latents: torch.Tensor, captions: list[str], gen: torch.Generator, snr_gamma: float = 0.0
) -> torch.Tensor:
    """Epsilon-prediction loss of one UNet + text-encoder step on ``latents`` (already scaled): the mean
    over samples of each sample's squared error, weighted by :func:`min_snr_weight`."""
    n = latents.shape[0]
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    keep = (torch.rand(n, generator=gen) >= 0.1).float()
    embeds, pooled = embeds * keep[:, None, None], pooled * keep[:, None]
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (n,), generator=gen)
    noisy = pipe.scheduler.add_noise(latents, noise, t)
    size = latents.shape[-1] * pipe.vae_scale_factor
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).expand(n, 6)
    pred = pipe.unet(noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    per_sample = (pred - noise).square().flatten(1).mean(1)
    return (per_sample * min_snr_weight(pipe.scheduler, t, snr_gamma)).mean()


def _trainable(pipe) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict(
        {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    )


def encode_scenes(pipe, args) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Posterior mean and std of the (scaled) latents of the first ``args.scenes`` training scenes."""
    means, stds, captions = [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, args.scenes, 64), desc="encode scenes", mininterval=10):
            x, caps = scene_batch(args.seed, start, min(64, args.scenes - start), args.size)
            dist = pipe.vae.encode(x).latent_dist
            means.append(dist.mean * pipe.vae.config.scaling_factor)
            stds.append(dist.std * pipe.vae.config.scaling_factor)
            captions += caps
    return torch.cat(means), torch.cat(stds), captions


def lr_factor(step: int, steps: int, decay_steps: int) -> float:
    """The UNet phase's learning rate at ``step`` as a fraction of ``--unet-lr``: a linear warm-up over the
    first 200 steps, then constant, then a linear decay to zero over the last ``decay_steps`` of ``steps``."""
    warm = min(1.0, (step + 1) / 200)
    return warm * min(1.0, (steps - step) / decay_steps) if decay_steps > 0 else warm


def train_unet(pipe, args, state: dict[str, Any]) -> None:
    from diffusers.training_utils import EMAModel

    modules = _trainable(pipe)
    if "unet_modules" in state:
        modules.load_state_dict(state["unet_modules"])
    opt = torch.optim.AdamW(modules.parameters(), lr=args.unet_lr, weight_decay=0.01)
    ema = EMAModel(modules.parameters(), decay=0.999, use_ema_warmup=True, power=0.75)
    if "unet_opt" in state:
        opt.load_state_dict(state["unet_opt"])
        ema.load_state_dict(state["ema"])
    start = state.get("unet_step", 0)
    means, stds, captions = encode_scenes(pipe, args)
    modules.train()
    bar = tqdm(range(start, args.unet_steps), desc="unet", mininterval=10)
    for step in bar:
        gen = phase_generator(args.seed, 2, step)
        idx = [(step * args.batch + i) % args.scenes for i in range(args.batch)]
        latents = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        loss = unet_step(pipe, latents, [captions[i] for i in idx], gen, args.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = args.unet_lr * lr_factor(step, args.unet_steps, args.decay_steps)
        opt.step()
        ema.step(modules.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % args.save_every == 0 or step + 1 == args.unet_steps:
            state.update(unet_step=step + 1, unet_modules=modules.state_dict())
            state.update(unet_opt=opt.state_dict(), ema=ema.state_dict())
            save_state(state, args.state)
            ema.store(modules.parameters())
            ema.copy_to(modules.parameters())
            save_pipeline(pipe, args.out, step + 1, args)
            ema.restore(modules.parameters())


def save_pipeline(pipe, out: Path, step: int, args: argparse.Namespace) -> None:
    """Save the pipeline (UNet in float16, the rest float32) with ``save_pretrained`` into ``out``, and in
    ``training.json`` the steps of the UNet and decoder phases, the UNet's loss weighting, with
    ``--decay-steps`` the decay and the UNet steps it ends at, and with ``--vae-from`` the folder the VAE came
    from (its decoder steps are then that folder's)."""
    pipe.unet.to(torch.float16)
    try:
        with quiet_progress_bars():
            pipe.save_pretrained(out, safe_serialization=True)
    finally:
        pipe.unet.to(torch.float32)
    recipe = {"unet_step": step, "decoder_step": args.decoder_steps, "snr_gamma": args.snr_gamma}
    if args.decay_steps:
        recipe.update(decay_steps=args.decay_steps, unet_steps=args.unet_steps)
    if args.vae_from:
        recipe["vae_from"] = str(args.vae_from)
    (out / "training.json").write_text(json.dumps(recipe) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m distri.models.train_shapes", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="pipeline folder (save_pretrained)")
    p.add_argument("--state", type=Path, default=Path(".train_shapes/state.pt"), help="resume state file")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (latent: size / 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet-channels", default="32,64,96", help="the UNet's 3 levels' channels")
    p.add_argument("--text-width", type=int, default=32, help="both text encoders' width")
    p.add_argument("--attention-levels", choices=sorted(ATTENTION_LEVELS), default="sdxl",
                   help="sdxl: cross-attention below the first level, as SDXL; all: at every level")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see the module doc)")
    p.add_argument("--vae-from", type=Path,
                   help="pipeline folder whose VAE replaces phases 1 and 2 (--vae-*/--decoder-* then unused)")  # fmt: skip
    p.add_argument("--vae-steps", type=int, default=500)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--decoder-steps", type=int, default=1000)
    p.add_argument("--decoder-batch", type=int, default=8)
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--unet-steps", type=int, default=4500)
    p.add_argument("--decay-steps", type=int, default=0, help="UNet LR decays to 0 over the last N steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=5e-4)
    p.add_argument("--snr-gamma", type=float, default=5.0,
                   help="min-SNR-gamma loss weighting of the UNet phase (5: the paper's and the shipped); 0: none")  # fmt: skip
    p.add_argument("--scenes", type=int, default=16384, help="training scenes encoded for the UNet phase")
    p.add_argument("--save-every", type=int, default=250)
    return p.parse_args(argv)


def architecture(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`shapes_spec`'s architecture keywords from the command line."""
    try:
        channels = tuple(int(c) for c in args.unet_channels.split(","))
    except ValueError:
        raise SystemExit(
            f"--unet-channels takes 3 integers, e.g. 32,64,96; got {args.unet_channels!r}"
        ) from None
    if len(channels) != 3 or min(channels) < 8 or any(c % 8 for c in channels) or args.text_width % 4:
        raise SystemExit("--unet-channels takes 3 multiples of 8 (GroupNorm's 8 groups) and --text-width a "
                         f"multiple of 4 (4 heads); got {args.unet_channels!r}, {args.text_width}")  # fmt: skip
    return {"channels": channels, "text_width": args.text_width, "attention": args.attention_levels}


RECIPE = ("seed", "size", "scenes", "batch", "unet_lr", "snr_gamma",
          "vae_from", "vae_batch", "vae_lr", "decoder_batch", "decoder_lr")  # fmt: skip
"""Flags a resumed state must have been trained with: they choose its batches, losses and learning rates. The
step counts may grow (a longer run continues a shorter one), and ``--decay-steps`` and ``--threads`` may change."""


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The :data:`RECIPE` flags of ``args`` as plain values (a path as a string: the state file is read back
    with ``torch.load``'s ``weights_only``, which refuses other classes)."""
    return {k: str(v) if isinstance(v, Path) else v for k in RECIPE for v in [getattr(args, k)]}


def check_resume(state: dict[str, Any], args: argparse.Namespace, arch: dict[str, Any]) -> None:
    """Record this run's architecture and recipe (:data:`RECIPE`) in a new ``state``; refuse a loaded one that
    was trained with others (one written before they were recorded counts as trained with the defaults of
    then, whose loss was the plain one: ``snr_gamma`` 0)."""
    defaults = parse_args([])
    fresh = not state
    for key, now, old in (
        ("architecture", arch, architecture(defaults)),
        ("recipe", _recipe(args), _recipe(defaults) | {"snr_gamma": 0.0}),
    ):
        saved = state.setdefault(key, now if fresh else old)
        if saved != now:
            diff = ", ".join(f"{k}={saved.get(k)!r} (now {v!r})" for k, v in now.items() if saved.get(k) != v)
            raise SystemExit(f"{args.state} was trained with {key} {diff}: give the same flags, or another "
                             "--state to start afresh")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.size % 32:
        raise SystemExit(f"--size must be a multiple of 32 (latent side divisible by 4), got {args.size}")
    if not 0 <= args.decay_steps <= args.unet_steps:
        raise SystemExit(
            f"--decay-steps must be 0 (no decay) .. --unet-steps ({args.unet_steps}), got {args.decay_steps}"
        )
    if args.snr_gamma < 0:
        raise SystemExit(
            f"--snr-gamma must be 0 (no weighting) or positive (5 is the paper's), got {args.snr_gamma}"
        )
    arch = architecture(args)
    if args.vae_from:
        args.vae_from = args.vae_from.resolve()
        if not (args.vae_from / "vae" / "config.json").is_file():
            raise SystemExit(f"--vae-from {args.vae_from}: no vae/config.json there; give a pipeline folder "
                             f"written by this script (e.g. {DEFAULT_OUT})")  # fmt: skip
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    state: dict[str, Any] = torch.load(args.state) if args.state.is_file() else {}
    check_resume(state, args, arch)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipeline(args.size, Path(tmp), **arch)
    t0 = time.perf_counter()
    if args.vae_from:
        args.decoder_steps = reuse_vae(pipe, args.vae_from)  # what training.json then records
    else:
        if "vae" in state:
            pipe.vae.load_state_dict(state["vae"])
        train_vae(pipe, args, state)
        train_decoder(pipe, args, state)
    train_unet(pipe, args, state)
    print(f"done in {time.perf_counter() - t0:.0f} s; pipeline saved in {args.out}")


if __name__ == "__main__":
    main()
