"""What every strategy shares: a removable wrapper around a stock diffusers ``UNet2DConditionModel``.

A strategy is a function ``apply(unet, ctx, **params) -> StrategyHandle``. The handle

* counts denoising steps (one UNet call per step; the runner calls :meth:`StrategyHandle.reset` before every
  pipeline call) and tells the ledger which step a collective belongs to;
* splits the classifier-free-guidance batch across the two CFG groups when ``ctx.cfg_size == 2`` and gathers
  the halves of the noise prediction back (ledger kind ``cfg_gather``);
* lets subclasses cut the UNet input (:meth:`split_input`) and gather its output (:meth:`gather_output`),
  swap submodules (:meth:`replace_module`) and attention processors, and
* undoes all of it in :meth:`remove`, leaving the stock UNet.

``apply_none`` is the strategy ``none``: the unchanged UNet, optionally with the CFG split alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distri.parallel import comm
from distri.parallel.context import ParallelContext
from distri.parallel.geometry import check_patch_split, patch_world_sizes  # noqa: F401 (re-exported)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


class StrategyHandle:
    """Base handle: step counting, CFG split, input split and output gather hooks around the UNet."""

    name = "none"
    exact = True

    def __init__(self, unet: nn.Module, ctx: ParallelContext, cfg_split: bool = False) -> None:
        if cfg_split and ctx.cfg_size != 2:
            raise ValueError("cfg_split needs a context with cfg_size=2 (world_size = 2 x parallel degree)")
        if not cfg_split and ctx.cfg_size != 1:
            raise ValueError(
                "the context splits the CFG batch but the strategy was built with cfg_split=False"
            )
        self.unet = unet
        self.ctx = ctx
        self.cfg_split = cfg_split
        self.step = 0
        self._replaced: list[tuple[str, nn.Module]] = []
        self._processors: dict[str, Any] | None = None
        self._hooks = [
            unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            unet.register_forward_hook(self._post_hook, with_kwargs=True),
        ]
        self._removed = False

    # -- lifecycle -------------------------------------------------------------------------
    def reset(self) -> None:
        """Start of a pipeline call: step 0, empty ledger."""
        self.step = 0
        self.ctx.ledger.reset()

    def remove(self) -> None:
        """Restore the stock UNet (modules, attention processors, hooks)."""
        if self._removed:
            return
        for h in self._hooks:
            h.remove()
        for name, old in reversed(self._replaced):
            _set_submodule(self.unet, name, old)
        self._replaced.clear()
        if self._processors is not None:
            self.unet.set_attn_processor(self._processors)
        self._removed = True

    def replace_module(self, name: str, new: nn.Module) -> None:
        old = _set_submodule(self.unet, name, new)
        self._replaced.append((name, old))

    def save_processors(self) -> None:
        if self._processors is None:
            self._processors = dict(self.unet.attn_processors)

    # -- per-step hooks for subclasses ----------------------------------------------------------
    def split_input(self, sample: torch.Tensor) -> torch.Tensor:
        return sample

    def gather_output(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def end_step(self) -> None:
        pass

    # -- the UNet hooks ------------------------------------------------------------------------
    def _cfg_slice(self, x: Any, batch: int) -> Any:
        if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == batch:
            return x.chunk(2, dim=0)[self.ctx.cfg_rank]
        return x

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.ctx.ledger.step = self.step
        args = list(args)
        sample = args[0] if args else kwargs["sample"]
        if self.cfg_split:
            batch = sample.shape[0]
            if batch % 2:
                raise RuntimeError(
                    f"cfg_split needs an even UNet batch (unconditional + conditional), got {batch}; "
                    "is guidance_scale <= 1 so that the pipeline skips classifier-free guidance?"
                )
            args = [self._cfg_slice(a, batch) for a in args]
            kwargs = {k: self._cfg_slice(v, batch) for k, v in kwargs.items()}
            if isinstance(kwargs.get("added_cond_kwargs"), dict):
                kwargs["added_cond_kwargs"] = {
                    k: self._cfg_slice(v, batch) for k, v in kwargs["added_cond_kwargs"].items()
                }
            sample = args[0] if args else kwargs["sample"]
        sample = self.split_input(sample)
        if args:
            args[0] = sample
        else:
            kwargs["sample"] = sample
        return tuple(args), kwargs

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        out = output[0] if isinstance(output, tuple) else output.sample
        out = self.gather_output(out)
        if self.cfg_split:
            out = comm.all_gather(out, self.ctx.cfg_group, self.ctx.ledger, "cfg_gather", dim=0)
        self.end_step()
        self.step += 1
        if isinstance(output, tuple):
            return (out, *output[1:])
        output.sample = out
        return output


def apply_none(unet: nn.Module, ctx: ParallelContext, cfg_split: bool = False) -> StrategyHandle:
    """Strategy ``none``: the stock UNet on every rank; with ``cfg_split`` the two CFG halves run on two ranks."""
    return StrategyHandle(unet, ctx, cfg_split=cfg_split)


def unet_downsamples(unet: nn.Module) -> int:
    """How many 2x down-samplings the UNet's encoder has."""
    return sum(1 for b in unet.down_blocks if getattr(b, "downsamplers", None))
