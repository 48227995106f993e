"""Metric backbones: where each library keeps the real ones, which to use, and loading them.

Real backbones are read from their libraries' standard caches, never downloaded at run time:

* FID: Inception-v3 (``inception-2015-12-05.pt``, the TorchScript file clean-fid uses) in clean-fid's own
  location, ``/tmp`` (``./`` on Windows);
* LPIPS: torchvision's ImageNet AlexNet or VGG-16 checkpoint in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``), plus the linear layers lpips
  ships inside its package (``lpips/weights/v0.1/<net>.pth``);
* CLIP score: the CLIP model (default ``openai/clip-vit-large-patch14``) in the Hugging Face hub cache
  (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), or a local folder.

``python -m distri.weights fetch`` puts them there. :func:`resolve_backbones` decides, before any image is
generated, which backbone each metric uses under ``metrics.backbones``: ``real`` (raise
:class:`BackboneMissingError` naming every missing file), ``stand-in`` (:mod:`distri.metrics.standins`) or
``auto`` (real where cached, stand-in where not; :meth:`Backbones.summary` says which in one line).
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distri.metrics.options import MetricOptions, metric_options

FETCH_COMMAND = "python -m distri.weights fetch"
INCEPTION_FILE = "inception-2015-12-05.pt"
CLIP_FILES: tuple[str, ...] = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
)
"""The files of a hub CLIP that ``CLIPModel`` and ``CLIPProcessor`` need (fetch also takes the other .json)."""

BACKBONE_METRICS: tuple[str, ...] = ("fid", "lpips", "clip_score")
"""Metrics that need a backbone (PSNR needs none)."""


class BackboneMissingError(FileNotFoundError):
    """``metrics.backbones=real`` and a real backbone is not in its library's cache."""


@dataclass(frozen=True)
class WeightFile:
    """One file of a real backbone: where its library looks for it and where it comes from."""

    backbone: str  # "inception" | "alex" | "vgg" | "clip"
    what: str
    path: Path  # for a hub file: its folder in the HF cache joined with the file name
    source: str  # URL (for a hub file: the hub repo and file)
    hub_repo: str | None = None

    def present(self) -> bool:
        if self.hub_repo is None:
            return self.path.is_file()
        return _hub_cached(self.hub_repo, self.path.name) is not None

    def location(self) -> Path:
        """The file's actual path when present (hub files resolve into a snapshot folder), else :attr:`path`."""
        cached = _hub_cached(self.hub_repo, self.path.name) if self.hub_repo else None
        return Path(cached) if cached else self.path


def _hub_cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
    return found if isinstance(found, str) else None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def inception_dir() -> Path:
    """Where clean-fid keeps ``inception-2015-12-05.pt`` (``/tmp``; ``./`` on Windows)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def inception_files() -> list[WeightFile]:
    from cleanfid.downloads_helper import inception_url

    what = "Inception-v3 TorchScript for FID (clean-fid)"
    return [WeightFile("inception", what, inception_dir() / INCEPTION_FILE, inception_url)]


def torchvision_weights(net: str):
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    return {"alex": AlexNet_Weights.IMAGENET1K_V1, "vgg": VGG16_Weights.IMAGENET1K_V1}[net]


def lpips_files(net: str) -> list[WeightFile]:
    import lpips

    url = torchvision_weights(net).url
    trunk = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    arch = {"alex": "AlexNet", "vgg": "VGG-16"}[net]
    return [
        WeightFile(net, f"torchvision ImageNet {arch} (LPIPS trunk)", trunk, url),
        WeightFile(
            net, f"lpips v0.1 linear layers for {arch} (in the lpips package)", linear, "pip install lpips"
        ),
    ]


def is_local_model(model: str) -> bool:
    """True when ``model`` (``metrics.clip_model``) names a local folder rather than a hub id."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).expanduser().is_dir()


def clip_files(model: str) -> list[WeightFile]:
    if is_local_model(model):
        folder = Path(model).expanduser()
        return [
            WeightFile("clip", f"CLIP {model}", folder / name, f"local folder {folder}")
            for name in CLIP_FILES
        ]
    repo_dir = hub_cache_dir() / ("models--" + model.replace("/", "--")) / "snapshots" / "<revision>"
    return [
        WeightFile("clip", f"CLIP {model}", repo_dir / name, f"https://huggingface.co/{model}", model)
        for name in CLIP_FILES
    ]


