"""Prompt sets: a small built-in list, or COCO captions read from a local file.

Protocol: the runner generates caption ``i`` of the returned list with seed ``seed + i`` (``seed`` from the run
config), so every method sees the same (prompt, noise) pairs and a prefix of the list (``limit``) reproduces
the first images of a longer run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BUILTIN_PROMPTS: list[str] = [
    "a red fox sitting in fresh snow at dawn, soft light",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of ramen on a wooden table, steam rising, close-up photo",
    "a lighthouse on a rocky cliff during a storm, oil painting",
    "a quiet street in Kyoto at night with paper lanterns",
    "a cozy reading nook with a cat asleep on a stack of books",
    "a futuristic city skyline at sunset, flying cars, wide shot",
    "a watercolor illustration of a hummingbird and purple flowers",
]
"""Eight short, varied prompts for smoke runs and quick comparisons."""

PROMPT_SETS: tuple[str, ...] = ("builtin", "coco", "shapes")
SHAPES_PROMPTS = 64
"""Size of the ``shapes`` prompt set: held-out captions of :mod:`distri.data.shapes` (stream 10000)."""

_COCO_HELP = (
    "COCO captions come from the COCO 2014 annotations (annotations_trainval2014.zip from cocodataset.org, "
    "file annotations/captions_val2014.json); pass its path as prompts.path, or a .txt file with one caption "
    "per line, or a .jsonl file with a 'caption' field per line"
)


def _clean(caption: Any) -> str:
    return " ".join(str(caption).split())


def _json(text: str, path: Path, lineno: int = 1) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = lineno + e.lineno - 1
        raise ValueError(f"{path}:{line}:{e.colno}: not valid JSON ({e.msg}). {_COCO_HELP}") from None


def _caption(item: Any, path: Path, where: str) -> str:
    if isinstance(item, Mapping):
        if "caption" not in item:
            raise ValueError(f"{path}: {where} has no 'caption' field. {_COCO_HELP}")
        item = item["caption"]
    return _clean(item)


def _read_coco_json(path: Path) -> list[str]:
    data = _json(path.read_text(encoding="utf-8"), path)
    if isinstance(data, list):  # a plain list of captions, or of {"caption": ...} records
        return [_caption(x, path, f"item {i}") for i, x in enumerate(data)]
    if not isinstance(data, Mapping) or "annotations" not in data:
        raise ValueError(f"{path}: expected the COCO captions layout {{'annotations': [...]}} or a list")
    first: dict[Any, str] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping) or "image_id" not in ann:
            raise ValueError(f"{path}: annotations[{i}] has no 'image_id'. {_COCO_HELP}")
        first.setdefault(ann["image_id"], _caption(ann, path, f"annotations[{i}]"))
    return [first[image_id] for image_id in sorted(first)]


def _read_jsonl(path: Path) -> list[str]:
    captions = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = _json(line.rstrip(), path, lineno)
            if not isinstance(record, Mapping) or "caption" not in record:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'caption' field")
            captions.append(_clean(record["caption"]))
    return captions


def _read_txt(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [_clean(line) for line in lines if line.strip()]


def read_captions(path: str | Path) -> list[str]:
    """Read captions from ``path``, chosen by suffix.

    * ``.json``: the official COCO layout ``{"annotations": [{"image_id", "id", "caption"}, ...]}``: the first
      caption of each image in file order, images sorted by ``image_id``; a plain JSON list of captions (or of
      objects with a ``caption`` field) is also accepted, in list order;
    * ``.jsonl``: one JSON object with a ``caption`` field per line;
    * anything else: text, one caption per line (blank lines skipped).

    Whitespace inside captions is collapsed to single spaces. Raises FileNotFoundError if ``path`` is missing,
    and ValueError naming the file (and the line and column) for malformed JSON, a record without a caption,
    or a file without any caption.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}. {_COCO_HELP}")
    suffix = path.suffix.lower()
    read = {".json": _read_coco_json, ".jsonl": _read_jsonl}.get(suffix, _read_txt)
    captions = read(path)
    if not captions:
        raise ValueError(f"{path}: no captions in the file. {_COCO_HELP}")
    return captions


def load_prompts(cfg: Mapping[str, Any]) -> list[str]:
    """Return the prompt list described by ``cfg``.

    ``cfg`` keys: ``name`` ("builtin", "coco" or "shapes": held-out captions of the procedural shapes), ``prompts`` (builtin only: a list overriding
    :data:`BUILTIN_PROMPTS` when non-empty), ``path`` (coco: captions file, see :func:`read_captions`) and
    ``limit`` (int or None: keep the first ``limit`` prompts).

    The runner generates prompt ``i`` with seed ``seed + i``. Raises FileNotFoundError for a missing captions
    file and ValueError for an unknown name, a missing path or a negative limit.
    """
    name = cfg.get("name", "builtin")
    if name == "builtin":
        override = cfg.get("prompts")
        prompts = [str(p) for p in override] if override else list(BUILTIN_PROMPTS)
    elif name == "coco":
        path = cfg.get("path")
        if not path:
            raise ValueError(f"prompts.name=coco needs prompts.path. {_COCO_HELP}")
        prompts = read_captions(path)
    elif name == "shapes":
        from distri.data.shapes import held_out_captions

        prompts = held_out_captions(SHAPES_PROMPTS)
    else:
        raise ValueError(f"unknown prompt set {name!r}; valid: {', '.join(PROMPT_SETS)}")
    limit = cfg.get("limit")
    if limit is not None:
        limit = int(limit)
        if limit < 0:
            raise ValueError(f"prompts.limit must be >= 0 or None, got {limit}")
        prompts = prompts[:limit]
    return prompts
