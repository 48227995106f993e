"""Strategy ``tensor`` on gloo/CPU: exactness (even and uneven splits), memory, communication, restore, validation.

Tolerances: in float64 the tensor-parallel UNet output equals the single-device output within
``1e-10 * max|ref|`` (observed ~2e-15: only the summation order of the all-reduces differs); in float32 within
``1e-4 * max|ref|``.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

from distri.launch import WorkerPool
from distri.parallel import tensor, tensor_handle, tensor_plan
from distri.parallel.context import ParallelContext
from tests.parallel import tp_tasks as testing_tp
from tests.parallel.tp_tasks import CONFIGS, LATENT, SD15_SHAPED, SDXL_SHAPED, build_unet, make_inputs

TOL64 = 1e-10
TOL32 = 1e-4
BATCH = 2  # unconditional + conditional
CONFIG_DIR = Path(__file__).resolve().parents[2] / "distri" / "models" / "configs"

# Nothing divides evenly over 4 ranks (and little over 2): 5 heads at level 0 (2,1,1,1), 6 at level 1 (2,2,1,1),
# 5 GroupNorm groups (2,1,1,1), 30 conv input channels at level 0 (8,8,7,7). The FFN (4 x channels) is always
# even here; test_uneven_layers_in_one_process splits it 3 ways.
UNEVEN: dict = {
    **SD15_SHAPED,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (30, 60),
    "layers_per_block": 1,
    "attention_head_dim": (5, 6),  # diffusers' SD configs: the head *count* per level
    "norm_num_groups": 5,
}
UNEVEN_ATTENTIONS = {5: 6, 6: 8}  # heads -> attentions (attn1 + attn2 of 3 transformers, of 4 at level 1)


def uneven_tp_check(env, **kw) -> dict:
    """Worker task: :func:`tests.parallel.tp_tasks.tp_check` on the :data:`UNEVEN` UNet."""
    with mock.patch.dict(testing_tp.CONFIGS, uneven=UNEVEN):
        return testing_tp.tp_check(env, "uneven", **kw)


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
    res = pool.run("tests.parallel.tp_tasks:tp_check", model=model, cfg_split=cfg_split, steps=steps)
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
            assert rep["sharded_layers"] > 0 and rep["full_layers_retained"] and rep["uneven_layers"] == 0
            assert rep["full_layers"] == "host" and rep["full_layers_host_bytes"] == rep["sharded_full_bytes"]
            assert rep["sharded_ratio"] * par == pytest.approx(1.0, rel=0.03)
            assert rep["unet_local_bytes"] < rep["unet_full_bytes"]
            saved = rep["unet_full_bytes"] - rep["unet_local_bytes"]
            assert saved == rep["sharded_full_bytes"] - rep["sharded_local_bytes"]
        else:
            assert rep["sharded_layers"] == 0 and rep["unet_local_bytes"] == rep["unet_full_bytes"]


def test_tensor_float32(pool):
    res = pool.run(
        "tests.parallel.tp_tasks:tp_check", model="sdxl", cfg_split=False, dtype="float32", steps=1
    )
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
        "tests.parallel.tp_tasks:tp_pipeline_check", name="tiny_sdxl", cfg_split=cfg_split, cache_dir=cache
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


def test_tensor_uneven_heads_match_single_device(pool):
    """Head counts, GroupNorm groups and conv widths that do not divide the degree: contiguous blocks whose sizes
    differ by at most one; same output as one device, same all-reduce traffic, honest per-rank memory."""
    res = pool.run("tests.parallel.test_tensor:uneven_tp_check", cfg_split=False, steps=1)
    n = pool.world_size
    n_calls, n_elems = expected_allreduce(UNEVEN, BATCH, LATENT)
    blocks = {4: {5: [2, 1, 1, 1], 6: [2, 2, 1, 1]}, 2: {5: [3, 2], 6: [3, 3]}}[n]
    for r in res:
        assert r["par_size"] == n and r["shape_ok"] and not r["skipped"]
        assert r["max_err"] <= TOL64 * r["ref_max"], r["max_err"]
        assert r["restored_identical"] and r["restored_params"] and r["restored_processors"]
        tp = r["ledger"][0]["tp_allreduce"]
        assert (tp["calls"], tp["elements"]) == (n_calls, n_elems)  # uneven shards, full-size reductions
    reps = [r["report"] for r in res]
    for rank, rep in enumerate(reps):
        want = sum(blocks[h][rank] * k for h, k in UNEVEN_ATTENTIONS.items())
        assert rep["par_rank"] == rank and rep["attention_heads_local"] == want
        assert rep["attention_heads_full"] == sum(h * k for h, k in UNEVEN_ATTENTIONS.items())
        assert rep["uneven_layers"] > 0 and rep["even_ratio"] == 1 / n
    # the shards tile the full layers (plus the row-parallel biases every rank keeps); rank 0 holds the most
    full = reps[0]["sharded_full_bytes"]
    assert sum(rep["sharded_local_bytes"] for rep in reps) == pytest.approx(full, rel=0.03)
    assert reps[0]["sharded_ratio"] > 1 / n > reps[-1]["sharded_ratio"]


@pytest.mark.parametrize("units, n", [(10, 8), (20, 8), (6, 4), (5, 4), (32, 8), (7, 7), (3, 1), (45, 6)])
def test_shard_range(units, n):
    blocks = [tensor_plan.shard_range(units, n, r) for r in range(n)]
    sizes = [b - a for a, b in blocks]
    assert blocks[0][0] == 0 and blocks[-1][1] == units
    assert all(blocks[r][1] == blocks[r + 1][0] for r in range(n - 1))  # contiguous, in rank order
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1 and sizes == sorted(sizes, reverse=True)
    if (units, n) == (10, 8):  # SDXL's 64x64 level over 8 ranks
        assert sizes == [2, 2, 1, 1, 1, 1, 1, 1]
    if (units, n) == (20, 8):  # SDXL's 32x32 level
        assert sizes == [3, 3, 3, 3, 2, 2, 2, 2]


def test_uneven_layers_in_one_process():
    """3 ranks simulated in one process (no group: the all-reduce is the identity, so every rank returns its
    partial sum + bias): the partials of an attention (4 heads: 2,1,1) and a GEGLU feed-forward (128 features:
    43,43,42) add up to the full layer."""
    n = 3
    unet = build_unet("sd15")
    block = unet.down_blocks[1].attentions[0].transformer_blocks[0]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 32, generator=g, dtype=torch.float64)
    text = torch.randn(2, 8, 32, generator=g, dtype=torch.float64)
    calls = {
        "attn1": lambda b: b.attn1(x),
        "attn2": lambda b: b.attn2(x, encoder_hidden_states=text),
        "ff": lambda b: b.ff(x),
    }
    biases = {
        "attn1": block.attn1.to_out[0].bias,
        "attn2": block.attn2.to_out[0].bias,
        "ff": block.ff.net[2].bias,
    }
    with torch.no_grad():
        ref = {k: f(block) for k, f in calls.items()}
        total = {k: torch.zeros_like(v) for k, v in ref.items()}
        heads = []
        for r in range(n):
            handle = tensor.apply(unet, ParallelContext(rank=r, world_size=n))
            heads.append(block.attn1.processor.heads)
            for k, f in calls.items():
                total[k] += f(block)
            handle.remove()
        assert heads == [2, 1, 1] and block.ff.net[2].in_features == 128
        for k, v in ref.items():
            err = (total[k] - (n - 1) * biases[k] - v).abs().max()
            assert err <= TOL64 * v.abs().max(), (k, float(err))


def test_invalid_world_size_raises_before_touching_the_unet():
    unet = build_unet("sdxl")
    with pytest.raises(ValueError) as e:
        tensor.apply(
            unet, ParallelContext(world_size=5)
        )  # par_size 5; validation happens before any collective
    msg = str(e.value)
    assert "par_size=5" in msg and "attention heads = 4 in down_blocks.1.attentions.0" in msg
    assert "attention heads = 8" not in msg and "GroupNorm groups" not in msg
    assert "[1, 2, 3, 4]" in msg
    with pytest.raises(ValueError) as e:
        tensor.apply(unet, ParallelContext(world_size=9))  # fewer heads and groups than ranks
    msg = str(e.value)
    assert "attention heads = 8 in" in msg and "GroupNorm groups = 8 in down_blocks.0.resnets.0" in msg
    with pytest.raises(ValueError, match=r"attention heads = 4 .*\n.*world_size in \[2, 4, 6, 8\]"):
        tensor.apply(unet, ParallelContext(world_size=16, cfg_size=2))  # par_size 8: only the 4 heads fail
    assert not unet._forward_pre_hooks and not unet._forward_hooks


def test_valid_world_sizes():
    assert tensor_plan.valid_world_sizes(SDXL_SHAPED) == [
        1,
        2,
        3,
        4,
    ]  # level-0 "2 heads" has no attention: ignored
    assert tensor_plan.valid_world_sizes(build_unet("sd15")) == [1, 2, 3, 4]
    assert tensor_plan.valid_world_sizes(UNEVEN) == [1, 2, 3, 4, 5]
    for name, expected in (("sdxl_unet.json", 10), ("sd15_unet.json", 8)):
        path = CONFIG_DIR / name
        if path.exists():  # real SDXL: 10 and 20 heads, 32 groups -> 1..10; SD 1.5: 8 heads -> 1..8
            assert tensor_plan.valid_world_sizes(json.loads(path.read_text())) == list(range(1, expected + 1))
    assert tensor_plan.valid_world_sizes(SDXL_SHAPED, max_size=3) == [1, 2, 3]


def test_free_full(pool):
    if pool.world_size != 2:
        pytest.skip("one world size is enough")
    for r in pool.run("tests.parallel.tp_tasks:tp_free_full"):
        assert r["freed"] and not r["report"]["full_layers_retained"]
        assert r["report"]["full_layers"] == "freed" and r["report"]["full_layers_host_bytes"] == 0
        assert r["max_err"] <= TOL64 * 10
        assert "free_full=True" in r["remove_error"]


def test_full_layers_wait_on_the_host_and_come_back_exactly():
    """Rank 0 of 2 in one process (no group): each full layer leaves the UNet for host memory as its shard
    comes in, is referenced only by the handle, and remove() puts the very same parameters back (bit-exact
    output). With free_full=True nothing is kept. (Host and device are both the CPU here; tests/gpu checks the
    device memory on CUDA.)"""
    import gc
    import weakref

    unet, inputs = build_unet("sdxl"), make_inputs("sdxl")
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    originals = {"to_q": attn.to_q, "conv_out": unet.conv_out}
    params = {id(p): p for m in originals.values() for p in m.parameters()}
    with torch.no_grad():
        ref = unet(**inputs).sample
        handle = tensor.apply(unet, ParallelContext(rank=0, world_size=2))
        in_tree = {id(p) for p in unet.parameters()}
        assert not in_tree & params.keys()  # the full layers are off the UNet...
        assert all(p.device == tensor_handle.HOST for p in params.values())  # ...and in host memory
        rep = handle.param_report()
        assert rep["full_layers"] == "host" and rep["full_layers_host_bytes"] == rep["sharded_full_bytes"] > 0
        handle.remove()
        assert attn.to_q is originals["to_q"] and unet.conv_out is originals["conv_out"]
        assert params.keys() <= {id(p) for p in unet.parameters()}
        assert torch.equal(unet(**inputs).sample, ref)

        refs = [weakref.ref(m) for m in originals.values()]
        del originals, params
        handle = tensor.apply(unet, ParallelContext(rank=0, world_size=2), free_full=True)
        gc.collect()
        assert all(r() is None for r in refs)  # freed at once, nothing kept on the host
        assert handle.param_report()["full_layers"] == "freed"
