"""A cache of original (single-device) images, shared by every job of a sweep and by later sweeps.

An original is keyed by exactly what determines it: the model (name, id, revision, variant and the fingerprint of
its weight files, :func:`weights_fingerprint`), sampler, steps, guidance scale, height, width, dtype, prompt and
seed (:class:`OriginalsSpec` holds all but the last two; :meth:`OriginalsSpec.item_key` adds them). The device is
not part of the key. Layout::

    <root>/<spec key[:16]>/spec.json          the spec, for people
    <root>/<spec key[:16]>/<item key[:24]>.png one original (its prompt and seed also in PNG text chunks)

``root`` defaults to ``$DISTRI_CACHE/originals`` (else ``~/.cache/distri/originals``).

:meth:`OriginalsCache.fill` makes what is missing, one item at a time under a per-item file lock (``flock``,
released by the OS if the holder dies): an item another process is making is deferred, then waited for (and made
here if that process died), so two jobs filling the same originals at once split the work and never make an
item twice. Each PNG is written to a temporary file, flushed to disk and renamed into place, so a reader sees a
whole image or none, and an interrupted fill resumes where it stopped. Data parallel: rank ``r`` of ``N`` takes
items ``r, r + N, ...``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from PIL import Image, PngImagePlugin

_HUB_BLOB = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
_EDGE = 1 << 20  # bytes hashed at each end of a file that is not a hub blob


def weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """A cheap, stable hash of the files of a model folder (a diffusers pipeline folder or hub snapshot).

    SHA-256 over every file below ``model_dir`` (symlinks followed, hidden files skipped), in sorted relative-path
    order, of: the relative path, the size, and a content digest: for a file in the Hugging Face cache, the name
    of the blob it links to (the hub's own SHA-256 of the content, or git SHA-1 for small files); for any other
    file, the SHA-256 of its first and last MiB (all of it when smaller). Modification times are not used, so a
    copy or a re-download of the same weights gives the same fingerprint.
    """
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"model folder not found: {root}")
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root))):
        real = path.resolve()
        size = real.stat().st_size
        if real.parent.name == "blobs" and _HUB_BLOB.match(real.name):
            digest = real.name
        else:
            digest = _edge_digest(real, size)
        h.update(f"{path.relative_to(root).as_posix()}\0{size}\0{digest}\n".encode())
    return h.hexdigest()


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _edge_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
        h.update(f.read(_EDGE))
    return h.hexdigest()


@dataclass(frozen=True)
class OriginalsSpec:
    """Everything but the prompt and seed that determines an original image."""

    model: str  # model name (e.g. "sdxl", "tiny_sdxl")
    model_id: str  # hub id or folder ("" for locally built models)
    revision: str | None
    variant: str | None
    weights: str  # weights_fingerprint of the model's folder
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    dtype: str

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], weights: str) -> OriginalsSpec:
        """The spec of a resolved job config dict (``model``, ``sampler``, ``height``, ``width``, ``dtype``)."""
        m, s = cfg["model"], cfg["sampler"]
        return cls(
            model=str(m["name"]), model_id=str(m.get("id") or ""), revision=m.get("revision"),
            variant=m.get("variant"), weights=weights, sampler=str(s["name"]),
            num_inference_steps=int(s["num_inference_steps"]), guidance_scale=float(s["guidance_scale"]),
            height=int(cfg["height"]), width=int(cfg["width"]), dtype=str(cfg["dtype"]),
        )  # fmt: skip

    def key(self) -> str:
        return _sha(asdict(self))

    def item_key(self, prompt: str, seed: int) -> str:
        return _sha({"spec": asdict(self), "prompt": prompt, "seed": int(seed)})


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass
class FillStats:
    """What one :meth:`OriginalsCache.fill` call did with its share of the items."""

    generated: int = 0
    reused: int = 0
    waited: int = 0  # items another process was making when first tried


def default_originals_dir() -> Path:
    base = os.environ.get("DISTRI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "distri")
    return Path(base) / "originals"


class OriginalsCache:
    """Originals on disk under ``root`` (default :func:`default_originals_dir`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_originals_dir()

    def folder(self, spec: OriginalsSpec) -> Path:
        return self.root / spec.key()[:16]

    def path(self, spec: OriginalsSpec, prompt: str, seed: int) -> Path:
        return self.folder(spec) / f"{spec.item_key(prompt, seed)[:24]}.png"

    def paths(self, spec: OriginalsSpec, items: Sequence[tuple[str, int]]) -> list[Path]:
        """Where the originals of ``items`` (``(prompt, seed)`` pairs) are, in order, present or not."""
        return [self.path(spec, p, s) for p, s in items]

    def missing(self, spec: OriginalsSpec, items: Sequence[tuple[str, int]]) -> list[int]:
        """Indices of ``items`` whose original is not in the cache yet."""
        return [i for i, p in enumerate(self.paths(spec, items)) if not p.is_file()]

    def fill(
        self,
        spec: OriginalsSpec,
        items: Sequence[tuple[str, int]],
        generate: Callable[[str, int], Any],
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> FillStats:
        """Make this rank's share of the missing originals of ``items`` with ``generate(prompt, seed)``.

        ``generate`` returns a PIL image or a ``[3, H, W]`` tensor in ``[0, 1]``. Returns when every item of the
        share is on disk (items another process is making are waited for at the end).
        """
        folder = self.folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "spec.json", (json.dumps(asdict(spec), indent=2) + "\n").encode())
        stats = FillStats()
        deferred = []
        for i in range(rank, len(items), world_size):
            if not self._make(spec, items[i], generate, stats, wait=False):
                deferred.append(i)
        stats.waited = len(deferred)
        for i in deferred:
            self._make(spec, items[i], generate, stats, wait=True)
        return stats

    def _make(self, spec, item: tuple[str, int], generate, stats: FillStats, wait: bool) -> bool:
        """Make one item if missing; False when another process holds its lock and ``wait`` is False."""
        prompt, seed = item
        target = self.path(spec, prompt, seed)
        if target.is_file():
            stats.reused += 1
            return True
        lock_path = target.with_suffix(".lock")
        try:
            lock = FileLock(str(lock_path), timeout=-1 if wait else 0)
            lock.acquire()
        except Timeout:
            return False
        try:
            if target.is_file():  # made by the process that held the lock
                stats.reused += 1
            else:
                for stale in target.parent.glob(f".{target.stem}.tmp-*"):  # left by an interrupted writer
                    stale.unlink(missing_ok=True)
                _save_png(generate(prompt, seed), target, prompt, seed)
                stats.generated += 1
            lock_path.unlink(missing_ok=True)  # safe: whoever takes this lock from now on finds the image
            return True
        finally:
            lock.release()


def _save_png(image: Any, target: Path, prompt: str, seed: int) -> None:
    if not isinstance(image, Image.Image):
        from distri.generate import to_pil

        image = to_pil(image)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompt", prompt)
    info.add_text("seed", str(seed))
    tmp = target.parent / f".{target.stem}.tmp-{os.getpid()}.png"
    with tmp.open("wb") as f:
        image.save(f, format="PNG", pnginfo=info)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, path)
