"""Prompt sets: built-in list and COCO-style caption files."""

from __future__ import annotations

import json
import re

import pytest

from distri.prompts import BUILTIN_PROMPTS, load_prompts


def test_builtin_and_override():
    assert load_prompts({"name": "builtin"}) == BUILTIN_PROMPTS
    assert len(BUILTIN_PROMPTS) == len(set(BUILTIN_PROMPTS)) >= 8
    assert load_prompts({"name": "builtin", "limit": 3}) == BUILTIN_PROMPTS[:3]
    assert load_prompts({"name": "builtin", "prompts": ["a", "b"], "limit": None}) == ["a", "b"]
    assert load_prompts({"name": "builtin", "prompts": []}) == BUILTIN_PROMPTS


def test_coco_official_layout(tmp_path):
    data = {
        "images": [{"id": 9}, {"id": 3}],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "A dog on a  couch.\n"},
            {"image_id": 3, "id": 7, "caption": "Two birds on a wire."},
            {"image_id": 9, "id": 2, "caption": "second caption of image 9"},
            {"image_id": 3, "id": 5, "caption": "second caption of image 3"},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    assert load_prompts({"name": "coco", "path": str(path)}) == ["Two birds on a wire.", "A dog on a couch."]
    assert load_prompts({"name": "coco", "path": str(path), "limit": 1}) == ["Two birds on a wire."]


def test_coco_txt_and_jsonl(tmp_path):
    txt = tmp_path / "caps.txt"
    txt.write_text("first caption\n\n  second caption  \n")
    assert load_prompts({"name": "coco", "path": str(txt)}) == ["first caption", "second caption"]
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"caption": "one", "image_id": 1}\n\n{"caption": "two"}\n')
    assert load_prompts({"name": "coco", "path": str(jsonl), "limit": 5}) == ["one", "two"]


def test_errors(tmp_path):
    missing = tmp_path / "nope" / "captions_val2014.json"
    with pytest.raises(FileNotFoundError, match="captions_val2014.json") as info:
        load_prompts({"name": "coco", "path": str(missing)})
    assert str(missing) in str(info.value)
    with pytest.raises(ValueError, match="prompts.path"):
        load_prompts({"name": "coco"})
    with pytest.raises(ValueError, match="unknown prompt set"):
        load_prompts({"name": "parti"})
    with pytest.raises(ValueError, match="limit"):
        load_prompts({"name": "builtin", "limit": -1})


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("caps.json", '{"annotations": [{"image_id": 1, "caption": "a"},\n  {"image_id": 2,}]}', ":2:"),
        ("caps.jsonl", '{"caption": "one"}\n{"caption": "two"\n', ":2:"),
        ("caps.json", "", ":1:1: not valid JSON"),
        ("caps.json", '{"annotations": []}', "no captions in the file"),
        ("caps.txt", "\n\n", "no captions in the file"),
        ("caps.json", '{"annotations": [{"image_id": 1}]}', "annotations[0] has no 'caption'"),
    ],
)
def test_malformed_or_empty_captions_name_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_prompts({"name": "coco", "path": str(path)})
    assert str(path) in str(info.value)
