"""Load a stock diffusers text-to-image pipeline (tiny, built locally, or real weights) from a model config.

Tiny models are built by :func:`distri.models.tiny.build_tiny` and then read back with ``from_pretrained``:
the same code path as real weights. Real weights are read from a local folder or the Hugging Face cache; the
hub is only contacted when ``HF_HUB_OFFLINE`` is not set and the weights are not cached. When they cannot be
found, :class:`ModelNotFoundError` says how to fetch them; there is no silent fallback to another model.

Pipelines load with low host memory (:func:`placement_kwargs`): ``low_cpu_mem_usage=True`` builds the modules
empty and assigns the checkpoint's tensors (no random initialisation, no second copy), and ``device_map`` set
to the target device type sends each component's weights from the checkpoint straight to that device instead
of through host memory (both use ``accelerate``; a diffusers too old for device-type maps loads into host
memory and the pipeline is moved afterwards).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from distri.models.bundled import bundled_dir
from distri.models.tiny import LOCAL_MODELS, build_tiny, quiet_progress_bars, tiny_spec

FAMILIES: dict[str, type[DiffusionPipeline]] = {
    "sdxl": StableDiffusionXLPipeline,
    "sd": StableDiffusionPipeline,
}
"""Pipeline class for each model family."""

SOURCES: tuple[str, ...] = ("tiny", "bundled", "hub")

try:  # newer diffusers name the from_pretrained dtype argument `dtype` and deprecate `torch_dtype`
    from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

    _DTYPE_KWARG = "dtype"
except ImportError:
    _DTYPE_KWARG = "torch_dtype"


def _device_maps() -> tuple[str, ...]:
    """Device types diffusers accepts as a pipeline ``device_map`` (it places every component there)."""
    try:
        from diffusers.pipelines.pipeline_utils import SUPPORTED_DEVICE_MAP
    except ImportError:
        return ()
    return tuple(m for m in SUPPORTED_DEVICE_MAP if m != "balanced")


def placement_kwargs(device: torch.device | str) -> dict[str, Any]:
    """``from_pretrained`` arguments that load with low host memory, straight onto ``device`` where supported."""
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": True}
    dev_type = torch.device(device).type
    if dev_type in _device_maps():
        kwargs["device_map"] = dev_type  # "cuda": the current device, set by _on(device) while loading
    return kwargs


def _on(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device while loading (a no-op elsewhere)."""
    dev = torch.device(device)
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


