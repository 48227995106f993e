"""A model's denoiser (UNet) config without its weights, and the denoiser built from it on the meta device.

Config validation and the dry run need the denoiser's architecture (its down-samplings, head and group counts)
before, or instead of, loading any weight. :func:`find_unet_config` looks for the UNet's ``config.json`` where
the loader would find the model: the tiny specs for ``source: tiny``, the
package's weights folder for ``source: bundled``, the ``unet/`` folder of a local pipeline
folder, the Hugging Face cache for a hub id; failing those, the public config bundled in
``distri/models/configs`` under the model's name (``sdxl``, ``sd15``, ``sd21``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BUNDLED: dict[str, str] = {"sdxl": "sdxl_unet.json", "sd15": "sd15_unet.json", "sd21": "sd21_unet.json"}
"""Full-size models: their diffusers ``unet/config.json`` in :data:`CONFIG_DIR`."""


def bundled_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / BUNDLED[name]).read_text())


def _cached_config(model_id: str, revision: str | None, cache_dir: str | None) -> dict[str, Any] | None:
    folder = Path(model_id).expanduser() / "unet" / "config.json"
    if folder.is_file():
        return json.loads(folder.read_text())
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model_id, "unet/config.json", cache_dir=cache_dir, revision=revision)
    except ValueError:  # not a valid hub id
        return None
    return json.loads(Path(path).read_text()) if isinstance(path, str) else None


def find_unet_config(model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The UNet config of the model described by ``model_cfg`` (the ``model`` group), or None if not found here."""
    if model_cfg.get("source") == "tiny":
        from distri.models.tiny import tiny_spec

        try:
            return tiny_spec(model_cfg["name"])["unet"]
        except ValueError:  # not a tiny model: the loader says so when it runs
            return None
    if model_cfg.get("source") == "bundled":
        from distri.models.bundled import bundled_dir

        try:
            return json.loads((bundled_dir(model_cfg) / "unet" / "config.json").read_text())
        except ValueError:  # the loader says so when it runs
            return None
    if model_cfg.get("id"):
        found = _cached_config(model_cfg["id"], model_cfg.get("revision"), model_cfg.get("cache_dir"))
        if found is not None:
            return found
    return bundled_config(model_cfg["name"]) if model_cfg.get("name") in BUNDLED else None


def build_meta_unet(config: Mapping[str, Any], dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """A ``UNet2DConditionModel`` from ``config`` with every parameter on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # from_config().to(fp16) warns about fp32 modules; there are none here
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(
                {k: v for k, v in config.items() if not k.startswith("_")}
            )
        unet = unet.to(dtype).eval()
    finally:
        dlogging.set_verbosity(verbosity)
    return unet
