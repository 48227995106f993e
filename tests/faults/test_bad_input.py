"""Bad input is refused before any worker starts, with a message naming what to change (issue 8's table).

Pure config problems are caught by :func:`distri.config.validate`, file problems by
:func:`distri.job.preflight.preflight`; ``run.py`` turns either into a failed record before launching
(``tests/integration/test_run.py::test_bad_config_fails_before_any_worker``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from distri.config import ConfigError, register_configs, validate
from distri.job.preflight import preflight

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def compose_cfg(*overrides: str) -> dict:
    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model=tiny_sdxl model.id=/nonexistent",
            "model.id='/nonexistent' is not used by model=tiny_sdxl (built",
        ),
        ("seed=-1", "seed must be >= 0"),
        ("runner.timeout_s=0", "runner.timeout_s must be > 0"),
        ("runner.port=80", "runner.port must be in 1024..65535 or null"),
    ],
)
def test_config_problems(override, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*override.split()))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"annotations": [\n{"image_id": 1 "caption": "x"}]}', "caps.json:2:16: not valid JSON"),
        ("", "caps.json:1:1: not valid JSON"),
        ('{"annotations": []}', "caps.json: no captions in the file"),
    ],
)
def test_captions_file_problems(tmp_path, content, message):
    path = tmp_path / "caps.json"
    path.write_text(content)
    cfg = compose_cfg("model=tiny_sdxl", "prompts=coco", f"prompts.path={path}")
    validate(cfg)  # the file exists: only reading it tells
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    assert message in str(info.value)


def test_missing_real_model_offline_and_malformed_fault(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = compose_cfg("model=sdxl", "fault='rank=1,at=end,kind=raise'")
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    model, fault = info.value.problems[1], info.value.problems[0]
    assert "'stabilityai/stable-diffusion-xl-base-1.0'" in model and "hf download" in model
    assert "at must be start or step:N" in fault


def test_a_good_config_passes_preflight():
    preflight(compose_cfg())  # the embedded default: the shapes model and its captions
    preflight(compose_cfg("model=tiny_sdxl"))


@pytest.mark.parametrize(
    "prompts", [["prompts=builtin"], ["prompts=builtin", "prompts.prompts=[a red circle]"]]
)
def test_shapes_model_refuses_captions_outside_its_grammar(prompts):
    cfg = compose_cfg("model=shapes_sdxl", *prompts)
    validate(cfg)  # well-formed: only parsing the captions tells
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    assert "model=shapes_sdxl draws procedural shapes and needs shapes captions (prompts=shapes" in str(
        info.value
    )