class ModelNotFoundError(RuntimeError):
    """The weights of a real model are neither in a local folder nor in the Hugging Face cache."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _looks_local(model_id: str) -> bool:
    """True for ids that can only be a filesystem path (a hub id is ``name`` or ``owner/name``)."""
    return (
        model_id.startswith(("/", "./", "../", "~"))
        or model_id.count("/") > 1
        or (os.sep != "/" and os.sep in model_id)
        or Path(model_id).expanduser().exists()
    )


def _not_found(model_id: str, revision: str | None, reason: str, local: bool = False) -> ModelNotFoundError:
    if local:
        return ModelNotFoundError(
            f"model folder {model_id!r} was not found ({reason}). Pass `model.id=` a folder holding a diffusers "
            "pipeline (model_index.json plus one subfolder per component), e.g. one fetched with "
            "`hf download stabilityai/stable-diffusion-xl-base-1.0 --local-dir /path/to/folder`, or a hub id "
            "whose weights are in the Hugging Face cache."
        )
    rev = f" --revision {revision}" if revision else ""
    return ModelNotFoundError(
        f"model weights for {model_id!r} were not found ({reason}). Fetch them on a machine with hub access, "
        f"e.g. `hf download {model_id}{rev}` (older clients: `huggingface-cli download {model_id}{rev}`), and "
        "make the Hugging Face cache (HF_HOME / HF_HUB_CACHE) visible here, or download the pipeline folder "
        "and pass it as `model.id=/path/to/folder`."
    )


def check_available(model_cfg: Mapping[str, Any]) -> None:
    """Before any worker starts: raise :class:`ModelNotFoundError` (short, naming the model and the download
    command) when real weights are neither a local folder nor in the Hugging Face cache and the hub is off
    limits (``HF_HUB_OFFLINE``). Online, a missing model is left to the download."""
    if _get(model_cfg, "source") != "hub" or not _get(model_cfg, "id"):
        return
    model_id, revision = str(model_cfg["id"]), _get(model_cfg, "revision")
    if _looks_local(model_id):
        if not (Path(model_id).expanduser() / "model_index.json").is_file():
            raise _not_found(model_id, None, "no model_index.json there", local=True)
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model_id, "model_index.json", _get(model_cfg, "cache_dir"), revision)
    except ValueError as e:  # not a valid hub id either
        raise _not_found(model_id, revision, str(e)) from None
    if not isinstance(cached, str) and _offline():
        raise _not_found(model_id, revision, "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def load_pipeline(
    model_cfg: Mapping[str, Any],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusionPipeline:
    """Load the pipeline described by ``model_cfg`` and move it to ``device`` / ``dtype``.

    ``model_cfg`` keys: ``name`` (tiny_sdxl | tiny_sd15 | sdxl | sd15 | sd21), ``family`` ("sdxl" | "sd"),
    ``source`` ("tiny" | "bundled" | "hub"), ``id`` (hub id or local folder; for bundled: the name of a folder
    in ``distri/models/weights``; unused for tiny), ``revision``, ``variant``
    (e.g. "fp16"), ``cache_dir`` (tiny: where tiny models are built; hub: the Hugging Face cache dir) and
    ``allow_pickle`` (default false: only ``.safetensors`` weights load; true also accepts pickled ``.bin``).

    Returns a stock ``StableDiffusionXLPipeline`` (family "sdxl") or ``StableDiffusionPipeline`` (family "sd",
    safety checker disabled), loaded with low host memory straight onto ``device`` (:func:`placement_kwargs`).
    The SDXL invisible watermark is off (images do not depend on whether the ``invisible-watermark`` package
    is installed). The denoising progress bar is disabled and loading progress bars are hidden.

    Real weights: a local folder is loaded directly; a hub id is first looked up in the local cache only, and
    only if it is missing there and ``HF_HUB_OFFLINE`` is not set is the hub asked.
    Raises :class:`ModelNotFoundError` (naming the id and how to fetch it) when the weights cannot be found,
    and ValueError for an inconsistent config.
    """
    name = _get(model_cfg, "name", "")
    family = _get(model_cfg, "family")
    source = _get(model_cfg, "source", "tiny" if name in LOCAL_MODELS else "hub")
    if family not in FAMILIES:
        raise ValueError(f"model.family must be one of {sorted(FAMILIES)}, got {family!r}")
    if source not in SOURCES:
        raise ValueError(f"model.source must be one of {list(SOURCES)}, got {source!r}")
    pipe_cls = FAMILIES[family]
    kwargs: dict[str, Any] = {_DTYPE_KWARG: dtype, **placement_kwargs(device)}
    if not _get(model_cfg, "allow_pickle", False):
        kwargs["use_safetensors"] = True  # pickled weights can run code on load: refused unless asked for
    if family == "sdxl":
        kwargs["add_watermarker"] = False
    else:
        kwargs.update(safety_checker=None, requires_safety_checker=False)

    if source == "tiny":
        spec_family = tiny_spec(name)["family"]  # ValueError for an unknown tiny name
        if spec_family != family:
            raise ValueError(f"tiny model {name!r} is of family {spec_family!r}, not {family!r}")
        path = build_tiny(name, _get(model_cfg, "cache_dir"))
        with quiet_progress_bars(), _on(device):
            pipe = pipe_cls.from_pretrained(str(path), **kwargs)
    elif source == "bundled":
        with quiet_progress_bars(), _on(device):
            pipe = pipe_cls.from_pretrained(str(bundled_dir(model_cfg)), **kwargs)
    else:
        with quiet_progress_bars(), _on(device):
            pipe = _load_real(pipe_cls, model_cfg, kwargs)

    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)  # already there with a device_map; the dtype was applied by from_pretrained


def _load_real(
    pipe_cls: type[DiffusionPipeline], model_cfg: Mapping[str, Any], kwargs: dict[str, Any]
) -> DiffusionPipeline:
    from huggingface_hub.errors import HFValidationError

    model_id = _get(model_cfg, "id")
    if not model_id:
        raise ValueError(f"model {model_cfg.get('name')!r} has source 'hub' but no model.id")
    model_id = str(model_id)
    revision = _get(model_cfg, "revision")
    variant = _get(model_cfg, "variant")
    cache_dir = _get(model_cfg, "cache_dir")

    if _looks_local(model_id):
        path = Path(model_id).expanduser()
        if not (path / "model_index.json").is_file():
            raise _not_found(model_id, None, f"no model_index.json in {path}", local=True)
        return pipe_cls.from_pretrained(str(path), variant=variant, **kwargs)

    hub_kwargs = dict(kwargs, revision=revision, variant=variant, cache_dir=cache_dir)
    try:
        return pipe_cls.from_pretrained(model_id, local_files_only=True, **hub_kwargs)
    except (OSError, HFValidationError) as cached_err:
        if _offline():
            raise _not_found(
                model_id, revision, f"not in the local cache and HF_HUB_OFFLINE is set: {cached_err}"
            ) from cached_err
        try:
            return pipe_cls.from_pretrained(model_id, **hub_kwargs)
        except (OSError, HFValidationError) as hub_err:
            raise _not_found(
                model_id, revision, f"not cached and the hub download failed: {hub_err}"
            ) from hub_err
