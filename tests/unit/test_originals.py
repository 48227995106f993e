"""The originals cache: keys, weights fingerprint, racing writers (two processes), resume after a kill."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
from PIL import Image

from distri.metrics.originals import OriginalsCache, OriginalsSpec, weights_fingerprint

SPEC = OriginalsSpec(
    model="tiny_sdxl", model_id="", revision=None, variant=None, weights="w0", sampler="ddim",
    num_inference_steps=4, guidance_scale=5.0, height=16, width=16, dtype="float32",
)  # fmt: skip
ITEMS = [(f"prompt {i}", i) for i in range(8)]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _generate(log: Path | None = None, delay: float = 0.0):
    def generate(prompt: str, seed: int) -> Image.Image:
        if log is not None:
            with open(log, "a") as f:
                f.write(f"{seed} {os.getpid()}\n")
        time.sleep(delay)
        return _image(seed)

    return generate


def _check_complete(cache: OriginalsCache) -> None:
    for path, (prompt, seed) in zip(cache.paths(SPEC, ITEMS), ITEMS):
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im), np.asarray(_image(seed)))
            assert im.text["prompt"] == prompt and im.text["seed"] == str(seed)
    leftovers = [p.name for p in cache.folder(SPEC).iterdir() if p.suffix != ".png" and p.name != "spec.json"]
    assert leftovers == [] and not list(cache.folder(SPEC).glob(".*"))


def test_key_is_exactly_the_documented_fields() -> None:
    assert {f.name for f in dataclasses.fields(OriginalsSpec)} == {
        "model", "model_id", "revision", "variant", "weights", "sampler", "num_inference_steps",
        "guidance_scale", "height", "width", "dtype",
    }  # fmt: skip
    keys = {SPEC.item_key("a cat", 0)}
    for change in ({"weights": "w1"}, {"sampler": "euler"}, {"num_inference_steps": 5}, {"guidance_scale": 4.0},
                   {"height": 32}, {"width": 32}, {"dtype": "float16"}, {"model_id": "x/y"}):  # fmt: skip
        keys.add(dataclasses.replace(SPEC, **change).item_key("a cat", 0))
    keys |= {SPEC.item_key("a dog", 0), SPEC.item_key("a cat", 1)}
    assert len(keys) == 11
    assert SPEC.item_key("a cat", 0) == dataclasses.replace(SPEC).item_key("a cat", 0)
    cfg = {"model": {"name": "tiny_sdxl", "id": ""}, "height": 16, "width": 16, "dtype": "float32",
           "sampler": {"name": "ddim", "num_inference_steps": 4, "guidance_scale": 5}}  # fmt: skip
    assert OriginalsSpec.from_config(cfg, "w0") == SPEC


def test_weights_fingerprint(tmp_path) -> None:
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "w.safetensors").write_bytes(bytes(range(256)) * 20000)  # > 2 MiB
    (model / "model_index.json").write_text("{}")
    fp = weights_fingerprint(model)
    shutil.copytree(model, tmp_path / "copy")
    os.utime(tmp_path / "copy" / "unet" / "w.safetensors", (1, 1))
    assert weights_fingerprint(tmp_path / "copy") == fp  # copies and mtimes do not matter
    data = bytearray((model / "unet" / "w.safetensors").read_bytes())
    data[1000] ^= 1
    (model / "unet" / "w.safetensors").write_bytes(bytes(data))
    assert weights_fingerprint(model) != fp  # a changed weight near the start does

    # a hub snapshot: files link to blobs named by the content hash, which is used instead of reading them
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (blobs / ("a" * 64)).write_bytes(b"weights")
    (snap / "w.safetensors").symlink_to(blobs / ("a" * 64))
    hub_fp = weights_fingerprint(snap)
    (blobs / ("a" * 64)).write_bytes(b"WEIGHTS")  # same size and blob name
    assert weights_fingerprint(snap) == hub_fp


def test_fill_generates_once_then_reuses(tmp_path) -> None:
    cache = OriginalsCache(tmp_path)
    assert cache.missing(SPEC, ITEMS) == list(range(8))
    share = cache.fill(SPEC, ITEMS, _generate(), rank=1, world_size=2)  # rank 1 of 2: items 1, 3, 5, 7
    assert (share.generated, share.reused) == (4, 0) and cache.missing(SPEC, ITEMS) == [0, 2, 4, 6]
    stats = cache.fill(SPEC, ITEMS, _generate())
    assert (stats.generated, stats.reused, stats.waited) == (4, 4, 0)
    _check_complete(cache)


def _racer(root, log, barrier, queue) -> None:
    barrier.wait()
    queue.put(OriginalsCache(root).fill(SPEC, ITEMS, _generate(log, delay=0.3)).generated)


def test_two_racing_processes_neither_corrupt_nor_duplicate(tmp_path) -> None:
    ctx = mp.get_context("fork")
    barrier, queue, log = ctx.Barrier(2), ctx.Queue(), tmp_path / "log"
    procs = [ctx.Process(target=_racer, args=(tmp_path / "c", log, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    made = [queue.get(timeout=5) for _ in procs]
    seeds = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert sorted(seeds) == [s for _, s in ITEMS]  # every original made exactly once
    assert sum(made) == len(ITEMS) and min(made) > 0  # and the work was split
    _check_complete(OriginalsCache(tmp_path / "c"))


def _killed_midway(root, ready) -> None:
    cache = OriginalsCache(root)

    def generate(prompt: str, seed: int) -> Image.Image:
        if seed == 3:  # die while holding item 3's lock, with a partial temporary file on disk
            target = cache.path(SPEC, prompt, seed)
            (target.parent / f".{target.stem}.tmp-{os.getpid()}.png").write_bytes(b"\x89PNG partial")
            ready.set()
            time.sleep(600)
        return _image(seed)

    cache.fill(SPEC, ITEMS, generate)


def test_resume_after_a_killed_writer(tmp_path) -> None:
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_killed_midway, args=(tmp_path, ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    cache = OriginalsCache(tmp_path)
    assert cache.missing(SPEC, ITEMS) == [3, 4, 5, 6, 7]
    stats = cache.fill(SPEC, ITEMS, _generate())
    assert (stats.generated, stats.reused) == (5, 3)
    _check_complete(cache)


def test_an_item_being_made_elsewhere_is_waited_for(tmp_path) -> None:
    ctx = mp.get_context("fork")
    started, log = ctx.Event(), tmp_path / "log"

    def slow_fill() -> None:
        def generate(prompt, seed):
            started.set()
            return _generate(log, delay=1.0)(prompt, seed)

        OriginalsCache(tmp_path).fill(SPEC, ITEMS[:1], generate)

    proc = ctx.Process(target=slow_fill)
    proc.start()
    assert started.wait(60)
    stats = OriginalsCache(tmp_path).fill(SPEC, ITEMS[:1], _generate(log))
    proc.join(60)
    assert (stats.generated, stats.reused, stats.waited) == (0, 1, 1)
    assert len(log.read_text().splitlines()) == 1
