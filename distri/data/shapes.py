"""A procedural captioned dataset of simple shapes, drawn on the fly (PIL), deterministic from a seed and an index.

``make_scene(seed, index)`` draws scene ``index`` of the stream ``seed``: one to three objects (a circle, square
or triangle; red, green, blue or yellow; small or large) on a plain white, grey or black background or a
vertical light-to-dark gradient, with its caption, e.g. ``"a large red circle above a small blue triangle on a
white background"``. Objects are placed uniformly over the image (their centres at least a margin from the
edges), so they cross the row borders of a patch split wherever they land. Each consecutive pair of objects in
the caption is related by the dominant axis of their centre offset ("left of", "right of", "above", "below");
placements whose offset is too small on both axes, or whose objects overlap too much, are redrawn.

Besides the RGB image the scene renders a label mask (per pixel: 0 for background, else ``1 + class`` of the
object's (colour, kind) pair; later objects are drawn over earlier ones), used to train the shape-accuracy
classifier (:mod:`distri.metrics.shapes`). In one scene no two objects share both colour and kind, so a caption
names each object unambiguously.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KINDS: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
}
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # name -> (top colour, bottom colour); plain backgrounds have both the same
    "white": ((245, 245, 245), (245, 245, 245)),
    "gray": ((128, 128, 128), (128, 128, 128)),
    "black": ((15, 15, 15), (15, 15, 15)),
    "gradient": ((235, 235, 235), (60, 60, 60)),
}
SIZES: dict[str, tuple[float, float]] = {"small": (0.13, 0.16), "large": (0.22, 0.27)}
"""Object radius (half the side of its bounding box) as a fraction of the image side: (min, max)."""
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CLASSES: tuple[tuple[str, str], ...] = tuple((c, k) for c in COLOURS for k in KINDS)
"""Object classes, (colour, kind); mask value ``1 + CLASSES.index((colour, kind))``."""
VOCABULARY: tuple[str, ...] = (
    "a",
    "on",
    "background",
    "of",
    *KINDS,
    *COLOURS,
    *BACKGROUNDS,
    *SIZES,
    "left",
    "right",
    "above",
    "below",
)
"""Every word a caption uses (the shapes tokenizer merges each into one token)."""

_MIN_OFFSET = 0.12  # consecutive objects' centres differ by at least this (fraction of the side) on one axis
_MAX_OVERLAP = 0.8  # ... and by at least this fraction of the sum of their radii in distance


@dataclass(frozen=True)
class ShapeObject:
    kind: str
    colour: str
    size: str
    x: float  # centre, fraction of the width (0 left, 1 right)
    y: float  # centre, fraction of the height (0 top, 1 bottom)
    r: float  # radius, fraction of the side

    @property
    def label(self) -> int:
        """Mask value of this object: ``1 + CLASSES.index((colour, kind))``."""
        return 1 + CLASSES.index((self.colour, self.kind))


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str
    relations: tuple[str, ...]  # relations[i] relates objects[i] to objects[i + 1]

    @property
    def caption(self) -> str:
        words = [_phrase(self.objects[0])]
        for rel, obj in zip(self.relations, self.objects[1:]):
            words += [rel, _phrase(obj)]
        return " ".join(words) + f" on a {self.background} background"


def _phrase(obj: ShapeObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.kind}"


def relation(a: ShapeObject, b: ShapeObject) -> str | None:
    """How ``a`` lies relative to ``b`` along the dominant axis, or None if their centres are too close."""
    dx, dy = a.x - b.x, a.y - b.y
    if max(abs(dx), abs(dy)) < _MIN_OFFSET:
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _draw_object(rng: random.Random, placed: list[ShapeObject]) -> ShapeObject:
    used = {(o.colour, o.kind) for o in placed}
    while True:
        colour, kind = rng.choice(list(COLOURS)), rng.choice(KINDS)
        if (colour, kind) in used:
            continue
        size = rng.choice(list(SIZES))
        r = rng.uniform(*SIZES[size])
        margin = r * 0.6  # the centre stays inside; up to 40% of the object may leave the image
        obj = ShapeObject(
            kind, colour, size, rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin), r
        )
        if placed and relation(placed[-1], obj) is None:
            continue
        if any(math.hypot(o.x - obj.x, o.y - obj.y) < _MAX_OVERLAP * (o.r + obj.r) for o in placed):
            continue
        return obj


def make_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the stream ``seed`` (the same on every machine: Python's ``random`` only)."""
    rng = random.Random(f"shapes:{seed}:{index}")
    n = rng.choice((1, 2, 2, 3))
    objects: list[ShapeObject] = []
    for _ in range(n):
        objects.append(_draw_object(rng, objects))
    relations = tuple(relation(a, b) for a, b in zip(objects, objects[1:]))
    return Scene(tuple(objects), rng.choice(list(BACKGROUNDS)), relations)  # type: ignore[arg-type]


def _polygon(obj: ShapeObject, size: int) -> list[tuple[float, float]]:
    cx, cy, r = obj.x * size, obj.y * size, obj.r * size
    if obj.kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if obj.kind == "triangle":  # pointing up, inscribed in the bounding box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    raise ValueError(obj.kind)


def render(scene: Scene, size: int) -> tuple[Image.Image, np.ndarray]:
    """The scene's RGB image (``size`` x ``size``) and its label mask (uint8, 0 background, else 1 + class)."""
    top, bottom = (np.array(c, dtype=np.float32) for c in BACKGROUNDS[scene.background])
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    bg = np.broadcast_to(top + (bottom - top) * t, (size, size, 3))
    image = Image.fromarray(np.round(bg).astype(np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    draws = (ImageDraw.Draw(image), ImageDraw.Draw(mask))
    for obj in scene.objects:
        for draw, fill in zip(draws, (COLOURS[obj.colour], obj.label)):
            if obj.kind == "circle":
                cx, cy, r = obj.x * size, obj.y * size, obj.r * size
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            else:
                draw.polygon(_polygon(obj, size), fill=fill)
    return image, np.asarray(mask)


def held_out_captions(n: int, seed: int = 10_000) -> list[str]:
    """Captions of ``n`` scenes from a stream no training run uses (seed 10000 unless given)."""
    return [make_scene(seed, i).caption for i in range(n)]


@dataclass(frozen=True)
class Described:
    """What a caption says: objects as (size, colour, kind), the relations between consecutive ones, background."""

    objects: tuple[tuple[str, str, str], ...]
    relations: tuple[str, ...]
    background: str


_PHRASE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(KINDS)})")
_CAPTION = re.compile(
    rf"^(?P<body>.+) on a (?P<bg>{'|'.join(BACKGROUNDS)}) background$",
)


def parse_caption(caption: str) -> Described:
    """The objects, relations and background of a caption written by :attr:`Scene.caption`; ValueError if the
    caption is not in that grammar."""
    m = _CAPTION.match(caption.strip())
    parts = re.split(f" ({'|'.join(RELATIONS)}) ", m.group("body")) if m else []
    phrases = [_PHRASE.fullmatch(p) for p in parts[::2]]
    if not m or not all(phrases):
        raise ValueError(f"not a shapes caption: {caption!r} (e.g. {make_scene(0, 0).caption!r})")
    objects = tuple((p.group(1), p.group(2), p.group(3)) for p in phrases if p)
    return Described(objects, tuple(parts[1::2]), m.group("bg"))
