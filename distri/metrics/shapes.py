"""Shape accuracy: how many of a caption's attributes a small classifier finds in an image of the shapes model.

The classifier (:class:`ShapeNet`, trained on the procedural scenes of :mod:`distri.data.shapes` by
:mod:`distri.metrics.train_shape_classifier`, weights shipped in ``distri/metrics/weights``) reads an image
resized to 64x64 and predicts (a) a 16x16 map of classes: background or one of the 12 (colour, kind) object
classes, (b) the background (white, gray, black, gradient). From the map, an object class is *found* when it
covers at least :data:`MIN_CELLS` cells; its area and centroid are those of its cells.

A caption's attributes (:func:`attribute_hits`), each present or not:

* per object, ``object``: its (colour, kind) class is found; ``size``: found and its area is on the captioned
  side of the small/large threshold of its kind (:func:`size_threshold`);
* per relation between consecutive objects, ``relation``: both found and the first's centroid lies on the
  captioned side of the second's along the captioned axis;
* ``background``: the predicted background is the captioned one.

``shape_accuracy`` is the fraction of all attributes of all images that are present (a micro-average), the
CPU-meaningful counterpart of CLIP score for this model. :class:`ShapeFeatures` (the classifier's pooled last
hidden layer, 64 features) is the stand-in FID feature extractor for shapes models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distri.data.shapes import BACKGROUNDS, CLASSES, SIZES, parse_caption

WEIGHTS = Path(__file__).resolve().parent / "weights" / "shape_classifier.safetensors"
INPUT_SIDE = 64
MAP_SIDE = 16
MIN_CELLS = 2
"""Cells of the 16x16 map an object class must cover to count as found (a small triangle covers ~4 to 7)."""
AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}
"""Area of a shape of radius 1 (circle; square of half-side 1; triangle inscribed in that square)."""
ATTRIBUTE_TYPES = ("object", "size", "relation", "background")
"""The attribute types of :func:`attribute_hits`, each reported as ``shape_accuracy_<type>``."""
FEATURES = 64
CLASSIFIER = "shape classifier (distri.metrics.shapes, trained on distri.data.shapes)"


class ShapeNet(nn.Module):
    """Images ``[N, 3, H, W]`` in ``[0, 1]`` (resized to 64x64) -> (class map logits ``[N, 13, 16, 16]``,
    background logits ``[N, 4]``). Two stride-2 convolutions, then dilated 3x3 convolutions at 16x16 (dilations
    1, 2, 4, 8: a receptive field covering a large object) with GroupNorm and SiLU."""

    def __init__(self, width: int = FEATURES) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)
            return nn.Sequential(conv, nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(3, 32, stride=2),
            block(32, width, stride=2),
            *(block(width, width, dilation=d) for d in (1, 2, 4, 8)),
        )
        self.classes = nn.Conv2d(width, 1 + len(CLASSES), 1)
        self.background = nn.Linear(width, len(BACKGROUNDS))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", antialias=True)
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.classes(h), self.background(h.mean(dim=(2, 3)))


def load_classifier(path: Path = WEIGHTS) -> ShapeNet:
    """The shipped classifier (eval mode, no grad)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"shape classifier weights {path} are missing; train them with "
            "`python -m distri.metrics.train_shape_classifier`"
        )
    net = ShapeNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


class ShapeFeatures(nn.Module):
    """FID features from the shape classifier: images ``[N, 3, H, W]`` in ``[0, 255]`` -> ``[N, 64]`` (the
    pooled last hidden layer), the stand-in FID extractor for shapes models."""

    num_features = FEATURES

    def __init__(self) -> None:
        super().__init__()
        self.net = load_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net.hidden(x.float() / 255.0).mean(dim=(2, 3))


@dataclass(frozen=True)
class Found:
    """An object class found in the class map: its area (cells of the 16x16 map) and centroid (fractions)."""

    cells: int
    x: float
    y: float


