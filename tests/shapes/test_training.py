"""A few steps of the shapes model's training loops (the real training takes about an hour and is not run here).

On one fixed batch (fixed noise, timesteps and caption dropout: the same generator seed every step) the loss of
each phase must be finite and fall (the decoder phase: six steps on two scenes, its first batch; measured
0.38 -> 0.20). Measured (64 px, batch 4, Adam lr 1e-3, 8 steps): the VAE loss fell from
0.56 to 0.31 and the UNet loss from 1.16 to 0.32; the test asks for a fall of at least 10%.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from distri.models import shapes_spec as spec
from distri.models import train_shapes as ts
from distri.models import train_shapes_vae as tv

SIZE = 64


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return spec.build_pipeline(SIZE, tmp_path_factory.mktemp("tok"))


def _losses(step_fn, params, n=8):
    opt = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(n):
        loss = step_fn(torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_vae_phase_loss_is_finite_and_falls(pipe):
    x, _ = tv.scene_batch(0, 0, 4, SIZE)
    losses = _losses(lambda g: tv.vae_step(pipe.vae, x, g), pipe.vae.parameters())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_decoder_phase_trains_the_decoder_only(tmp_path):
    """Phase 2 lowers the reconstruction loss and leaves the encoder (the latent space) as it was. A pipeline of
    its own: the decoder's start must not depend on what the VAE test did to the shared one."""
    pipe = spec.build_pipeline(SIZE, tmp_path / "tok")
    args = ts.parse_args(["--size", str(SIZE), "--decoder-steps", "6", "--decoder-batch", "2",
                          "--decoder-lr", "1e-3", "--state", str(tmp_path / "state.pt")])  # fmt: skip
    x, _ = tv.scene_batch(args.seed + 2, 0, 2, SIZE)
    encoder = {k: v.clone() for k, v in pipe.vae.encoder.state_dict().items()}
    before = tv.decoder_step(pipe.vae, x, torch.Generator().manual_seed(0)).item()
    tv.train_decoder(pipe, args, {})
    after = tv.decoder_step(pipe.vae, x, torch.Generator().manual_seed(0)).item()
    print(f"decoder loss {before:.4f} -> {after:.4f}")
    assert math.isfinite(after) and after < 0.9 * before, (before, after)
    assert all(torch.equal(v, pipe.vae.encoder.state_dict()[k]) for k, v in encoder.items())


def test_unet_phase_loss_is_finite_and_falls(pipe):
    x, captions = tv.scene_batch(0, 0, 4, SIZE)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    params = ts._trainable(pipe).parameters()
    losses = _losses(lambda g: ts.unet_step(pipe, latents, captions, g), params)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_min_snr_weight_is_the_clamped_snr_ratio(pipe):
    """Written from the formula: SNR(t) = abar_t / (1 - abar_t), weight min(SNR, gamma) / SNR; gamma 0 is
    the plain loss."""
    abar = pipe.scheduler.alphas_cumprod.double()
    t = torch.tensor([0, 10, 100, 400, 999])
    for gamma in (1.0, 5.0):
        want = [min(abar[i] / (1 - abar[i]), gamma) / (abar[i] / (1 - abar[i])) for i in t.tolist()]
        got = ts.min_snr_weight(pipe.scheduler, t, gamma)
        assert torch.allclose(got.double(), torch.tensor(want), rtol=1e-5), (gamma, got, want)
    assert torch.equal(ts.min_snr_weight(pipe.scheduler, t, 0.0), torch.ones(5))
    assert ts.min_snr_weight(pipe.scheduler, torch.tensor([999]), 5.0).item() == 1.0  # SNR < 5: unweighted


def test_unet_step_weights_each_sample_by_its_timestep(pipe):
    """One sample: the min-SNR loss is the plain loss times the weight at the timestep the step drew (the
    draws replayed here in the step's order: caption dropout, noise, timestep), for a seed whose timestep
    has SNR > gamma (so that the weight is not 1)."""
    x, captions = tv.scene_batch(0, 0, 1, SIZE)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor

    def replay(seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        torch.rand(1, generator=g), torch.randn(latents.shape, generator=g)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (1,), generator=g)
        abar = pipe.scheduler.alphas_cumprod[t].item()
        return abar / (1 - abar)

    seed = next(s for s in range(1000) if replay(s) > 5.0)
    snr = replay(seed)
    with torch.no_grad():
        plain = ts.unet_step(pipe, latents, captions, torch.Generator().manual_seed(seed))
        weighted = ts.unet_step(pipe, latents, captions, torch.Generator().manual_seed(seed), snr_gamma=5.0)
    assert weighted.item() == pytest.approx(plain.item() * 5.0 / snr, rel=1e-5), (seed, snr)


def test_scene_batches_are_deterministic():
    a, ca = tv.scene_batch(3, 10, 2, SIZE)
    b, cb = tv.scene_batch(3, 10, 2, SIZE)
    assert torch.equal(a, b) and ca == cb and a.shape == (2, 3, SIZE, SIZE)
    assert a.min() >= -1 and a.max() <= 1


