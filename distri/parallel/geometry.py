"""Patch geometry: which patch degrees split a latent evenly at every level, and the patch strategies' shared
declaration (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from distri.parallel.strategy import Fit, Strategy


def patch_world_sizes(latent_size: int, downsamples: int, limit: int = 64) -> list[int]:
    """Patch degrees ``n <= limit`` that split ``latent_size`` evenly at every resolution level.

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


@dataclass
class PatchStrategy(Strategy):
    """A strategy that cuts the latent into bands along :meth:`split_dims` (2: rows, 3: columns)."""

    def split_dims(self) -> tuple[int, ...]:
        return (2,)

    def degrees(self, fit: Fit, limit: int = 64) -> list[int]:
        if fit.latent is None:
            return list(range(1, limit + 1))
        sizes = [patch_world_sizes(fit.latent[d - 2], fit.downsamples, limit) for d in self.split_dims()]
        return [n for n in sizes[0] if all(n in s for s in sizes)]

    def misfit(self, fit: Fit, degree: int) -> str | None:
        if fit.latent is None or degree == 1:
            return None
        down, cfg = fit.downsamples, 2 if self.cfg_split else 1
        for d in self.split_dims():
            what, lat = ("height", "width")[d - 2], fit.latent[d - 2]
            ok = patch_world_sizes(lat, down)
            if degree not in ok:
                return (
                    f"{degree} patches do not divide the latent {what} {lat} at every UNet level "
                    f"({down} down-samplings: latent {what} % ({degree} x {2**down}) != 0); "
                    f"world sizes that work at {fit.size[d - 2]} px: {[k * cfg for k in ok]}"
                )
        return None
