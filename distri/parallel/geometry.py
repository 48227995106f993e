"""Patch geometry: which patch degrees split a latent evenly at every UNet level (no torch import)."""

from __future__ import annotations


def patch_world_sizes(latent_size: int, downsamples: int, limit: int = 64) -> list[int]:
    """Patch degrees ``n <= limit`` that split ``latent_size`` evenly at every UNet resolution level.

    A band must hold a whole number of rows at the deepest level (``latent_size / 2**downsamples``) and an even
    number of rows above it (for the stride-2 down-sampling convolutions), i.e. ``n * 2**downsamples``
    divides ``latent_size``.
    """
    return [n for n in range(1, limit + 1) if latent_size % (n * 2**downsamples) == 0]


def check_patch_split(latent_size: int, n: int, downsamples: int, what: str = "latent height") -> None:
    if latent_size % (n * 2**downsamples):
        ok = patch_world_sizes(latent_size, downsamples)
        raise ValueError(
            f"{n} patches do not divide the {what} {latent_size} at every UNet level "
            f"({downsamples} down-samplings need {what} % (n * {2**downsamples}) == 0); "
            f"patch degrees that work here: {ok}"
        )
