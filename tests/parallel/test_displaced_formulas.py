"""Displaced patch parallelism, layer by layer, against the paper's formulas written here (2 and 4 ranks).

The probe denoiser (tests/parallel/probe.py) applies a 3x3 convolution, a self-attention layer and a GroupNorm to
its input latent, so what each must compute at step ``t`` on band ``r`` of ``n`` follows from the latents
``x_0 .. x_t`` alone. With ``warmup_steps = w``, steps ``0..w`` are synchronous; afterwards:

* halos and keys/values: this band from ``x_t`` (fresh), the other bands from ``x_{t-1}`` (exactly one step
  old; ``no_sync``: from ``x_w``, the last synchronous step); written here as the stock layer applied to a
  "mixed" latent;
* GroupNorm, with per-band statistics ``s_i = (E[x], E[x^2])`` and ``s~_i`` those of the previous step:
  ``corrected_async_gn``: ``mean_i s~_i + s_r - s~_r`` (this band's variance where that variance is negative),
  ``stale_gn``: ``(s_r + sum_{i != r} s~_i) / n``, ``sync_gn``: ``mean_i s_i``, ``separate_gn`` and
  ``no_sync``: ``s_r``.

Every rank's gathered output (each band computed by its own rank) must equal this to 1e-10 (float64).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_pool
from tests.parallel.probe import GROUPS, ProbeDenoiser, latents

MODES = ["corrected_async_gn", "stale_gn", "sync_gn", "separate_gn", "full_sync", "no_sync"]
STEPS, WARMUP, HEIGHT = 5, 1, 16
TOL = 1e-10


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def pool(request):
    p = make_pool(request.param)
    yield p
    p.close()


def _band(x: torch.Tensor, r: int, n: int) -> torch.Tensor:
    h = x.shape[2] // n
    return x[:, :, r * h : (r + 1) * h]


def _stats(xb: torch.Tensor) -> torch.Tensor:
    xg = xb.reshape(xb.shape[0], GROUPS, -1)
    return torch.stack([xg.mean(-1), xg.square().mean(-1)])  # [2, B, G]


def _phase(mode: str, t: int) -> str:
    if mode == "full_sync" or t <= WARMUP:
        return "sync"
    return "frozen" if mode == "no_sync" else "async"


def _gn_mean_var(mode: str, xs: torch.Tensor, t: int, r: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    fresh = [_stats(_band(xs[t], i, n)) for i in range(n)]
    phase = _phase(mode, t)
    own_var = fresh[r][1] - fresh[r][0] ** 2
    if phase == "sync" or mode == "sync_gn":
        s = sum(fresh) / n
    elif mode in ("separate_gn", "no_sync"):
        return fresh[r][0], own_var
    else:
        stale = [_stats(_band(xs[t - 1], i, n)) for i in range(n)]
        if mode == "stale_gn":
            s = (fresh[r] + sum(stale[i] for i in range(n) if i != r)) / n
        else:  # corrected_async_gn
            s = sum(stale) / n + fresh[r] - stale[r]
            var = s[1] - s[0] ** 2
            return s[0], torch.where(var < 0, own_var, var)
    return s[0], s[1] - s[0] ** 2


def _mixed(mode: str, xs: torch.Tensor, t: int, r: int, n: int) -> torch.Tensor:
    """The latent whose other bands a layer of band ``r`` sees at step ``t``; band ``r`` itself is fresh."""
    src = {"sync": t, "async": t - 1, "frozen": WARMUP}[_phase(mode, t)]
    mixed = xs[src].clone()
    _band(mixed, r, n).copy_(_band(xs[t], r, n))
    return mixed


@torch.no_grad()
def expected(mode: str, xs: torch.Tensor, n: int) -> torch.Tensor:
    m = ProbeDenoiser()
    out = []
    for t in range(xs.shape[0]):
        bands = []
        for r in range(n):
            mixed = _mixed(mode, xs, t, r, n)
            xb = _band(xs[t], r, n)
            conv = _band(F.conv2d(mixed, m.conv.weight, m.conv.bias, padding=1), r, n)
            tokens = mixed.flatten(2).transpose(1, 2)
            attn = m.attn(xb, encoder_hidden_states=tokens)  # stock processor: K/V from the mixed latent
            mean, var = _gn_mean_var(mode, xs, t, r, n)
            xg = xb.reshape(xb.shape[0], GROUPS, -1)
            norm = ((xg - mean[..., None]) / torch.sqrt(var[..., None] + m.norm.eps)).reshape(xb.shape)
            norm = norm * m.norm.weight.view(1, -1, 1, 1) + m.norm.bias.view(1, -1, 1, 1)
            bands.append(torch.cat([conv, attn, norm], dim=1))
        out.append(torch.cat(bands, dim=2))
    return torch.stack(out)


def _run(pool, mode: str, constant: bool = False):
    params = {"mode": mode, "warmup_steps": WARMUP}
    return pool.run(
        "tests.parallel.probe:run_probe", params=params, steps=STEPS, height=HEIGHT, constant=constant
    )


@pytest.mark.parametrize("mode", MODES)
def test_each_layer_equals_the_formula_on_every_rank(pool, mode):
    n = len(pool._procs)
    xs = latents(STEPS, HEIGHT)
    want = expected(mode, xs, n)
    results = _run(pool, mode)
    assert sorted(r["rank"] for r in results) == list(range(n))
    for res in results:
        for t in range(STEPS):
            err = (res["outs"][t] - want[t]).abs().max().item()
            assert err < TOL, f"rank {res['rank']}, step {t} ({_phase(mode, t)}): max abs err {err:.3g}"


def test_the_formulas_tell_the_modes_apart():
    """The expectations above differ between modes (so each test pins its own mode), most after the warm-up."""
    xs = latents(STEPS, HEIGHT)
    ref = expected("full_sync", xs, 4)
    for mode in MODES[:4] + ["no_sync"]:
        got = expected(mode, xs, 4)
        assert (got[: WARMUP + 1] - ref[: WARMUP + 1]).abs().max() < TOL, mode
        assert (got[WARMUP + 1 :] - ref[WARMUP + 1 :]).abs().max() > 1e-3, mode


@pytest.mark.parametrize("mode", MODES)
def test_constant_latent_equals_single_device_except_band_statistics(pool, mode):
    """Same latent at every step: stale activations equal fresh ones, so every estimator that combines all
    bands is exact; only the band's own GroupNorm statistics (``separate_gn``, and ``no_sync`` after the
    warm-up, as in the reference code) differ from the single device."""
    xs = latents(STEPS, HEIGHT, constant=True)
    with torch.no_grad():
        single = ProbeDenoiser()(xs[0], 999)[0]
    for res in _run(pool, mode, constant=True):
        err = max((res["outs"][t] - single).abs().max().item() for t in range(STEPS))
        if mode in ("separate_gn", "no_sync"):
            assert err > 1e-3, f"rank {res['rank']}: band statistics should differ from the whole image's"
        else:
            assert err < TOL, f"rank {res['rank']}: max abs err {err:.3g} with a constant latent"
