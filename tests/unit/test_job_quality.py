"""The job side of the quality metrics: originals through the shared cache, and the comparison grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distri.metrics.grid import comparison_grid
from distri.metrics.job import fill_originals, originals_spec, weights_dir


def _cfg(tmp_path, model_dir, **over):
    cfg = {
        "model": {"name": "mine", "source": "hub", "id": str(model_dir), "revision": None, "variant": None},
        "sampler": {"name": "ddim", "num_inference_steps": 4, "guidance_scale": 5.0},
        "height": 16, "width": 16, "dtype": "float32", "seed": 7,
        "metrics": {"originals_dir": str(tmp_path / "originals")},
    }  # fmt: skip
    cfg.update(over)
    return cfg


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text("{}")
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-1")
    return d


def _maker(calls):
    def make(i):
        calls.append(i)
        return np.full((16, 16, 3), i * 10, dtype=np.uint8)

    return make


def test_originals_are_made_once_per_key_and_shared_by_ranks(tmp_path, model_dir):
    cfg, prompts = _cfg(tmp_path, model_dir), ["a", "b", "c", "d", "e"]
    calls0, calls1 = [], []
    paths, s0 = fill_originals(
        cfg, prompts, lambda i: Image.fromarray(_maker(calls0)(i)), rank=0, world_size=2
    )
    _, s1 = fill_originals(cfg, prompts, lambda i: Image.fromarray(_maker(calls1)(i)), rank=1, world_size=2)
    assert calls0 == [0, 2, 4] and calls1 == [1, 3] and s0.generated + s1.generated == 5
    assert [np.asarray(Image.open(p))[0, 0, 0] for p in paths] == [0, 10, 20, 30, 40]
    again = []  # a second job of the sweep with the same key: nothing is generated
    _, s2 = fill_originals(cfg, prompts, lambda i: Image.fromarray(_maker(again)(i)), rank=0, world_size=1)
    assert again == [] and s2.reused == 5


def test_the_key_changes_with_the_weights_and_the_settings(tmp_path, model_dir):
    base = originals_spec(_cfg(tmp_path, model_dir)).key()
    assert originals_spec(_cfg(tmp_path, model_dir, height=32)).key() != base
    (model_dir / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-2")
    assert originals_spec(_cfg(tmp_path, model_dir)).key() != base
    assert weights_dir(_cfg(tmp_path, model_dir)["model"]) == model_dir


def test_comparison_grid_is_written(tmp_path):
    paths = []
    for name, value in (("o0", 0), ("p0", 40), ("o1", 100), ("p1", 100)):
        p = tmp_path / f"{name}.png"
        Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(p)
        paths.append(p)
    out = comparison_grid(paths[0::2], paths[1::2], tmp_path / "grid.png", label="naive_patch x2",
                          prompts=["a red circle", "a blue square"])  # fmt: skip
    img = Image.open(out)
    assert img.size[0] > 3 * 32 and img.size[1] > 2 * 32
    with pytest.raises(ValueError):
        comparison_grid([], [], tmp_path / "none.png")
