"""Small metric backbones built locally with fixed seeds, for machines without the real ones (tests, CI).

Each goes through its library's own interface, exactly where the real backbone would:

* FID: :class:`StandInFeatures`, a 4-layer conv net (seed 0) with 64 output features, given to clean-fid as its
  custom feature extractor (and to torchmetrics' ``FrechetInceptionDistance`` as its ``feature`` module);
* LPIPS: ``lpips.LPIPS(net=..., pnet_rand=True)`` built under seed 1: torchvision's AlexNet/VGG trunk at its
  default random init, with the linear layers lpips ships in its package (:func:`standin_lpips`);
* CLIP score: a tiny CLIP (2-layer text and vision towers of width 32, 32x32 images in 8x8 patches, 16-dim
  projection; seed 2) with distri's locally built byte-level BPE tokenizer, saved with ``save_pretrained`` and
  loaded back with ``from_pretrained`` (:func:`build_standin_clip`).

Numbers computed with them are only comparable with other stand-in numbers (the record says
``backbone_*: stand-in``), never with a paper's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

SEEDS = {"fid": 0, "lpips": 1, "clip": 2}
STANDIN_FEATURES = 64
_CLIP_NAME = "clip_tiny"
_CLIP_BUILD_VERSION = 1
_MARKER = "distri_standin.json"
_CLIP_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_CLIP_VISION = {**_CLIP_TEXT, "image_size": 32, "patch_size": 8}
_CLIP_PROJECTION = 16


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class StandInFeatures(nn.Module):
    """Image features for FID: images ``[N, 3, H, W]`` with values in ``[0, 255]`` -> ``[N, 64]``.

    Inputs are normalised as clean-fid normalises for Inception (``(x - 128) / 128``), then four stride-2 3x3
    convolutions with ReLU (3 -> 16 -> 32 -> 64 -> 64 channels) and a global average pool. Weights: Kaiming-normal
    init (which keeps the activations' scale through the ReLUs) under seed 0, zero biases. Accepts any image
    size and integer or float inputs.
    """

    num_features = STANDIN_FEATURES

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 16, 32, 64, STANDIN_FEATURES]
        with _seeded(SEEDS["fid"]):
            layers: list[nn.Module] = []
            for c_in, c_out in zip(chans[:-1], chans[1:]):
                conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU()]
            self.body = nn.Sequential(*layers)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - 128.0) / 128.0
        return self.body(x).mean(dim=(2, 3))


def standin_lpips(net: str = "alex"):
    """``lpips.LPIPS`` with a randomly initialised (seed 1) torchvision trunk and lpips' shipped linear layers."""
    import lpips

    with _seeded(SEEDS["lpips"]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation warning for lpips' `pretrained=` argument
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    return model.eval().requires_grad_(False)


def default_standin_dir() -> Path:
    """``$DISTRI_CACHE/standin`` (else ``~/.cache/distri/standin``): where the stand-in CLIP is saved."""
    base = os.environ.get("DISTRI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "distri")
    return Path(base) / "standin"


def _clip_fingerprint() -> str:
    return json.dumps(
        {
            "version": _CLIP_BUILD_VERSION,
            "text": _CLIP_TEXT,
            "vision": _CLIP_VISION,
            "projection": _CLIP_PROJECTION,
            "seed": SEEDS["clip"],
        },
        sort_keys=True,
    )


def _clip_complete(path: Path) -> bool:
    try:
        return json.loads((path / _MARKER).read_text()).get("fingerprint") == _clip_fingerprint()
    except (OSError, ValueError):
        return False


def _save_clip(out: Path, workdir: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from distri.models.tiny import quiet_progress_bars
    from distri.models.tokenizer import BOS, EOS, MODEL_MAX_LENGTH, build_tokenizer

    tokenizer = build_tokenizer(workdir, EOS)
    vocab = tokenizer.get_vocab()
    text = {
        **_CLIP_TEXT,
        "vocab_size": len(vocab),
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS],
        "pad_token_id": vocab[EOS],
    }
    config = CLIPConfig(text_config=text, vision_config=_CLIP_VISION, projection_dim=_CLIP_PROJECTION)
    with _seeded(SEEDS["clip"]):
        model = CLIPModel(config).eval()
    side = _CLIP_VISION["image_size"]
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    with quiet_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
        CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    (out / _MARKER).write_text(json.dumps({"fingerprint": _clip_fingerprint()}) + "\n")


def build_standin_clip(cache_dir: str | os.PathLike | None = None) -> Path:
    """Build the tiny stand-in CLIP (once) and return its folder, readable by ``CLIPModel/CLIPProcessor``.

    Saved into ``<cache_dir>/clip_tiny`` (default :func:`default_standin_dir`); concurrent callers are serialised
    by a file lock and the folder appears atomically (built in a temporary folder, then renamed).
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_standin_dir()
    target = root / _CLIP_NAME
    if _clip_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{_CLIP_NAME}.lock")):
        if _clip_complete(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{_CLIP_NAME}.tmp-", dir=root))
        try:
            _save_clip(tmp / "model", tmp / "tokenizer_src")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / "model", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
