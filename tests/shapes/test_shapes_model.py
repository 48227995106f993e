"""The shipped shapes model: its single-device images show their captions, and at 4 ranks displaced patch keeps
the objects that naive patch breaks at the band borders.

One 4-rank pool run makes, for the first ``N`` held-out captions (DDIM, ``STEPS`` steps, guidance 5, 128 px,
caption ``i`` with seed ``i``), the single-device images and the images of each strategy below; the check of the
single-device images alone runs ``experiments/shapes_model/evaluate.py`` on 144 captions in the test process.
Bounds come from the measurement in the comment above each test.
"""

from __future__ import annotations

import pytest
import torch

from distri.data.shapes import held_out_captions
from distri.generate import to_pil
from distri.metrics.shapes import shape_scores
from distri.metrics.standins import standin_lpips
from experiments.shapes_model.evaluate import main as evaluate
from tests.conftest import make_pool

# The module's one pool run is one task that reports no progress until it ends: 301 s on 2 idle cores of the
# slower (AMD EPYC) host, over 300 s whenever another process shares them; the pool's watchdog gets 900 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
POOL_TIMEOUT_S = 900

N = 12
STEPS = 25
CAPTIONS = held_out_captions(N)
RUNS = {
    "displaced": {"strategy": "displaced_patch"},
    "naive": {"strategy": "naive_patch"},
    "stale_gn": {"strategy": "displaced_patch", "params": {"mode": "stale_gn"}},
    "separate_gn": {"strategy": "displaced_patch", "params": {"mode": "separate_gn"}},
    "no_warmup": {"strategy": "displaced_patch", "params": {"warmup_steps": 0}},
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """``{"ref": [...], run name: [...]}``: image tensors, also saved as PNGs under ``"<name>_paths"``."""
    pool = make_pool(4, timeout_s=POOL_TIMEOUT_S)
    try:
        res = pool.run("tests.shapes.tasks:shapes_vs_single", captions=CAPTIONS, runs=list(RUNS.values()),
                       steps=STEPS)[0]  # fmt: skip
    finally:
        pool.close()
    out = {"ref": res["ref"], **dict(zip(RUNS, res["images"]))}
    root = tmp_path_factory.mktemp("shapes")
    for name in list(out):
        (root / name).mkdir()
        out[f"{name}_paths"] = []
        for i, img in enumerate(out[name]):
            path = root / name / f"{i:03d}.png"
            to_pil(img).save(path)
            out[f"{name}_paths"].append(path)
    return out


def _lpips(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    net = standin_lpips()
    with torch.no_grad():
        return net(torch.stack(a) * 2 - 1, torch.stack(b) * 2 - 1).mean().item()


def _scores(images, name: str) -> dict:
    return shape_scores(images[f"{name}_paths"], CAPTIONS, images["ref_paths"])


# Measured with the shipped weights (UNet step 9000): 0.867 of the attributes of the first 144 held-out captions
# (DDIM 25 steps, guidance 5: ``experiments/shapes_model/evaluate.py --captions 144``, the README's number), 0.848
# of the first 48, 0.753 of the first 12 (this module's pool run: too few captions to decide a bar of 0.8 on,
# hence the 144 here). The bound is the issue's.
def test_single_device_images_show_their_captions():
    table = evaluate(["--captions", "144", "--threads", "2"])
    print(f"single-device shape accuracy {table['all']['fraction']:.3f} on 144 captions")
    assert table["all"]["fraction"] >= 0.8


# Measured (12 captions): LPIPS (stand-in) vs the single device, displaced 0.0012 / naive 0.104; shape agreement
# with the single device, displaced 0.988 / naive 0.679. Bounds: naive's LPIPS at least 0.04 above displaced's
# and 5 times it; displaced's agreement at least 0.15 above naive's.
def test_displaced_beats_naive_at_4_ranks(images):
    lp = {k: _lpips(images[k], images["ref"]) for k in ("displaced", "naive")}
    agree = {k: _scores(images, k)["shape_agreement_vs_orig"] for k in ("displaced", "naive")}
    print(f"lpips {lp}, agreement {agree}")
    assert lp["naive"] - lp["displaced"] > 0.04 and lp["naive"] > 5 * lp["displaced"]
    assert agree["displaced"] - agree["naive"] > 0.15


# Measured (12 captions; corrected_async_gn with 4 warm-up steps vs the other setting): max abs difference over
# the images / LPIPS (stand-in) between the two settings: stale_gn 0.369 / 0.0007, separate_gn 0.981 / 0.0225,
# warmup_steps=0 0.988 / 0.0163. Bounds: 0.1 and half the smallest LPIPS measured, 0.0003 (rounded down).
@pytest.mark.parametrize(
    "a, b", [("displaced", "stale_gn"), ("displaced", "separate_gn"), ("displaced", "no_warmup")]
)
def test_group_norm_and_warm_up_settings_change_the_images(images, a, b):
    diff = max((x - y).abs().max().item() for x, y in zip(images[a], images[b]))
    lp = _lpips(images[a], images[b])
    print(f"{a} vs {b}: max abs diff {diff:.3f}, lpips {lp:.4f}")
    assert diff > 0.1 and lp > 0.0003
