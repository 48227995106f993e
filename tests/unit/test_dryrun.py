"""Dry runs on the meta device and the fake process group: per-device MACs and communication at full scale.

The communication ledger of the real strategies is checked against an independent count written here from the
UNet config alone (activation sizes of every exchanged tensor), and both against the DistriFusion paper:

* 6,763 GMACs per step for SDXL at 1024^2 with the CFG batch of 2 (Table 1: 338 T MACs for 50 steps);
* Table 2 (8 devices): patch parallelism 0.42G / 1.48G / 5.38G, tensor parallelism 1.33G / 5.33G / 18.7G at
  1024^2 / 2048^2 / 3840^2. Convention found: bytes (G = 1e9) per device per denoising step, fp16, for ONE latent
  (batch 1: the CFG batch of 2 doubles every figure), with the tensors of
  ``distri.parallel.displaced_patch`` (halo rows of every 3x3 conv but ``conv_in``, K and V of every
  self-attention, GroupNorm statistics) and ``distri.parallel.tensor`` (all-reduced outputs of both attention
  out-projections, the FFN, ResNet ``conv2``, the down/up-sampling convs and ``conv_out``).
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

from distri import dryrun as D
from experiments.distrifusion_table2.table2 import PAPER_TABLE2

PAPER_GMACS_1024 = 6763.0
RESOLUTIONS = (1024, 2048, 3840)


# -- an independent count from the config ------------------------------------------------------------------
def unet_layers(cfg: dict, lh: int, lw: int) -> list[tuple]:
    """Every layer that communicates, from the config: ``(what, channels, rows, cols)`` at its resolution.

    ``conv`` is a 3x3 conv's *input* (its halo rows), ``attn`` a self-attention, ``gn`` a GroupNorm, ``ar`` an
    all-reduced output under tensor parallelism. Follows diffusers' ``UNet2DConditionModel`` block layout.
    """
    ch, lpb = cfg["block_out_channels"], cfg["layers_per_block"]
    levels = len(ch)
    tl = cfg.get("transformer_layers_per_block", 1)
    tl = tl if isinstance(tl, list) else [tl] * levels
    out: list[tuple] = []

    def at(lvl: int) -> tuple[int, int]:
        return lh >> lvl, lw >> lvl

    def resnet(cin: int, cout: int, lvl: int) -> None:
        out.extend([("gn", cin, *at(lvl)), ("conv", cin, *at(lvl)), ("gn", cout, *at(lvl))])
        out.extend([("conv", cout, *at(lvl)), ("ar", cout, *at(lvl))])

    def transformer(c: int, layers: int, lvl: int) -> None:
        out.append(("gn", c, *at(lvl)))
        for _ in range(layers):  # self-attn (K/V exchanged; out-proj reduced), cross-attn out-proj, FFN
            out.extend([("attn", c, *at(lvl)), ("ar", c, *at(lvl)), ("ar", c, *at(lvl)), ("ar", c, *at(lvl))])

    prev = ch[0]  # conv_in reads the full latent: no halo exchange, replicated under TP
    for i, kind in enumerate(cfg["down_block_types"]):
        for j in range(lpb):
            resnet(prev if j == 0 else ch[i], ch[i], i)
            if "CrossAttn" in kind:
                transformer(ch[i], tl[i], i)
        prev = ch[i]
        if i < levels - 1:  # stride-2 conv: halo of its input, reduced output at the next level
            out.extend([("conv", ch[i], *at(i)), ("ar", ch[i], *at(i + 1))])
    resnet(ch[-1], ch[-1], levels - 1)
    transformer(ch[-1], tl[-1], levels - 1)
    resnet(ch[-1], ch[-1], levels - 1)
    rch, rtl = ch[::-1], tl[::-1]
    prev = rch[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        lvl, c, skip_in = levels - 1 - i, rch[i], rch[min(i + 1, levels - 1)]
        for j in range(lpb + 1):
            resnet((prev if j == 0 else c) + (skip_in if j == lpb else c), c, lvl)
            if "CrossAttn" in kind:
                transformer(c, rtl[i], lvl)
        prev = c
        if i < levels - 1:  # nearest 2x upsampling, then a 3x3 conv at the finer level
            out.extend([("conv", c, *at(lvl - 1)), ("ar", c, *at(lvl - 1))])
    out.extend([("gn", ch[0], *at(0)), ("conv", ch[0], *at(0)), ("ar", cfg["out_channels"], *at(0))])
    return out


def analytic_patch_bytes(cfg: dict, res: int, n: int, batch: int = 1, esize: int = 2) -> dict[str, float]:
    """Per-device all-gather bytes of one step of patch parallelism over ``n`` bands (paper convention)."""
    total = {"conv_halo": 0.0, "attn_kv": 0.0, "gn_stats": 0.0}
    for what, c, h, w in unet_layers(cfg, res // 8, res // 8):
        if what == "conv":  # one row above and one below the band, each rank sends both
            total["conv_halo"] += 2 * c * w * batch * (n - 1) * esize
        elif what == "attn":  # K and V of the band
            total["attn_kv"] += 2 * c * (h // n) * w * batch * (n - 1) * esize
        elif what == "gn":  # mean and mean of squares per group, in float32
            total["gn_stats"] += 2 * cfg["norm_num_groups"] * batch * (n - 1) * 4
    return total


def analytic_tensor_bytes(cfg: dict, res: int, n: int, batch: int = 1, esize: int = 2) -> float:
    """Per-device all-reduce bytes of one step of tensor parallelism over ``n`` ranks (paper convention)."""
    elems = sum(c * h * w * batch for what, c, h, w in unet_layers(cfg, res // 8, res // 8) if what == "ar")
    return elems * (n - 1) / n * 2 * esize


def text_kv_macs(cfg: dict, batch: int) -> float:
    """MACs of the cross-attention key/value projections of the 77 text tokens (every patch rank repeats them)."""
    ch, tl = cfg["block_out_channels"], cfg["transformer_layers_per_block"]
    layers = {i: 0 for i in range(len(ch))}
    for i, kind in enumerate(cfg["down_block_types"]):
        layers[i] += cfg["layers_per_block"] * tl[i] if "CrossAttn" in kind else 0
    for i, kind in enumerate(cfg["up_block_types"]):
        lvl = len(ch) - 1 - i
        layers[lvl] += (cfg["layers_per_block"] + 1) * tl[lvl] if "CrossAttn" in kind else 0
    layers[len(ch) - 1] += tl[-1]  # mid block
    return sum(k * 2 * D.TEXT_TOKENS * cfg["cross_attention_dim"] * ch[i] * batch for i, k in layers.items())


# -- cached dry runs (each SDXL forward on meta takes seconds) -----------------------------------------------
@functools.cache
def run(res: int, world_size: int, strategy: str, **kw) -> dict:
    kw.setdefault("count_macs", False)
    return D.dryrun("sdxl", res, res, world_size, strategy, **kw)


def patch8(res: int) -> dict:
    """Displaced patch parallelism, 8 devices, one latent; at 1024^2 a synchronous, a first and a steady
    asynchronous step (with MACs), elsewhere the synchronous step alone (it moves the same bytes)."""
    if res == 1024:
        return run(1024, 8, "displaced_patch", batch=1, steps=3, warmup_steps=0, count_macs=True)
    return run(res, 8, "displaced_patch", batch=1, steps=1, warmup_steps=0)


@pytest.fixture(scope="module")
def sdxl() -> dict:
    return D.unet_config("sdxl")


# -- the configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, params",
    [("sdxl", 2_567_463_684), ("sd15", 859_520_964), ("sd21", 865_910_724)],
)
def test_config_builds_the_published_unet(model: str, params: int) -> None:
    """Parameter counts of the published UNets (SDXL base 1.0: 2.567 B; SD 1.5: 859.5 M; SD 2.1: 865.9 M)."""
    unet = D.build_meta_unet(D.unet_config(model))
    assert sum(p.numel() for p in unet.parameters()) == params
    assert all(p.device.type == "meta" for p in unet.parameters())


# -- MACs -------------------------------------------------------------------------------------------------
def test_sdxl_macs_per_step_match_the_paper() -> None:
    """FlopCounterMode over linears (addmm/mm), convolutions and attention (bmm/SDPA) gives 6,761 GMACs:
    0.03 % under the paper's 6,763. Leaving out attention (784 G) or convolutions (1,623 G) misses by >10 %."""
    r = run(1024, 1, "none", batch=2, steps=1, count_macs=True)
    assert r["gmacs_per_step"] == pytest.approx(PAPER_GMACS_1024, rel=0.05)
    assert r["gmacs_per_step"] == pytest.approx(PAPER_GMACS_1024, rel=1e-3)  # what we found: 6,761.2
    assert r["macs_per_step"] * 50 / 1e12 == pytest.approx(338, rel=1e-2)  # Table 1: 338 T for 50 steps


