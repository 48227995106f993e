"""A strategy added the way a researcher's own repository adds one: a module and a YAML outside distri/ and
conf/ (here tests/toy_strategy), found through Hydra's search path, composed as ``strategy=recorder``, validated,
and run through the runner at 2 ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from distri.config import ConfigError, register_configs, validate

CONF = str(Path(__file__).resolve().parents[2] / "conf")
SEARCH = "hydra.searchpath=[pkg://tests.toy_strategy.conf]"
STEPS = 2


def _compose(*overrides: str) -> dict:
    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[SEARCH, "model=tiny_sdxl", "strategy=recorder", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_own_strategy_is_validated_like_a_builtin_one():
    d = _compose("strategy.record_dir=/tmp/x")
    validate(d)
    with pytest.raises(ConfigError, match="strategy.record_dir must name a folder"):
        validate(_compose())
    with pytest.raises(
        ConfigError, match="strategy recorder has no parameter mode; its parameters: cfg_split, rec"
    ):
        validate(_compose("strategy.record_dir=/tmp/x", "+strategy.mode=full_sync"))


def test_own_strategy_runs_through_the_runner_at_2_ranks(tmp_path):
    from distri.job.execute import execute

    calls = tmp_path / "calls"
    d = _compose(
        f"strategy.record_dir={calls}", "world_size=2", "height=64", "width=64", "device=cpu",
        f"sampler.num_inference_steps={STEPS}", "prompts.limit=1", "runner.warmup_runs=0", "runner.timed_runs=1",
        "metrics.compare_to_original=false", "logger=none",
    )  # fmt: skip
    validate(d)
    rec = execute(d, str(tmp_path / "job"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["comm"]["sync_steps"] is None and rec["comm"]["bytes_per_step"] == 0
    # one timed call, one per-step profile call, one image call: 3 pipeline calls of STEPS denoiser calls
    for rank in (0, 1):
        lines = (calls / f"rank{rank}.txt").read_text().splitlines()
        assert lines == [f"step {s} latent [2, 4, 8, 8]" for s in range(STEPS)] * 3
