"""The shipped shapes model: its single-device images show their captions, and at 4 ranks displaced patch keeps
the objects that naive patch breaks at the band borders.

One 4-rank pool run makes, for the first ``N`` held-out captions (DDIM, ``STEPS`` steps, guidance 5, 128 px,
caption ``i`` with seed ``i``), the single-device images and the images of each strategy below. Bounds come from
the measurement in the comment above each test.
"""

from __future__ import annotations

import pytest
import torch

from distri.data.shapes import held_out_captions
from distri.generate import to_pil
from distri.metrics.shapes import shape_scores
from distri.metrics.standins import standin_lpips
from tests.conftest import make_pool

# the module's one pool run: 301 s on 2 idle cores of the slower (AMD EPYC) host, where the default 300 s
# timeout cut it off
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

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
    pool = make_pool(4)
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


# Measured with the shipped weights (UNet step 4500, decoder step 1000): 0.580 of the captions' attributes
# (backgrounds all right; objects often, sizes and relations seldom). The bar is 0.8; strict, so a retrained model that reaches it
# turns this into a failure that asks for the marker to go.
@pytest.mark.xfail(
    strict=True, reason="shipped shapes model undertrained: 0.580 measured (README 'The shapes model')"
)
def test_single_device_images_show_their_captions(images):
    acc = shape_scores(images["ref_paths"], CAPTIONS)["shape_accuracy"]
    print(f"single-device shape accuracy {acc:.3f}")
    assert acc >= 0.8


# Measured (12 captions): LPIPS (stand-in) vs the single device, displaced 0.0011 / naive 0.090; shape agreement
# with the single device, displaced 0.914 / naive 0.667. Bounds: naive's LPIPS at least 0.04 above displaced's
# and 5 times it; displaced's agreement at least 0.15 above naive's.
def test_displaced_beats_naive_at_4_ranks(images):
    lp = {k: _lpips(images[k], images["ref"]) for k in ("displaced", "naive")}
    agree = {k: _scores(images, k)["shape_agreement_vs_orig"] for k in ("displaced", "naive")}
    print(f"lpips {lp}, agreement {agree}")
    assert lp["naive"] - lp["displaced"] > 0.04 and lp["naive"] > 5 * lp["displaced"]
    assert agree["displaced"] - agree["naive"] > 0.15


# Measured (12 captions; corrected_async_gn with 4 warm-up steps vs the other setting): max abs difference over
# the images / LPIPS (stand-in) between the two settings: stale_gn 0.467 / 0.0021, separate_gn 0.997 / 0.0221,
# warmup_steps=0 1.000 / 0.0134. Bounds: 0.1 and half the smallest LPIPS measured, 0.001.
@pytest.mark.parametrize(
    "a, b", [("displaced", "stale_gn"), ("displaced", "separate_gn"), ("displaced", "no_warmup")]
)
def test_group_norm_and_warm_up_settings_change_the_images(images, a, b):
    diff = max((x - y).abs().max().item() for x, y in zip(images[a], images[b]))
    lp = _lpips(images[a], images[b])
    print(f"{a} vs {b}: max abs diff {diff:.3f}, lpips {lp:.4f}")
    assert diff > 0.1 and lp > 0.001