def test_displaced_patch_macs_per_device(sdxl: dict) -> None:
    """A patch rank does 1/n of the UNet plus the whole text K/V projection of every cross-attention
    (+ 26 GMACs per latent on SDXL: 445.6 instead of 422.6 GMACs per device at 1024^2 on 8 devices)."""
    single = (
        run(1024, 1, "none", batch=2, steps=1, count_macs=True)["macs_per_step"] / 2
    )  # MACs scale with batch
    r = patch8(1024)
    assert r["macs_per_step"] == pytest.approx(single / 8 + text_kv_macs(sdxl, batch=1) * 7 / 8, rel=1e-3)


# -- Table 2: communication ---------------------------------------------------------------------------------
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_patch_bytes_equal_the_independent_count(sdxl: dict, res: int) -> None:
    """The displaced strategy's ledger equals the count from the config, kind by kind (8 devices, batch 1)."""
    r = patch8(res)
    want = analytic_patch_bytes(sdxl, res, 8)
    for kind, b in want.items():
        assert r["by_kind"][kind]["bytes"] == pytest.approx(b, rel=1e-9), kind
    # the final gather of the noise prediction: 1/8 of the latent per rank
    assert r["by_kind"]["output_gather"]["bytes"] == 4 * (res // 8) ** 2 // 8 * 7 * 2
    # synchronous and asynchronous steps move the same bytes (Table 2: Sync. PP = DistriFusion)
    assert len({s["bytes"] for s in r["per_step"]}) == 1


# Paper Table 2 / ours at 8 devices. 2048^2 is the one figure we do not reproduce: our 1.583 G is 7.0 % over
# the paper's 1.48 G, while 1024^2 and 3840^2 agree to 1 %. Halos scale with the width and K/V with the area,
# so no per-tensor convention fits all three printed values (fitting 1024 and 3840 predicts 1.58 G at 2048);
# the printed 1.48 looks like a typo (it is also the "No Comm." latency at 1024^2, 1.48 s).
PATCH_RATIO = {1024: 0.42 / 0.4245, 2048: 1.48 / 1.5828, 3840: 5.38 / 5.3777}


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_patch_bytes_match_paper_table2(sdxl: dict, res: int) -> None:
    r = patch8(res)
    ours = r["bytes_per_step"] / 1e9
    paper = PAPER_TABLE2[res]["patch"]
    assert ours == pytest.approx(paper, rel=0.10)
    assert paper / ours == pytest.approx(PATCH_RATIO[res], abs=5e-3)  # the recorded gap, explicitly
    assert sum(analytic_patch_bytes(sdxl, res, 8).values()) / 1e9 == pytest.approx(ours, rel=1e-3)


# SDXL's attentions: 20 with 10 heads (64x64 level: 2 layers x 5 transformers x attn1/attn2) and 120 with 20 heads
# (32x32 level: 10 layers x 6 transformers x 2). Over 8 ranks rank 0 gets 2 of 10 and 3 of 20.
SDXL_ATTENTIONS = {10: 20, 20: 120}


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_tensor_bytes_match_paper_table2(sdxl: dict, res: int) -> None:
    """Our tensor strategy runs SDXL on 8 ranks directly (uneven head split: 10 heads as 2,2,1,1,1,1,1,1, 20 as
    3,3,3,3,2,2,2,2); the ledger equals the independent count and the paper to 0.3 %."""
    r = run(res, 8, "tensor", batch=1, steps=1)
    assert r["bytes_per_step"] == pytest.approx(analytic_tensor_bytes(sdxl, res, 8), rel=1e-9)
    assert set(r["by_kind"]) == {"tp_allreduce"}
    ours = r["bytes_per_step"] / 1e9
    paper = PAPER_TABLE2[res]["tensor"]
    assert ours == pytest.approx(paper, rel=0.10)
    assert ours == pytest.approx(paper, rel=0.01)  # what we found: 1.333 / 5.332 / 18.744 G
    rep = r["strategy_report"]
    assert rep["par_size"] == 8 and rep["skipped_layers"] == 0 and rep["uneven_layers"] == 140
    assert rep["attention_heads_full"] == sum(h * k for h, k in SDXL_ATTENTIONS.items())
    assert rep["attention_heads_local"] == 2 * SDXL_ATTENTIONS[10] + 3 * SDXL_ATTENTIONS[20]
    assert rep["even_ratio"] < rep["sharded_ratio"] < 1.25 * rep["even_ratio"]  # rank 0: the larger blocks


def test_table2_convention_is_one_latent_per_device(sdxl: dict) -> None:
    """With the CFG batch of 2 on every device the figures double; splitting the CFG batch over two groups of 4
    gives 4-way patches of one latent each (plus the CFG gather of the output)."""
    both = run(1024, 8, "displaced_patch", batch=2, steps=1, warmup_steps=0)
    one = patch8(1024)
    assert both["bytes_per_step"] == pytest.approx(2 * one["bytes_per_step"], rel=1e-9)
    split = run(1024, 8, "displaced_patch", batch=2, steps=1, warmup_steps=0, cfg_split=True)
    for kind, b in analytic_patch_bytes(sdxl, 1024, 4).items():
        assert split["by_kind"][kind]["bytes"] == pytest.approx(b, rel=1e-9), kind
    assert split["by_kind"]["cfg_gather"]["bytes"] == 4 * 128 * 128 * 1 * 2


# -- world sizes --------------------------------------------------------------------------------------------
def test_world_size_that_is_not_a_power_of_two(sdxl: dict) -> None:
    """768^2: a 96-row latent, 3 bands of 32 / 16 / 8 rows at the three levels."""
    r = run(768, 3, "displaced_patch", batch=1, steps=1, warmup_steps=0)
    assert r["bytes_per_step"] > 0
    for kind, b in analytic_patch_bytes(sdxl, 768, 3).items():
        assert r["by_kind"][kind]["bytes"] == pytest.approx(b, rel=1e-9), kind


def test_sd15_four_levels_on_three_devices() -> None:
    """SD 1.5 (4 levels, attention at the three finest) at 768^2: 96 latent rows, bands of 32/16/8/4 rows."""
    cfg = D.unet_config("sd15")
    r = D.dryrun("sd15", 768, 768, 3, "displaced_patch", batch=1, steps=1, warmup_steps=0, count_macs=False)
    for kind, b in analytic_patch_bytes(cfg, 768, 3).items():
        assert r["by_kind"][kind]["bytes"] == pytest.approx(b, rel=1e-9), kind


@pytest.mark.parametrize(
    "res, world_size, strategy, valid",
    [
        (1024, 5, "displaced_patch", "[1, 2, 4, 8, 16, 32]"),
        (1024, 3, "naive_patch", "[1, 2, 4, 8, 16, 32]"),
        (768, 5, "displaced_patch", "[1, 2, 3, 4, 6, 8, 12, 24]"),
        (1024, 11, "tensor", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"),  # SDXL's 10 heads: at most 10 ranks
    ],
)
def test_refuses_world_sizes_that_do_not_divide(res: int, world_size: int, strategy: str, valid: str) -> None:
    with pytest.raises(ValueError, match="valid world sizes") as e:
        D.dryrun("sdxl", res, res, world_size, strategy)
    assert valid in str(e.value)
    assert not torch.distributed.is_initialized()


def test_cfg_split_doubles_the_valid_world_sizes(sdxl: dict) -> None:
    assert D.valid_world_sizes(sdxl, 1024, 1024, "displaced_patch", cfg_split=True) == [2, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="even world_size"):
        D.check_world_size(sdxl, 1024, 1024, 3, "displaced_patch", cfg_split=True)


# -- command line -------------------------------------------------------------------------------------------
def test_table_has_a_column_per_strategy() -> None:
    results = {
        "none": run(1024, 1, "none", batch=2, steps=1, count_macs=True),
        "naive_patch": "not available in this checkout",
        "displaced_patch": patch8(1024),
        "tensor": run(1024, 8, "tensor", batch=1, steps=1),
    }
    table = D.format_table(results)
    for text in (
        "none",
        "naive_patch",
        "displaced_patch",
        "tensor",
        "6,761.2",
        "attn_kv",
        "tp_allreduce",
        "n/a",
    ):
        assert text in table


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["model=tiny_sdxl", "world_size=2", "strategy=naive_patch", "batch=1", "steps=1", "json=true"]
    assert D.main(argv) == 0
    out = capsys.readouterr().out
    assert "naive_patch" in out and "output_gather" in out and '"world_size": 2' in out
    assert D.main(["model=sdxl", "world_size=5", "strategy=displaced_patch"]) == 2
    assert "valid world sizes" in capsys.readouterr().err


def test_cli_tensor_on_8_devices(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command: SDXL at 1024^2 with tensor parallelism on 8 ranks prints its table (MACs of rank 0,
    which holds the larger head blocks; the CFG batch of 2 doubles the Table 2 bytes: 2.666 G)."""
    argv = ["model=sdxl", "height=1024", "width=1024", "world_size=8", "strategy=tensor"]
    assert D.main(argv) == 0
    out = capsys.readouterr().out
    assert "world_size=8" in out and "tp_allreduce" in out and "2.666 G" in out
    gmacs = float(re.search(r"GMACs / step / device\s*\|\s*([\d,.]+)", out).group(1).replace(",", ""))
    assert PAPER_GMACS_1024 / 8 < gmacs < PAPER_GMACS_1024 / 4
    assert gmacs == pytest.approx(1057.1, abs=0.05)  # what we found: 2 x 528.5 per latent (1/8: 2 x 422.6)


def test_parse_args() -> None:
    args = D.parse_args(
        ["model=sdxl", "height=2048", "cfg_split=true", "strategy.mode=stale_gn", "bucket_mb=8.5"]
    )
    assert args == {"model": "sdxl", "height": 2048, "cfg_split": True, "mode": "stale_gn", "bucket_mb": 8.5}
    with pytest.raises(ValueError, match="key=value"):
        D.parse_args(["sdxl"])
