"""Model adapters: what a parallel strategy needs to know about a denoiser, and nothing more.

A strategy never assumes a UNet. It asks the denoiser's :class:`ModelAdapter`:

* ``input_name``: the keyword (also positional argument 0) of the latent input, ``[B, C, H, W]``;
* ``downsamples``: how many 2x spatial down-samplings lie between the input and the coarsest level (patch
  strategies need every band to hold whole, even rows at every level);
* ``input_layer`` / ``output_layer``: the names of the first layer that reads the latent and of the last one
  (a patch strategy cuts its band where the input layer reads the latent; tensor parallelism shards the output
  layer). ``None`` where the model has no such single layer.

Attention layers are found by type (diffusers ``Attention``), whatever the model. :func:`adapter_for` picks the
adapter by the model's class; the UNet families (SD 1.x/2.x, SDXL: diffusers ``UNet2DConditionModel``) are
registered here. A new family (a DiT, say) registers its own with :func:`register_adapter` and needs no change
to any strategy. The UNet's down-sampling count is also read from a config dict alone
(:func:`unet_downsamples`), so configs are validated before any weight is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelAdapter:
    input_name: str = "sample"
    downsamples: int = 0
    input_layer: str | None = None
    output_layer: str | None = None


_ADAPTERS: dict[str, Callable[[nn.Module], ModelAdapter]] = {}


def register_adapter(cls: type | str, make: Callable[[nn.Module], ModelAdapter]) -> None:
    """Use ``make(model)`` as the adapter of models of class ``cls`` (a class or its ``module.QualName``)."""
    key = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    _ADAPTERS[key] = make


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter registered for ``model``'s class (or a base class); ``TypeError`` naming the fix otherwise."""
    for cls in type(model).__mro__:
        make = _ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if make is not None:
            return make(model)
    raise TypeError(
        f"no model adapter for {type(model).__name__}: register one with "
        "distri.models.adapters.register_adapter(cls, lambda model: ModelAdapter(...))"
    )


def unet_downsamples(config: Mapping[str, Any]) -> int:
    """2x down-samplings of a diffusers ``UNet2DConditionModel`` from its config: every down block but the last."""
    return len(config["down_block_types"]) - 1


def _unet_adapter(unet: nn.Module) -> ModelAdapter:
    return ModelAdapter(
        input_name="sample",
        downsamples=unet_downsamples(unet.config),
        input_layer="conv_in",
        output_layer="conv_out",
    )


register_adapter("diffusers.models.unets.unet_2d_condition.UNet2DConditionModel", _unet_adapter)
