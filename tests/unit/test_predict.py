"""The cost model (distri.predict): the paper's latencies, the cost table against formulas, the latency model
against hand computation, the command line and the analysis frame."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from distri.parallel.strategy import strategy_from_config
from distri.predict import predict
from distri.predict.api import parse_strategy
from distri.predict.cli import main
from distri.predict.model import comm_time, op_time
from distri.predict.profiles import DEVICES, LINKS, DeviceProfile, LinkProfile
from experiments.distrifusion_fig6.table import PAPER, TABLE2_ORDER

# Measured misses of the current model (experiments/distrifusion_fig6/README.md): exposed blocking
# communication on the GPU is under-predicted; these fail the 20 % bound and are kept visible, not loosened.
KNOWN_MISSES = {("Sync. TP", 8, 1024): -0.309, ("Sync. TP", 8, 2048): -0.279, ("Sync. PP", 8, 1024): -0.226}


def _paper_case(key):
    method, _, n, size = key
    miss = KNOWN_MISSES.get((method, n, size))
    marks = [pytest.mark.xfail(strict=True, reason=f"predicted {miss:+.1%}")] if miss else []
    return pytest.param(key, marks=marks, id=f"{method}-{n}-{size}")


@pytest.mark.parametrize("key", [_paper_case(k) for k in PAPER])
def test_paper_latency_within_20_percent(key):
    method, strategy, n, size = key
    p = predict("sdxl", size, size, n, strategy, "a100", "nvlink", 50)
    assert abs(p.total_s / PAPER[key] - 1) <= 0.20, f"{key}: predicted {p.total_s:.2f} s vs {PAPER[key]} s"


@pytest.mark.parametrize("size", [1024, 2048, 3840])
def test_table2_ordering(size):
    spec = {m: s for (m, s, n, z) in PAPER if n == 8 and z == size}
    predicted = {m: predict("sdxl", size, size, 8, spec[m]).total_s for m in TABLE2_ORDER}
    assert sorted(TABLE2_ORDER, key=predicted.get, reverse=True) == list(TABLE2_ORDER), predicted


def test_a100_calibration_is_reproducible():
    """The shipped A100 numbers are what the calibration on the one-GPU latencies gives."""
    from distri.predict.calibrate import calibrate_paper_a100

    dev, shipped = calibrate_paper_a100(), DEVICES["a100"]
    assert dev.matmul_efficiency == pytest.approx(shipped.matmul_efficiency, abs=2e-4)
    assert dev.attention_efficiency == pytest.approx(shipped.attention_efficiency, abs=2e-4)
    assert dev.kernel_overhead_us == pytest.approx(shipped.kernel_overhead_us, abs=0.02)


def test_cost_table_against_unet_formulas():
    """tiny_sdxl at 256 px, batch 2: conv_in's and one self-attention's MACs from the config; the collectives
    of displaced patch at 2 ranks: the output gather blocking, K/V asynchronous after the warm-up."""
    from distri.dryrun.simulate import unet_config
    from distri.predict.costs import step_costs

    cfg = unet_config("tiny_sdxl")
    c = step_costs("tiny_sdxl", 256, 256, 1, "none", layers=True)
    h = w = 256 // 8
    c0 = cfg["block_out_channels"][0]
    assert c.layers["conv_in"]["conv"] == 2 * h * w * c0 * cfg["in_channels"] * 9
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    c1, tokens = cfg["block_out_channels"][1], (h // 2) * (w // 2)
    assert c.layers[name]["attention"] == 2 * tokens * tokens * 2 * c1  # scores and weighted sum, batch 2
    projections = sum(row["linear"] for k, row in c.layers.items() if k.startswith(name + "."))
    assert projections == 2 * tokens * c1 * c1 * 4  # to_q, to_k, to_v, to_out.0 (innermost modules)

    d = step_costs("tiny_sdxl", 256, 256, 2, "displaced_patch")
    out = [r for r in d.steady_comm if r["kind"] == "output_gather"]
    assert out == [
        {
            "kind": "output_gather",
            "op": "all_gather",
            "n": 2,
            "blocking": True,
            "calls": 1,
            "bytes": 2 * 4 * (h // 2) * w * 1 * 2,
        }
    ]  # fmt: skip  (float16, (n - 1) = 1 part)
    assert all(not r["blocking"] for r in d.steady_comm if r["kind"] == "attn_kv")
    assert all(r["blocking"] for r in d.warmup_comm)


def test_latency_formulas():
    dev = DeviceProfile("t", "test", {"float16": {"linear": 100.0}}, 1000.0, 0.5, 0.5, 3.0, sms=4, tile=64)
    # 128 x 128 output: 4 tiles on 4 SMs, one wave, no waste: compute-bound
    assert op_time("linear", 10**9, 10**6, 128, 128, "float16", dev) == pytest.approx(2e9 / 50e12 + 3e-6)
    # 64 x 320: 5 tiles -> 2 waves of 4 SMs: 8 / 5 of the work
    assert op_time("linear", 10**9, 10**6, 64, 320, "float16", dev) == pytest.approx(
        2e9 * 8 / 5 / 50e12 + 3e-6
    )
    assert op_time("other", 0, 10**9, 0, 0, "float16", dev) == pytest.approx(1e-3 + 3e-6)
    link = LinkProfile("l", "test", 2.0, 100.0)
    recs = [{"op": "all_reduce", "n": 8, "calls": 3, "bytes": 7e8, "blocking": True},
            {"op": "all_gather", "n": 8, "calls": 1, "bytes": 1e8, "blocking": False}]  # fmt: skip
    assert comm_time(recs, link, True) == pytest.approx(3 * 2 * 7 * 2e-6 + 7e8 / 100e9)
    assert comm_time(recs, link, False) == pytest.approx(7 * 2e-6 + 1e8 / 100e9)
    # a link whose ranks wake late (gloo): each blocking call loses wake_us more, asynchronous ones nothing
    slow = LinkProfile("l", "test", 2.0, 100.0, wake_us=500.0)
    assert comm_time(recs, slow, True) == pytest.approx(3 * (2 * 7 * 2e-6 + 500e-6) + 7e8 / 100e9)
    assert comm_time(recs, slow, False) == comm_time(recs, link, False)
    assert all(lk.wake_us == 0 for name, lk in LINKS.items() if name != "gloo") and LINKS["gloo"].wake_us > 0


def test_exposed_async_and_totals():
    """A displaced step hides its asynchronous all-gathers behind compute; the call adds the non-split parts."""
    p = predict("sdxl", 1024, 1024, 8, "displaced_patch")
    ps = p.per_step
    assert ps["exposed_comm_s"] < ps["warmup_exposed_comm_s"]
    assert p.total_s == pytest.approx(p.compute_s + p.exposed_comm_s + p.non_split_s)
    assert p.exposed_comm_s == pytest.approx(5 * ps["warmup_exposed_comm_s"] + 45 * ps["exposed_comm_s"])


def test_device_without_overlap_exposes_every_collective():
    """On a device that cannot overlap (the ``cpu`` profile: gloo shares the rank's one core) a step's exposed
    communication is every collective's time, written here from the alpha-beta formula."""
    from dataclasses import replace

    from distri.predict.model import exposed

    link = LinkProfile("t", "test", 2.0, 100.0)
    recs = [
        {"op": "all_gather", "n": 8, "bytes": 7e8, "calls": 3, "blocking": True},
        {"op": "all_gather", "n": 8, "bytes": 1e8, "calls": 1, "blocking": False},
    ]
    blocking, asynchronous = 3 * 7 * 2e-6 + 7e8 / 100e9, 7 * 2e-6 + 1e8 / 100e9
    assert exposed(recs, link, 1.0) == pytest.approx(blocking)  # the async part hides behind 1 s of compute
    assert exposed(recs, link, 1.0, overlap=False) == pytest.approx(blocking + asynchronous)
    gpu = predict("sdxl", 1024, 1024, 8, "displaced_patch", "a100", link)
    cpu_like = predict(
        "sdxl", 1024, 1024, 8, "displaced_patch", replace(DEVICES["a100"], comm_overlap=False), link
    )
    assert cpu_like.exposed_comm_s > gpu.exposed_comm_s and cpu_like.compute_s == gpu.compute_s
    assert not DEVICES["cpu"].comm_overlap and DEVICES["a100"].comm_overlap


def test_pcie_makes_displaced_patch_pay_less():
    nv = predict("sdxl", 2048, 2048, 8, "displaced_patch", "h100", "nvlink4")
    pcie = predict("sdxl", 2048, 2048, 8, "displaced_patch", "h100", "pcie")
    assert pcie.exposed_comm_s > 10 * nv.exposed_comm_s


def test_cli_table_and_json(capsys):
    assert (
        main(["model=sdxl", "height=2048", "width=2048", "world_size=1,8", "device=a100", "link=nvlink"]) == 0
    )
    text = capsys.readouterr().out
    assert "displaced_patch/full_sync" in text and "tensor" in text
    assert "fastest: 1 device(s): none" in text and "8 device(s): naive_patch/alternate" in text
    exact = next(line for line in text.splitlines() if line.startswith("fastest exact"))
    # at 2048 px over NVLink, Sync. PP is predicted faster than Sync. TP (the paper's Table 2 has it so)
    assert "8 device(s): displaced_patch/full_sync" in exact and "naive" not in exact
    assert main(["height=2048", "world_size=8", "strategy=tensor", "link=pcie", "json=true"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["setting"]["strategy"] for r in rows] == ["tensor"]  # world size 1 not asked: no baseline row
    assert rows[0]["setting"]["exact"] is True
    assert math.isclose(
        rows[0]["total_s"], rows[0]["compute_s"] + rows[0]["exposed_comm_s"] + rows[0]["non_split_s"]
    )


@pytest.mark.slow  # 30 s: two dry runs of the real SDXL's 8-device layouts
def test_cli_strategy_parameters_do_not_reach_the_baseline(capsys):
    """warmup_steps is displaced patch's: the one-device baseline row still comes, and fewer synchronous
    steps leave less blocking communication (10 steps: 1 + 1 synchronous against 1 + 2)."""
    args = ["model=sdxl", "world_size=1,8", "strategy=displaced_patch", "steps=10", "json=true"]
    rows = {w: [] for w in (1, 2)}
    for w in rows:
        assert main([*args, f"warmup_steps={w}"]) == 0
        rows[w] = json.loads(capsys.readouterr().out)
    assert [r["setting"]["strategy"] for r in rows[1]] == ["none", "displaced_patch"]
    assert rows[1][0]["total_s"] == rows[2][0]["total_s"]
    assert rows[1][1]["exposed_comm_s"] < rows[2][1]["exposed_comm_s"]


def test_cli_loads_neither_torch_nor_diffusers():
    """The command answers in a second: with packaged costs it reads the strategies' declarations and the
    profiles only. Checked in a fresh interpreter, by what it imported (not by a timing)."""
    code = (
        "import sys; from distri.predict.cli import main; "
        "rc = main(['model=sdxl', 'height=2048', 'world_size=1,2,4,8', 'device=h100', 'link=pcie5']); "
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "fastest:" in out and "HEAVY []" in out, out


def test_cli_bad_input(capsys):
    assert main(["device=tpu"]) == 2
    assert "unknown device='tpu'; valid: a100" in capsys.readouterr().err
    assert main(["strategy=displaced_patch/bogus", "world_size=8"]) == 2
    assert "no choice 'bogus'" in capsys.readouterr().err


def test_prediction_in_analysis_frame():
    from analysis.frame import predictions_frame

    df = predictions_frame([predict("sdxl", 1024, 1024, 8, "displaced_patch/no_sync")])
    row = df.iloc[0]
    assert row["method"] == "No Comm." and row["resolution"] == "1024^2" and row["world_size"] == 8
    assert row["predicted_s"] == pytest.approx(row["compute_s"] + row["exposed_comm_s"] + row["non_split_s"])


def test_profiles_cite_sources():
    assert all(d.calibration for d in DEVICES.values())
    assert all(link.sources for link in LINKS.values())


@pytest.mark.parametrize(
    "spec, exact",
    [
        ("none", True),
        ("tensor", True),  # tests/parallel/test_tensor.py: equal to one device at float tolerance
        ("displaced_patch/full_sync", True),  # tests/parallel/test_patch_unet.py::test_full_sync_exact
        ("displaced_patch", False),
        ("displaced_patch/no_sync", False),
        ("naive_patch", False),
    ],
)
def test_exact_is_declared_by_the_strategies_tests_check_as_exact(spec, exact):
    name, params = parse_strategy(spec)
    assert strategy_from_config({"name": name, **params}).exact() is exact