def test_lr_factor_warms_up_then_optionally_decays():
    """Written from the schedule's definition: linear warm-up over 200 steps, then constant, then (with
    ``decay_steps``) linear to zero over the last ``decay_steps`` steps."""
    assert ts.lr_factor(0, 1000, 0) == pytest.approx(1 / 200)
    assert ts.lr_factor(199, 1000, 0) == ts.lr_factor(999, 1000, 0) == 1.0
    assert ts.lr_factor(899, 1000, 100) == 1.0  # the decay starts at step 900
    assert ts.lr_factor(950, 1000, 100) == pytest.approx(0.5)
    assert ts.lr_factor(999, 1000, 100) == pytest.approx(0.01)


def test_architecture_flags_build_that_pipeline_and_a_state_keeps_its_own(tmp_path):
    """``--unet-channels/--text-width/--attention-levels`` reach the built pipeline; the defaults are the
    shipped model's config; bad values, and resuming a state of another architecture or recipe, are refused
    before training."""
    args = ts.parse_args(["--unet-channels", "16,24,32", "--text-width", "8", "--attention-levels", "all"])
    pipe = spec.build_pipeline(SIZE, tmp_path / "tok", **ts.architecture(args))
    unet = pipe.unet.config
    assert list(unet.block_out_channels) == [16, 24, 32] and unet.cross_attention_dim == 16
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3
    assert pipe.text_encoder.config.hidden_size == pipe.text_encoder_2.config.projection_dim == 8
    shipped = json.loads((ts.DEFAULT_OUT / "unet" / "config.json").read_text())
    default = spec.shapes_spec(128, **ts.architecture(ts.parse_args([])))["unet"]
    assert all(shipped[k] == v for k, v in default.items()), "the defaults must build the shipped model"
    for bad in (["--unet-channels", "32,64"], ["--unet-channels", "32,60,96"], ["--text-width", "30"]):
        with pytest.raises(SystemExit, match="--unet-channels"):
            ts.main(bad)
    # One step of each phase with that architecture, then a resume: with the defaults refused, with it allowed.
    flags = ["--unet-channels", "16,24,32", "--text-width", "8", "--attention-levels", "all"]
    run = ["--state", str(tmp_path / "state.pt"), "--out", str(tmp_path / "out"), "--size", str(SIZE),
           "--vae-steps", "1", "--vae-batch", "2", "--decoder-steps", "1", "--decoder-batch", "1",
           "--unet-steps", "1", "--batch", "2", "--scenes", "4", "--save-every", "1"]  # fmt: skip
    ts.main(run + flags)
    saved = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert saved["block_out_channels"] == [16, 24, 32] and saved["cross_attention_dim"] == 16
    with pytest.raises(SystemExit, match="was trained with architecture"):
        ts.main(run)
    # The recipe too: another loss weighting or batch is refused, naming it; more steps continue the state.
    for changed, name in ((["--snr-gamma", "0"], "snr_gamma=5.0"), (["--batch", "3"], "batch=2")):
        with pytest.raises(SystemExit, match=f"was trained with recipe {name}"):
            ts.main(run + flags + changed)
    ts.main(run + flags + ["--unet-steps", "2", "--decay-steps", "1"])
    assert torch.load(tmp_path / "state.pt")["unet_step"] == 2
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record == {"unet_step": 2, "decoder_step": 1, "snr_gamma": 5.0, "decay_steps": 1, "unet_steps": 2}


def test_vae_from_takes_a_trained_vae_instead_of_phases_1_and_2(tmp_path):
    """``--vae-from DIR``: the new pipeline's VAE is that folder's (weights and scaling factor), its
    training.json says so, a state trained on another VAE is refused, and a folder without a VAE is refused."""
    from diffusers import AutoencoderKL

    run = ["--size", str(SIZE), "--unet-steps", "1", "--batch", "2", "--scenes", "4", "--save-every", "1",
           "--unet-channels", "16,24,32", "--text-width", "8"]  # fmt: skip
    first = ["--state", str(tmp_path / "a.pt"), "--out", str(tmp_path / "a"), "--vae-steps", "1",
             "--vae-batch", "2", "--decoder-steps", "1", "--decoder-batch", "1"]  # fmt: skip
    ts.main(run + first)
    second = [
        "--state",
        str(tmp_path / "b.pt"),
        "--out",
        str(tmp_path / "b"),
        "--vae-from",
        str(tmp_path / "a"),
    ]
    ts.main(run + second)
    a, b = (AutoencoderKL.from_pretrained(tmp_path / d / "vae") for d in "ab")
    assert a.config.scaling_factor == b.config.scaling_factor
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    saved = json.loads((tmp_path / "b" / "training.json").read_text())
    assert saved["vae_from"] == str((tmp_path / "a").resolve()) and saved["decoder_step"] == 1
    ts.main(run + second + ["--unet-steps", "2"])  # its state resumes (read back with weights_only)
    assert torch.load(tmp_path / "b.pt")["unet_step"] == 2
    with pytest.raises(SystemExit, match="was trained with recipe vae_from=None"):
        ts.main(run + first[:4] + ["--vae-from", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="no vae/config.json"):
        ts.main(run + ["--state", str(tmp_path / "c.pt"), "--vae-from", str(tmp_path)])