def read_map(class_map: torch.Tensor) -> dict[tuple[str, str], Found]:
    """The object classes found in one class map (``[16, 16]`` of class indices, 0 background)."""
    found = {}
    ys, xs = torch.meshgrid(torch.arange(MAP_SIDE), torch.arange(MAP_SIDE), indexing="ij")
    for i, cls in enumerate(CLASSES, start=1):
        cells = class_map == i
        n = int(cells.sum())
        if n >= MIN_CELLS:
            cx = (xs[cells].float().mean().item() + 0.5) / MAP_SIDE
            cy = (ys[cells].float().mean().item() + 0.5) / MAP_SIDE
            found[cls] = Found(n, cx, cy)
    return found


def size_threshold(kind: str) -> float:
    """Cells separating small from large objects of ``kind``: the area at the geometric mean of the largest
    small radius and the smallest large radius."""
    r = math.sqrt(SIZES["small"][1] * SIZES["large"][0]) * MAP_SIDE
    return AREA_FACTOR[kind] * r * r


def relation_holds(a: Found, b: Found, rel: str) -> bool:
    """Whether object ``a`` lies on the side ``rel`` ("left of", "right of", "above", "below") of ``b``."""
    return {
        "left of": a.x < b.x,
        "right of": a.x > b.x,
        "above": a.y < b.y,
        "below": a.y > b.y,
    }[rel]


def attribute_hits(
    caption: str, found: dict[tuple[str, str], Found], background: str
) -> list[tuple[str, bool]]:
    """Each attribute of ``caption`` (as ``(type, present)``) given the classes found and the background."""
    d = parse_caption(caption)
    hits = []
    for size, colour, kind in d.objects:
        f = found.get((colour, kind))
        hits.append(("object", f is not None))
        large = f is not None and f.cells > size_threshold(kind)
        hits.append(("size", f is not None and large == (size == "large")))
    for (_, ca, ka), rel, (_, cb, kb) in zip(d.objects, d.relations, d.objects[1:]):
        a, b = found.get((ca, ka)), found.get((cb, kb))
        hits.append(("relation", a is not None and b is not None and relation_holds(a, b, rel)))
    hits.append(("background", background == d.background))
    return hits


def predict(net: ShapeNet, images: torch.Tensor) -> list[tuple[dict[tuple[str, str], Found], str]]:
    """For images ``[N, 3, H, W]`` in ``[0, 1]``: the classes found and the predicted background of each."""
    with torch.no_grad():
        class_logits, bg_logits = net(images)
    names = list(BACKGROUNDS)
    return [(read_map(m), names[int(b)]) for m, b in zip(class_logits.argmax(dim=1), bg_logits.argmax(dim=1))]


def _image_hits(
    images: Sequence[str | Path], captions: Sequence[str], batch_size: int
) -> list[list[tuple[str, bool]]]:
    import numpy as np
    from PIL import Image

    net = load_classifier()
    hits = []
    for start in range(0, len(images), batch_size):
        arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[start : start + batch_size]])
        batch = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        for (found, bg), caption in zip(predict(net, batch), captions[start:]):
            hits.append(attribute_hits(caption, found, bg))
    return hits


def shape_scores(
    images: Sequence[str | Path],
    captions: Sequence[str],
    originals: Sequence[str | Path] | None = None,
    batch_size: int = 32,
) -> dict[str, float | int]:
    """Record keys of image files against their captions: ``shape_accuracy``, its value per attribute type
    (``shape_accuracy_<type>``), ``n_attributes_shape_accuracy``; with ``originals`` (paired by position) also
    ``shape_agreement_vs_orig``: the fraction of attributes found in both or in neither image of a pair."""
    if len(captions) < len(images):
        raise ValueError(f"{len(images)} images but only {len(captions)} captions")
    hits = _image_hits(images, captions, batch_size)
    flat = [h for image in hits for h in image]
    out: dict[str, float | int] = {"shape_accuracy": sum(h for _, h in flat) / len(flat)}
    for kind in ATTRIBUTE_TYPES:
        of_kind = [h for k, h in flat if k == kind]
        if of_kind:
            out[f"shape_accuracy_{kind}"] = sum(of_kind) / len(of_kind)
    out["n_attributes_shape_accuracy"] = len(flat)
    if originals is not None:
        ref = [h for image in _image_hits(originals, captions, batch_size) for h in image]
        out["shape_agreement_vs_orig"] = sum(a == b for (_, a), (_, b) in zip(flat, ref)) / len(flat)
    return out
