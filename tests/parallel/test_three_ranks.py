"""World sizes need not be powers of two: 3 ranks where 3 x 4 divides the latent height."""

from __future__ import annotations

from tests.conftest import make_pool


def test_patch_strategies_at_3_ranks():
    pool = make_pool(3)
    try:
        r = pool.run(
            "tests.parallel.tasks:strategy_vs_single",
            kind="sdxl",
            strategy="displaced_patch",
            params={"mode": "full_sync"},
            steps=2,
            size=24,  # latent 24 = 3 bands x 8 rows; 4, 2 rows at the deeper levels
        )
        for x in r:
            assert (x["out"] - x["ref"]).abs().max().item() < 1e-10
        r = pool.run(
            "tests.parallel.tasks:strategy_vs_single", kind="sdxl", strategy="naive_patch",
            params={"split_scheme": "row"}, steps=2, size=24,
        )  # fmt: skip
        assert (r[0]["out"] - r[0]["ref"]).abs().max().item() > 1e-3
    finally:
        pool.close()
