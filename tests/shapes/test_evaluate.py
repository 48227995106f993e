"""experiments/shapes_model/evaluate.py: its breakdown of shape accuracy, checked on hand-made classifier
readings, and a two-caption run of the command on the shipped model."""

from __future__ import annotations

import pytest
from PIL import Image

from distri.metrics.shapes import Found
from experiments.shapes_model.evaluate import breakdown, main, tally

CAPTION = "a large red circle above a small blue triangle on a white background"


def test_breakdown_counts_sizes_kinds_colours_and_relations_of_found_pairs():
    # The triangle is read as a square: its colour is found, its object and the relation are not.
    rows = breakdown(CAPTION, {("red", "circle"): Found(40, 0.5, 0.3), ("blue", "square"): Found(6, 0.5, 0.7)},
                     "white")  # fmt: skip
    t = tally(rows)
    assert t["object, large"]["fraction"] == 1 and t["object, small"]["fraction"] == 0
    assert t["object, circle"]["n"] == t["object, triangle"]["n"] == 1
    assert t["colour, any kind"]["fraction"] == 1
    assert "relation, both found" not in t and t["relation"]["fraction"] == 0
    # objects 1/2, sizes 1/2 (the large circle covers more than the threshold), relation 0/1, background 1/1
    assert (t["all"]["present"], t["all"]["n"]) == (3, 6)
    # Both found, the circle below the triangle: the relation is wrong, and counted among the found pairs.
    both = {("red", "circle"): Found(40, 0.5, 0.8), ("blue", "triangle"): Found(6, 0.5, 0.2)}
    t = tally(breakdown(CAPTION, both, "gray"))
    assert t["relation, both found"] == {"n": 1, "present": 0, "fraction": 0.0}
    assert t["background"]["fraction"] == 0 and t["object"]["fraction"] == 1


def test_command_on_the_shipped_model(capsys, tmp_path):
    table = main(["--captions", "2", "--steps", "2", "--threads", "1", "--grid", str(tmp_path / "g.png")])
    assert Image.open(tmp_path / "g.png").size == (2 + 2 * (128 + 2), 128 + 4)  # 2 images, 2 px padding
    assert table["all"]["n"] == sum(table[k]["n"] for k in ("object", "size", "relation", "background"))
    assert "held-out captions" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a pipeline folder"):
        main(["--model", "/nonexistent"])
    with pytest.raises(SystemExit, match="--captions, --steps and --threads must be at least 1"):
        main(["--captions", "0"])
