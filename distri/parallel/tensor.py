"""Tensor parallelism (Megatron style) for a stock diffusers ``UNet2DConditionModel`` (or another denoiser
built from the same diffusers layers).

The ``par_size`` ranks of ``ctx.par_group`` each hold a shard of the big layers' weights and compute on the
full (replicated) activations; every sharded block ends in one all-reduce (ledger kind ``tp_allreduce``):

* attention (self and cross): heads are split; ``to_q``/``to_k``/``to_v`` keep this rank's heads (output
  features), ``to_out[0]`` the matching input features, then all-reduce, bias added once after it;
* feed-forward: ``net[0].proj`` keeps this rank's slice of the hidden dimension (for the gated GEGLU/SwiGLU
  the matching slices of both the value and the gate halves), ``net[2]`` the matching input features, then
  all-reduce;
* ResNet blocks: ``conv1`` and ``time_emb_proj`` by output channels (``scale_shift``: both halves), ``norm2``
  becomes a GroupNorm over the rank's channel shard (exact: the shard is a block of whole groups), ``conv2``
  by input channels, then all-reduce; ``norm1`` and ``conv_shortcut`` stay replicated;
* ``Downsample2D``/``Upsample2D`` convolutions and the output layer (the adapter's ``output_layer``, a UNet's
  ``conv_out``): by input channels (each rank
  slices its channel shard of the replicated input), then all-reduce.

The swapped-in layers live in :mod:`distri.parallel.tensor_layers`; which layers are sharded, and which degrees
fit, is decided in :mod:`distri.parallel.tensor_plan`.

Splits may be uneven. Each layer is cut into units (attention heads, FFN hidden features, GroupNorm groups of
``norm2``, conv input channels) and rank ``r`` gets a contiguous block of them, the block sizes differing by
at most one, the first ``units % par_size`` ranks taking one more (:func:`~distri.parallel.tensor_plan.shard_range`; 10 heads over 8 ranks:
2, 2, 1, 1, 1, 1, 1, 1). The only requirement is at least one unit of every sharded layer per rank, i.e.
``par_size <=`` the smallest head count / group count / FFN width / conv width. Uneven splits change neither
the result nor the all-reduce traffic (full-size outputs are reduced), only the balance: a rank with an extra
head holds and computes a little more (:meth:`~distri.parallel.tensor_handle.TensorParallelHandle.param_report` says how much).

Everything else (``conv_in``, embeddings, ``proj_in``/``proj_out``, norms) stays replicated. The output equals
the single-device UNet up to floating-point summation order. With ``par_size == 1`` nothing is changed.
Attention modules with a non-stock processor, and other unsupported variants, stay replicated (still exact);
``handle.skipped`` lists them.

Memory: every rank holds new, smaller parameters for the sharded layers. The original full layers do not stay
on the device: as each layer is swapped for its shard, the full one moves to host memory (CPU), where the
handle keeps it so that :meth:`~distri.parallel.tensor_handle.TensorParallelHandle.remove` can move it back and restore the stock UNet
bit for bit (the device then holds the shards plus at most one full layer at a time). ``free_full=True`` drops
each full layer instead (no host copy; ``remove()`` then raises). :meth:`~distri.parallel.tensor_handle.TensorParallelHandle.param_report`
says which (``full_layers``: ``host``, ``freed`` or ``none``). On a CPU run host and device are the same memory.
Inference only: the all-reduces are not autograd-aware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from distri.parallel.strategy import Fit, Strategy

if TYPE_CHECKING:
    from torch import nn

    from distri.parallel.context import ParallelContext
    from distri.parallel.tensor_handle import TensorParallelHandle


@dataclass
class Tensor(Strategy):
    """Tensor parallelism (see the module docstring)."""

    name = "tensor"

    free_full: bool = False
    """Drop the unsharded layers instead of keeping them in host memory (needs compare_to_original=false)."""

    def exact(self) -> bool:
        return True  # every sharded layer sums or gathers to the whole layer's output

    def degrees(self, fit: Fit, limit: int = 64) -> list[int]:
        if fit.unet is None:
            return list(range(1, limit + 1))
        from distri.parallel.tensor_plan import valid_world_sizes

        return valid_world_sizes(fit.unet, limit)

    def misfit(self, fit: Fit, degree: int) -> str | None:
        if fit.unet is None or degree == 1:
            return None
        from distri.parallel.tensor_plan import as_module, find_layers, misfit

        return misfit(find_layers(as_module(fit.unet))[0], degree, 2 if self.cfg_split else 1)

    def problems(self, fit: Fit) -> list[str]:
        if not (self.free_full and fit.compare_to_original):
            return []
        return [
            "strategy.free_full=true drops the full layers, so the single-device comparison cannot run: "
            "also set metrics.compare_to_original=false"
        ]

    def apply(self, denoiser: nn.Module, ctx: ParallelContext) -> TensorParallelHandle:
        """Shard the denoiser's big layers over ``ctx.par_group``.

        Splits may be uneven (:func:`shard_range`). Raises ``ValueError`` (before touching the model) when
        ``ctx.par_size`` exceeds a head count, FFN inner dim, GroupNorm group count or conv input channel count
        of a sharded layer (some rank would get nothing), naming the layer and the sizes that work. The original
        full layers wait in host memory for ``remove()``; ``free_full=True`` drops them instead (``remove()``
        then raises).
        """
        from distri.parallel.tensor_handle import TensorParallelHandle

        return TensorParallelHandle(denoiser, ctx, cfg_split=self.cfg_split, free_full=self.free_full)


STRATEGY = Tensor


def apply(denoiser: nn.Module, ctx: ParallelContext, **params) -> TensorParallelHandle:
    """``Tensor(**params).apply(denoiser, ctx)``; ``handle.remove()`` restores the denoiser."""
    return Tensor(**params).apply(denoiser, ctx)