def backbone_files(options: Mapping[str, Any] | MetricOptions | None = None) -> dict[str, list[WeightFile]]:
    """The real files each backbone metric enabled in ``options`` needs, keyed by metric name."""
    o = metric_options(options)
    files = {
        "fid": inception_files,
        "lpips": lambda: lpips_files(o.lpips_net),
        "clip_score": lambda: clip_files(o.clip_model),
    }
    return {m: files[m]() for m in BACKBONE_METRICS if o.wants(m)}


@dataclass(frozen=True)
class Backbone:
    """The backbone one metric uses: ``kind`` is ``real`` or ``stand-in``; ``missing`` says why a stand-in."""

    metric: str
    kind: str
    name: str
    missing: tuple[WeightFile, ...] = ()

    def label(self) -> str:
        """E.g. ``real: CLIP openai/clip-vit-large-patch14`` or ``stand-in: tiny CLIP, seed 2``."""
        return f"{self.kind}: {self.name}"


def _real_name(metric: str, o: MetricOptions) -> str:
    return {
        "fid": f"Inception-v3 ({INCEPTION_FILE}, clean-fid)",
        "lpips": f"lpips v0.1 {o.lpips_net} (ImageNet trunk)",
        "clip_score": f"CLIP {o.clip_model}",
    }[metric]


# The stand-in FID feature extractor of each model domain (``metrics.domain``): its label, and its class as
# "module:name" (imported when used; each has a ``num_features``).
STANDIN_FID = {
    "open": ("4-layer conv net, seed 0, 64 features", "distri.metrics.standins:StandInFeatures"),
    "shapes": (
        "shape classifier features (64, trained on distri.data.shapes)",
        "distri.metrics.shapes:ShapeFeatures",
    ),
}


def _standin_name(metric: str, o: MetricOptions) -> str:
    return {
        "fid": STANDIN_FID[o.domain][0],
        "lpips": f"lpips v0.1 {o.lpips_net} with a random trunk, seed 1",
        "clip_score": "tiny CLIP, seed 2",
    }[metric]


_LABEL = {"fid": "FID", "lpips": "LPIPS", "clip_score": "CLIP score"}


@dataclass(frozen=True)
class Backbones:
    """The resolved backbone of every enabled metric (``items``), under ``mode`` (``metrics.backbones``)."""

    mode: str
    items: Mapping[str, Backbone]

    def kind(self, metric: str) -> str:
        return self.items[metric].kind

    def summary(self) -> str:
        """One line: which backbone each metric uses and, for stand-ins under ``auto``, which file was missing."""
        parts = []
        for b in self.items.values():
            why = f"; missing {b.missing[0].location()}" if b.missing else ""
            parts.append(f"{_LABEL[b.metric]} {b.kind} ({b.name}{why})")
        line = f"metric backbones (metrics.backbones={self.mode}): " + (", ".join(parts) or "none needed")
        if any(b.kind == "stand-in" for b in self.items.values()):
            line += (
                "; stand-in numbers are labelled backbone=stand-in and are not comparable with published ones"
                f" (`{FETCH_COMMAND}` gets the real backbones)"
            )
        return line


def _missing_message(missing: dict[str, list[WeightFile]]) -> str:
    lines = ["metrics.backbones=real, but these metric backbones are not in their libraries' caches:"]
    for metric, files in missing.items():
        groups: dict[tuple[Path, str, str], list[str]] = {}
        for f in files:  # one line per folder (a hub model's files share one)
            groups.setdefault((f.location().parent, f.what, f.source), []).append(f.path.name)
        for (folder, what, source), names in groups.items():
            shown = names[0] if len(names) == 1 else "{" + ", ".join(names) + "}"
            lines.append(f"  - {_LABEL[metric]}: {folder / shown} ({what}; from {source})")
    lines.append(
        f"Fetch them on a machine with internet with `{FETCH_COMMAND}` (it prints where each file went; copy "
        "those files to the same paths here), or set metrics.backbones=auto to use stand-ins where they are missing."
    )
    return "\n".join(lines)


