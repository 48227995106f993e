"""Pipelines shipped inside the package (``source: bundled``): trained small models, in ``distri/models/weights``.

Each is a ``save_pretrained`` folder (safetensors) named after the model, loaded with ``from_pretrained`` like any
local pipeline folder. ``shapes_sdxl`` is trained by :mod:`distri.models.train_shapes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED_MODELS: tuple[str, ...] = ("shapes_sdxl",)


def bundled_dir(model_cfg: Mapping[str, Any]) -> Path:
    """The folder of the bundled model of ``model_cfg`` (its ``id``, else its ``name``); ValueError naming the
    valid ids if there is none."""
    model_id = model_cfg.get("id") or model_cfg["name"]
    if model_id not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model {model_id!r}; valid: {', '.join(BUNDLED_MODELS)}")
    path = WEIGHTS_DIR / model_id
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"bundled model {model_id!r} has no model_index.json in {path} (an incomplete install?); "
            "retrain it with `python -m distri.models.train_shapes`"
        )
    return path
