"""The model-adapter seam: strategies take what they need from a denoiser's adapter, not from a UNet's layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distri.dryrun import fake_process_group
from distri.models.adapters import ModelAdapter, adapter_for, register_adapter, unet_downsamples
from distri.parallel.context import make_context
from distri.parallel.strategy import strategy_from_config


class ToyDiT(nn.Module):
    """Not a UNet: its latent comes as ``hidden_states``, it has no ``down_blocks``, no ``conv_in``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4, 4, 1)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor]:
        self.seen.append(tuple(hidden_states.shape))
        return (self.proj(hidden_states),)


register_adapter(ToyDiT, lambda m: ModelAdapter(input_name="hidden_states", downsamples=1))


def test_an_unregistered_model_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="no model adapter for Linear: register one with"):
        adapter_for(nn.Linear(1, 1))


def test_unet_downsamples_from_its_config():
    from distri.dryrun import unet_config

    assert (unet_downsamples(unet_config("sdxl")), unet_downsamples(unet_config("sd15"))) == (2, 3)


@pytest.mark.parametrize("scheme, seen", [("row", (2, 4, 4, 8)), ("col", (2, 4, 8, 4))])
def test_naive_patch_cuts_a_non_unet_input_by_its_adapter(scheme, seen):
    """Rank 0 of 2 (fake process group): the toy sees its half of the latent under its own input name, and the
    gathered output has the full shape; remove() restores the model."""
    model = ToyDiT()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor(10)
    with fake_process_group(2):
        ctx = make_context(0, 2, torch.device("cpu"), "fake")
        handle = strategy_from_config({"name": "naive_patch", "split_scheme": scheme}).apply(model, ctx)
        out = model(hidden_states=x, timestep=t)[0]
        handle.remove()
    assert model.seen == [seen] and out.shape == x.shape
    with pytest.raises(ValueError, match=r"3 patches do not divide the latent height 8 .*\(1 down-samplings"):
        with fake_process_group(3):
            ctx = make_context(0, 3, torch.device("cpu"), "fake")
            handle = strategy_from_config({"name": "naive_patch", "split_scheme": "row"}).apply(model, ctx)
            try:
                model(hidden_states=x, timestep=t)
            finally:
                handle.remove()
