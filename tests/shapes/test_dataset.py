"""The procedural shapes dataset: deterministic, and every caption says what the image and its mask show."""

from __future__ import annotations

import numpy as np
import pytest

from distri.data.shapes import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    make_scene,
    parse_caption,
    relation,
    render,
)


def test_same_seed_and_index_give_the_same_scene_and_pixels():
    a, b = make_scene(7, 3), make_scene(7, 3)
    assert a == b
    assert np.array_equal(np.asarray(render(a, 64)[0]), np.asarray(render(b, 64)[0]))
    assert make_scene(7, 4) != a and make_scene(8, 3) != a


@pytest.mark.parametrize("index", range(40))
def test_caption_matches_the_objects_mask_and_background(index):
    scene = make_scene(0, index)
    d = parse_caption(scene.caption)
    assert d.objects == tuple((o.size, o.colour, o.kind) for o in scene.objects)
    assert d.background == scene.background and len(scene.objects) in (1, 2, 3)
    for a, b, rel in zip(scene.objects, scene.objects[1:], d.relations):
        assert rel == relation(a, b)
        centre = {"left of": a.x < b.x, "right of": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}
        assert centre[rel]
    image, mask = render(scene, 128)
    pixels = np.asarray(image)
    for obj in scene.objects:  # the object's class is in the mask and its pixels have the object's colour
        where = mask == 1 + CLASSES.index((obj.colour, obj.kind))
        if where.any():  # drawn over entirely by a later object: possible, but then it is not in the mask
            assert (pixels[where] == COLOURS[obj.colour]).all()
    top, bottom = BACKGROUNDS[scene.background]
    if mask[0, 0] == 0:
        assert np.abs(pixels[0, 0].astype(int) - top).max() <= 1


def test_objects_cross_the_row_borders_of_a_4_way_split():
    """At 4 ranks the latent is cut into 4 bands of rows; most scenes have an object crossing a cut."""
    crossing = 0
    for i in range(200):
        mask = render(make_scene(0, i), 128)[1]
        rows = [(mask[32 * k - 1] > 0) & (mask[32 * k] == mask[32 * k - 1]) for k in (1, 2, 3)]
        crossing += any(r.any() for r in rows)
    assert crossing > 150  # measured: 199 of 200


def test_parse_caption_refuses_other_text():
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a red fox sitting in fresh snow")
