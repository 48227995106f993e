"""Where a shapes model's images go wrong: shape accuracy on held-out captions, broken down.

``python experiments/shapes_model/evaluate.py [--model DIR] [--captions 48] [--steps 25] [--guidance 5]
[--grid FILE.png]``

Generates one single-device image per held-out caption (``prompts=shapes``' captions, prompt ``i`` with seed
``seed + i``, the runner's CPU noise: :func:`distri.generate.generate`) with the shipped ``shapes_sdxl`` or a
pipeline folder written by ``python -m distri.models.train_shapes --out DIR``, reads each with the shape
classifier (:mod:`distri.metrics.shapes`) and prints the fraction of attributes present: per attribute type
(the metric's ``shape_accuracy_<type>``), the objects by captioned size and kind, the objects whose colour is
found with any kind, and the relations whose two objects were both found. With its defaults (48 captions, DDIM
25 steps, guidance 5) it reproduces the README's numbers for the shipped model (0.848; 0.867 with ``--captions
144``) and its table of UNet steps ("The shapes model"), measured with the same captions, seeds and settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from a checkout

from distri.data.shapes import held_out_captions, parse_caption  # noqa: E402
from distri.generate import generate  # noqa: E402
from distri.metrics.shapes import (  # noqa: E402
    ATTRIBUTE_TYPES,
    Found,
    attribute_hits,
    load_classifier,
    predict,
    relation_holds,
)
from distri.models.loader import load_pipeline  # noqa: E402


def breakdown(caption: str, found: dict[tuple[str, str], Found], background: str) -> list[tuple[str, bool]]:
    """``(row, present)`` for one image: the metric's attributes (:func:`attribute_hits`) and, per object,
    ``object, <size>``, ``object, <kind>`` and ``colour, any kind``; per relation whose two objects were both
    found, ``relation, both found``."""
    rows = attribute_hits(caption, found, background)
    d = parse_caption(caption)
    colours = {colour for colour, _ in found}
    for size, colour, kind in d.objects:
        present = (colour, kind) in found
        rows += [
            (f"object, {size}", present),
            (f"object, {kind}", present),
            ("colour, any kind", colour in colours),
        ]
    for (_, ca, ka), rel, (_, cb, kb) in zip(d.objects, d.relations, d.objects[1:]):
        a, b = found.get((ca, ka)), found.get((cb, kb))
        if a is not None and b is not None:
            rows.append(("relation, both found", relation_holds(a, b, rel)))
    return rows


def tally(rows: list[tuple[str, bool]]) -> dict[str, dict[str, float]]:
    """Per row name: attributes, present, fraction; ``all`` over the metric's four types (shape_accuracy)."""
    total, hits = Counter(), Counter()
    for name, present in rows:
        for key in (name, "all") if name in ATTRIBUTE_TYPES else (name,):
            total[key] += 1
            hits[key] += present
    return {k: {"n": total[k], "present": hits[k], "fraction": hits[k] / total[k]} for k in sorted(total)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="pipeline folder (default: the shipped shapes_sdxl)")
    p.add_argument("--captions", type=int, default=48)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--grid", type=Path, help="also save the images, 8 to a row in caption order, to this PNG")
    args = p.parse_args(argv)
    if min(args.captions, args.steps, args.threads) < 1 or args.size % 8:
        raise SystemExit("--captions, --steps and --threads must be at least 1 and --size a multiple of 8 (the "
                         f"VAE's factor); got {args.captions}, {args.steps}, {args.threads}, {args.size}")  # fmt: skip
    if args.model is not None and not (args.model / "model_index.json").is_file():
        raise SystemExit(f"--model {args.model} is not a pipeline folder (no model_index.json)")
    torch.set_num_threads(args.threads)
    source = (
        {"source": "hub", "id": str(args.model)} if args.model else {"source": "bundled", "id": "shapes_sdxl"}
    )
    pipe = load_pipeline({"name": "shapes_sdxl", "family": "sdxl", **source})
    captions = held_out_captions(args.captions)
    images = torch.stack([
        generate(pipe, c, args.seed + i, args.steps, args.guidance, args.size, args.size)
        for i, c in enumerate(captions)
    ])  # fmt: skip
    if args.grid:
        from torchvision.utils import save_image

        save_image(images, args.grid, nrow=8, padding=2, pad_value=1.0)
    rows = [
        r
        for (found, bg), c in zip(predict(load_classifier(), images), captions)
        for r in breakdown(c, found, bg)
    ]
    table = tally(rows)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(f"{len(captions)} held-out captions, {args.steps} steps, guidance {args.guidance}")
        for name, t in table.items():
            print(f"  {name:22s} {t['present']:4d} / {t['n']:4d} = {t['fraction']:.3f}")
    return table


if __name__ == "__main__":
    main()
