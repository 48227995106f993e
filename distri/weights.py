"""``python -m distri.weights [list|fetch]``: the real metric backbones, where they go, and fetching them.

``list`` (the default) prints every file the real backbones need, whether it is present, and where its library
looks for it. ``fetch`` downloads the missing ones, on a machine with internet, each through its own library
into that library's standard cache, then prints where every file is:

* Inception-v3 for FID: clean-fid's ``check_download_inception`` into clean-fid's folder (``/tmp``);
* AlexNet and VGG-16 for LPIPS: torchvision's ``Weights.get_state_dict`` into the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``); lpips' linear layers come with the lpips package;
* CLIP (``--clip-model``, default ``openai/clip-vit-large-patch14``): ``huggingface_hub.snapshot_download``
  of its ``*.json``, ``*.txt`` and ``model.safetensors`` into the Hugging Face cache (``$HF_HUB_CACHE``).

To use them on a machine without internet, copy the printed files to the same paths there (or share the caches).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from distri.metrics.backbones import (
    WeightFile,
    clip_files,
    hub_cache_dir,
    inception_dir,
    inception_files,
    is_local_model,
    lpips_files,
    torchvision_weights,
)
from distri.metrics.options import DEFAULT_CLIP_MODEL, LPIPS_NETS

CLIP_PATTERNS: tuple[str, ...] = ("*.json", "*.txt", "model.safetensors")


def all_files(clip_model: str = DEFAULT_CLIP_MODEL, nets: Sequence[str] = LPIPS_NETS) -> list[WeightFile]:
    """Every file of the real backbones: Inception, each LPIPS net (trunk + linear layers), the CLIP model."""
    files = inception_files()
    for net in nets:
        files += lpips_files(net)
    return files + clip_files(clip_model)


def _fetch_inception() -> None:
    from cleanfid.downloads_helper import check_download_inception

    check_download_inception(fpath=str(inception_dir()))


def _fetch_lpips_trunk(net: str) -> None:
    torchvision_weights(net).get_state_dict(progress=True)


def _fetch_clip(model: str) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=model, allow_patterns=list(CLIP_PATTERNS), cache_dir=str(hub_cache_dir()))


DOWNLOADERS: dict[str, Callable[[str], None]] = {
    "inception": lambda _: _fetch_inception(),
    "alex": _fetch_lpips_trunk,
    "vgg": _fetch_lpips_trunk,
    "clip": _fetch_clip,
}
"""One download function per backbone, called with the backbone's name (``clip``: the model id)."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def fetch(clip_model: str = DEFAULT_CLIP_MODEL, nets: Sequence[str] = LPIPS_NETS) -> list[WeightFile]:
    """Download every missing backbone file; returns the files still missing afterwards (none on success)."""
    files = all_files(clip_model, nets)
    todo = list(dict.fromkeys(f.backbone for f in files if not f.present()))  # in the order of `files`
    if "clip" in todo and is_local_model(clip_model):
        raise FileNotFoundError(
            f"--clip-model {clip_model} is a local folder without a complete CLIP; nothing to fetch"
        )
    if "clip" in todo and _offline():
        raise RuntimeError(
            "HF_HUB_OFFLINE is set, so the CLIP model cannot be downloaded: unset it and run again"
        )
    for backbone in todo:
        print(f"fetching {backbone} ...", file=sys.stderr)
        DOWNLOADERS[backbone](clip_model if backbone == "clip" else backbone)
    return [f for f in files if not f.present()]


def format_files(files: Sequence[WeightFile]) -> str:
    """One line per file: present or MISSING, where it is (or is looked for), what it is."""
    return "\n".join(f"{'ok     ' if f.present() else 'MISSING'}  {f.location()}  ({f.what})" for f in files)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distri.weights", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", choices=("list", "fetch"), default="list")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="hub id of the CLIP for the CLIP score")
    p.add_argument("--lpips-net", nargs="+", choices=LPIPS_NETS, default=list(LPIPS_NETS), dest="nets")
    args = p.parse_args(argv)
    if args.command == "fetch":
        try:
            missing = fetch(args.clip_model, args.nets)
        except (OSError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_files(all_files(args.clip_model, args.nets)))
        return 1 if missing else 0
    print(format_files(all_files(args.clip_model, args.nets)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