def resolve_backbones(options: Mapping[str, Any] | MetricOptions | None = None) -> Backbones:
    """Choose the backbone of every enabled metric under ``options.backbones``; no file is loaded.

    Call it at job start: with ``backbones=real`` it raises :class:`BackboneMissingError` naming every missing
    file and the fetch command, before any image is generated.
    """
    o = metric_options(options)
    items: dict[str, Backbone] = {}
    missing: dict[str, list[WeightFile]] = {}
    for metric, files in backbone_files(o).items():
        absent = [] if o.backbones == "stand-in" else [f for f in files if not f.present()]
        if absent:
            missing[metric] = absent
        if o.backbones == "stand-in" or absent:
            items[metric] = Backbone(metric, "stand-in", _standin_name(metric, o), tuple(absent))
        else:
            items[metric] = Backbone(metric, "real", _real_name(metric, o))
    if o.backbones == "real" and missing:
        raise BackboneMissingError(_missing_message(missing))
    return Backbones(o.backbones, items)


# ------------------------------------------------------------------------------------------------ loading


class FidFeatures(nn.Module):
    """FID feature extractor: images ``[N, 3, 299, 299]`` in ``[0, 255]`` -> ``[N, num_features]``, no grad.

    Callable as clean-fid's custom feature extractor and an ``nn.Module`` for torchmetrics' ``feature``.
    """

    def __init__(self, net: nn.Module, num_features: int) -> None:
        super().__init__()
        self.net, self.num_features = net.eval(), num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x.float())


def load_fid_features(backbone: Backbone, device, domain: str = "open") -> FidFeatures:
    """The FID feature extractor: clean-fid's Inception (``resize_inside=False``), or the stand-in of the model's
    ``domain`` (:data:`STANDIN_FID`: the shape classifier's features for shapes models)."""
    if backbone.kind == "stand-in":
        module, name = STANDIN_FID[domain][1].split(":")
        cls = getattr(importlib.import_module(module), name)
        return FidFeatures(cls(), cls.num_features).to(device)
    from cleanfid.inception_torchscript import InceptionV3W

    net = InceptionV3W(str(inception_dir()), download=False, resize_inside=False)
    return FidFeatures(net, 2048).to(device)


def load_lpips(backbone: Backbone, net: str, device):
    """``lpips.LPIPS`` with the ImageNet trunk from the torch hub cache, or the stand-in (random trunk)."""
    import warnings

    import lpips

    from distri.metrics.standins import standin_lpips

    if backbone.kind == "stand-in":
        return standin_lpips(net).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation warning for lpips' `pretrained=` argument
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
    return model.eval().requires_grad_(False).to(device)


class _TensorFeatures:
    """A ``CLIPModel`` whose ``get_*_features`` return tensors, as torchmetrics <= 1.9 expects.

    transformers >= 5 returns an output object (projected embeddings in ``pooler_output``); torchmetrics 1.9.0
    calls ``.norm`` on it (fixed upstream in Lightning-AI/torchmetrics#3408, not yet released).
    """

    def __init__(self, model) -> None:
        self.model, self.config = model, model.config

    def to(self, device):
        self.model.to(device)
        return self

    def get_image_features(self, *args, **kwargs):
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return self._tensor(self.model.get_text_features(*args, **kwargs))

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_loader(backbone: Backbone, model: str) -> Callable[[], tuple[Any, Any]]:
    """The ``model_name_or_path`` callable for torchmetrics' ``CLIPScore``: loads the CLIP model and processor
    from the hub cache (``local_files_only``) or a local folder, or the stand-in tiny CLIP."""
    from transformers import CLIPModel, CLIPProcessor

    from distri.metrics.standins import build_standin_clip
    from distri.models.tiny import quiet_progress_bars

    def load() -> tuple[Any, Any]:
        source = str(build_standin_clip()) if backbone.kind == "stand-in" else model
        local = {"local_files_only": True, "cache_dir": str(hub_cache_dir())}
        with quiet_progress_bars():
            clip = CLIPModel.from_pretrained(source, **local).eval()
            processor = CLIPProcessor.from_pretrained(source, **local)
        return _TensorFeatures(clip), processor

    return load
