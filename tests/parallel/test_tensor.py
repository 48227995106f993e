"""Strategy ``tensor`` on gloo/CPU: exactness, memory, communication volume, restore, validation.

Tolerances: in float64 the tensor-parallel UNet output equals the single-device output within
``1e-10 * max|ref|`` (observed ~2e-15: only the summation order of the all-reduces differs); in float32 within
``1e-4 * max|ref|``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distri.launch import WorkerPool
from distri.parallel import tensor
from distri.parallel.context import ParallelContext
from distri.testing_tp import CONFIGS, LATENT, SDXL_SHAPED, build_unet, make_inputs

TOL64 = 1e-10
TOL32 = 1e-4
BATCH = 2  # unconditional + conditional
CONFIG_DIR = Path(__file__).resolve().parents[2] / "distri" / "models" / "configs"


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def pool(request):
    """One worker pool per world size, shared by every case of this module (pytest runs them grouped)."""
    with WorkerPool(request.param) as p:
        yield p


def expected_allreduce(cfg: dict, batch: int, latent: int) -> tuple[int, int]:
    """(calls, elements) of the all-reduces in one UNet forward, counted by hand from the config.

    Every transformer layer reduces attn1, attn2 and ff outputs (tokens x dim each), every ResNet its conv2
    output, every down/up-sampler its conv output, and the UNet its conv_out output.
    """
    ch = list(cfg["block_out_channels"])
    levels, lpb = len(ch), cfg["layers_per_block"]
    tl = cfg.get("transformer_layers_per_block", 1)
    tl = [tl] * levels if isinstance(tl, int) else list(tl)
    calls = elems = 0

    def add(n_calls: int, c: int, side: int) -> None:
        nonlocal calls, elems
        calls += n_calls
        elems += n_calls * batch * c * side * side

    side = latent
    for i, (block, c) in enumerate(zip(cfg["down_block_types"], ch)):
        for _ in range(lpb):
            add(1, c, side)  # resnet conv2
            if block.startswith("CrossAttn"):
                add(3 * tl[i], c, side)  # attn1, attn2, ff of every transformer layer
        if i < levels - 1:
            side //= 2
            add(1, c, side)  # Downsample2D conv
    add(2, ch[-1], side)  # mid block: two resnets
    add(3 * tl[-1], ch[-1], side)  # and one transformer
    for j, (block, c) in enumerate(zip(cfg["up_block_types"], ch[::-1])):
        for _ in range(lpb + 1):
            add(1, c, side)
            if block.startswith("CrossAttn"):
                add(3 * tl[::-1][j], c, side)
        if j < levels - 1:
            side *= 2
            add(1, c, side)  # Upsample2D conv at the doubled resolution
    add(1, cfg["out_channels"], side)  # conv_out
    return calls, elems


@pytest.mark.parametrize(
    "model, cfg_split",
    [("sdxl", False), ("sdxl", True), ("sd15", False), ("sd15", True), ("sd_scale_shift", False)],
    ids=["sdxl-nocfg", "sdxl-cfgsplit", "sd15-nocfg", "sd15-cfgsplit", "sd_scale_shift-nocfg"],
)
def test_tensor_matches_single_device(pool, model, cfg_split):
    steps = 2
    res = pool.run("distri.testing_tp:tp_check", model=model, cfg_split=cfg_split, steps=steps)
    par = pool.world_size // (2 if cfg_split else 1)
    n_calls, n_elems = expected_allreduce(CONFIGS[model], BATCH // (2 if cfg_split else 1), LATENT)
    for r in res:
        assert r["par_size"] == par and r["shape_ok"] and not r["skipped"]
        # exactness: float64, only the summation order differs
        assert r["max_err"] <= TOL64 * r["ref_max"], r["max_err"]
        # remove() restores the stock UNet: bit-identical output, all parameters, the stock processors
        assert r["restored_identical"] and r["restored_params"] and r["restored_processors"]
        # the ledger: every step the same hand-counted all-reduce volume, paper convention
        assert sorted(r["ledger"]) == list(range(steps))
        for s in range(steps):
            tp = r["ledger"][s].get("tp_allreduce", {"calls": 0, "elements": 0, "bytes": 0.0})
            if par == 1:
                assert tp["calls"] == 0
                continue
            assert tp["calls"] == n_calls
            assert tp["elements"] == n_elems
            assert tp["bytes"] == pytest.approx(n_elems * (par - 1) / par * 2 * 8, rel=1e-12)
        # memory: each rank holds ~1/par of the sharded layers (replicated row-parallel biases: a few %)
        rep = r["report"]
        if par > 1:
            assert rep["sharded_layers"] > 0 and rep["full_layers_retained"]
            assert rep["sharded_ratio"] * par == pytest.approx(1.0, rel=0.03)
            assert rep["unet_local_bytes"] < rep["unet_full_bytes"]
            saved = rep["unet_full_bytes"] - rep["unet_local_bytes"]
            assert saved == rep["sharded_full_bytes"] - rep["sharded_local_bytes"]
        else:
            assert rep["sharded_layers"] == 0 and rep["unet_local_bytes"] == rep["unet_full_bytes"]


def test_tensor_float32(pool):
    res = pool.run("distri.testing_tp:tp_check", model="sdxl", cfg_split=False, dtype="float32", steps=1)
    for r in res:
        assert r["max_err"] <= TOL32 * r["ref_max"], r["max_err"]
        assert r["ledger"][0]["tp_allreduce"]["bytes"] > 0
        assert r["restored_identical"]


def test_tensor_pipeline_tiny(pool, tmp_path_factory):
    """End to end through the stock pipeline on a tiny model (world 4: 2-way CFG split x 2-way tensor)."""
    pytest.importorskip("distri.generate")
    cache = str(tmp_path_factory.getbasetemp() / "tiny_models")
    cfg_split = pool.world_size == 4
    res = pool.run(
        "distri.testing_tp:tp_pipeline_check", name="tiny_sdxl", cfg_split=cfg_split, cache_dir=cache
    )
    for r in res:
        assert r["max_err"] <= 1e-4, r["max_err"]
        assert r["bytes"] > 0


def test_par_size_one_is_noop():
    unet, inputs = build_unet("sd15"), make_inputs("sd15")
    with torch.no_grad():
        ref = unet(**inputs).sample
        handle = tensor.apply(unet, ParallelContext())
        out = unet(**inputs).sample
        handle.remove()
    assert torch.equal(out, ref)
    assert handle.param_report()["sharded_layers"] == 0


def test_invalid_world_size_raises_before_touching_the_unet():
    unet = build_unet("sdxl")
    with pytest.raises(ValueError) as e:
        tensor.apply(
            unet, ParallelContext(world_size=3)
        )  # par_size 3; validation happens before any collective
    msg = str(e.value)
    assert "par_size=3" in msg and "attention heads = 4 in down_blocks.1.attentions.0" in msg
    assert "ResNet channels = 32" in msg and "GroupNorm groups = 8" in msg
    assert "[1, 2, 4]" in msg
    with pytest.raises(ValueError, match=r"attention heads = 4 .*\n.*world_size in \[2, 4, 8\]"):
        tensor.apply(unet, ParallelContext(world_size=16, cfg_size=2))  # par_size 8: only the 4 heads fail
    assert not unet._forward_pre_hooks and not unet._forward_hooks


def test_valid_world_sizes():
    assert tensor.valid_world_sizes(SDXL_SHAPED) == [1, 2, 4]  # level-0 "2 heads" has no attention: ignored
    assert tensor.valid_world_sizes(build_unet("sd15")) == [1, 2, 4]
    for name, expected in (("sdxl_unet.json", [1, 2]), ("sd15_unet.json", [1, 2, 4, 8])):
        path = CONFIG_DIR / name
        if path.exists():  # real SDXL: 10 and 20 heads with 32 groups -> gcd 2
            assert tensor.valid_world_sizes(json.loads(path.read_text())) == expected


def test_free_full(pool):
    if pool.world_size != 2:
        pytest.skip("one world size is enough")
    for r in pool.run("distri.testing_tp:tp_free_full"):
        assert r["freed"] and not r["report"]["full_layers_retained"]
        assert r["max_err"] <= TOL64 * 10
        assert "free_full=True" in r["remove_error"]
