"""At world size 1 the framework adds nothing: strategy none and the patch strategies give the stock image bit for bit.

(tests/unit/test_models.py checks that the stock image equals a plain diffusers pipeline built from the same
components, bit for bit.)
"""

from __future__ import annotations

import torch


def test_none_naive_and_displaced_at_world_size_1_equal_single_device_bit_for_bit(single_pool):
    runs = [
        {"strategy": "none"},
        {"strategy": "naive_patch", "params": {"split_scheme": "alternate"}},
        {"strategy": "displaced_patch", "params": {}},
    ]
    r = single_pool.run(
        "tests.parallel.tasks:pipeline_vs_single", model="tiny_sdxl", runs=runs, steps=3, size=64
    )[0]
    for img in r["images"]:
        assert torch.equal(img, r["ref"])
