"""Image sets on disk, streamed in batches: nothing holds more than one batch of images in memory.

A set is a folder (its image files in sorted name order, not recursive) or an explicit sequence of paths (in the
given order). Paired sets are paired by position. Images are read with PIL as 8-bit RGB (grey or RGBA files are
converted) into ``uint8`` tensors ``[3, H, W]``.

Real (G.T.) images are resized to the generated images' size the way the paper's ``compute_metrics.py`` does it:
torchvision's ``Resize((H, W))`` on the ``uint8`` tensor (bilinear, antialiased, which is torchvision's default
since 0.17; the paper's code needs torch >= 2.2, hence torchvision >= 0.17), ignoring the aspect ratio.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
ImageSource = str | os.PathLike | Iterable[str | os.PathLike]
"""A folder, or the image files themselves in order."""


def list_images(source: ImageSource) -> list[Path]:
    """The image files of ``source``: a folder's images sorted by name, or the given paths in order."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        return files
    files = [Path(p).expanduser() for p in source]
    absent = [str(p) for p in files if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image file(s) not found, e.g. {absent[0]}")
    if not files:
        raise ValueError("an empty list of images was given")
    return files


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """One image file as a ``uint8`` tensor ``[3, H, W]`` (converted to RGB)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def resize_to(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``uint8`` image ``[3, h, w]`` to ``size=(H, W)`` as the paper's code resizes G.T. images."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return resize(img, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


class _Images(torch.utils.data.Dataset):
    def __init__(self, *sets: Sequence[Path], resize_last: bool = False) -> None:
        self.sets, self.resize_last = sets, resize_last

    def __len__(self) -> int:
        return len(self.sets[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        imgs = [read_rgb(s[i]) for s in self.sets]
        if self.resize_last:
            imgs[-1] = resize_to(imgs[-1], tuple(imgs[0].shape[-2:]))
        for s, img in zip(self.sets[1:], imgs[1:]):
            if img.shape != imgs[0].shape:
                raise ValueError(
                    f"{s[i]} is {tuple(img.shape[1:])} but its pair {self.sets[0][i]} is {tuple(imgs[0].shape[1:])}"
                )
        return tuple(imgs)


def _collate(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    shapes = {tuple(item[0].shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(f"images of one set differ in size ({sorted(shapes)}); a set must have one size")
    return tuple(torch.stack(col) for col in zip(*items))


def batches(
    *sets: Sequence[Path],
    batch_size: int,
    num_workers: int = 0,
    resize_last: bool = False,
    desc: str = "",
    progress: bool = True,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Stream equally long image sets in batches of ``uint8`` tensors ``[B, 3, H, W]`` (one per set), in order.

    ``resize_last`` resizes each image of the last set to its pair in the first set (:func:`resize_to`). A
    progress bar (tqdm, on stderr) counts images when ``progress``.
    """
    from tqdm import tqdm

    lengths = {len(s) for s in sets}
    if len(lengths) != 1:
        raise ValueError(f"image sets to pair differ in length: {[len(s) for s in sets]}")
    loader = torch.utils.data.DataLoader(
        _Images(*sets, resize_last=resize_last),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    with tqdm(total=len(sets[0]), desc=desc, unit="img", disable=not progress) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))
