"""What every strategy's handle shares: a removable wrapper around a stock denoiser (any ``nn.Module``).

A strategy (:mod:`distri.parallel.strategy`) applies itself to a denoiser and returns a handle. What the handle
needs from the model (the name of its latent input) comes from the model's adapter
(:mod:`distri.models.adapters`), so nothing here assumes a UNet. The handle

* counts denoising steps (one UNet call per step) and tells the ledger which step a collective belongs to; a
  new pipeline call is recognised by its timesteps (they decrease within a call) and starts again at step 0
  (:meth:`StrategyHandle.reset`), so the synchronous warm-up cannot be skipped whoever calls the pipeline;
* splits the classifier-free-guidance batch across the two CFG groups when ``ctx.cfg_size == 2`` and gathers
  the halves of the noise prediction back (ledger kind ``cfg_gather``);
* lets subclasses cut the denoiser's input (:meth:`split_input`) and gather its output (:meth:`gather_output`),
  swap submodules (:meth:`replace_module`) and attention processors, and
* undoes all of it in :meth:`remove`, leaving the stock denoiser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distri.models.adapters import ModelAdapter, adapter_for
from distri.parallel import comm
from distri.parallel.context import ParallelContext


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


class StrategyHandle:
    """Base handle: step counting, CFG split, input split and output gather hooks around the denoiser.

    ``adapter`` describes the denoiser (default: the one registered for its class, :func:`adapter_for`).
    """

    def __init__(
        self,
        unet: nn.Module,
        ctx: ParallelContext,
        cfg_split: bool = False,
        adapter: ModelAdapter | None = None,
    ) -> None:
        if cfg_split and ctx.cfg_size != 2:
            raise ValueError("cfg_split needs a context with cfg_size=2 (world_size = 2 x parallel degree)")
        if not cfg_split and ctx.cfg_size != 1:
            raise ValueError(
                "the context splits the CFG batch but the strategy was built with cfg_split=False"
            )
        self.unet = unet
        self.ctx = ctx
        self.adapter = adapter or adapter_for(unet)
        self.cfg_split = cfg_split
        self.step = 0
        self._last_call_key: tuple | None = None
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
        self._last_call_key = None
        self.ctx.ledger.reset()

    def remove(self) -> None:
        """Restore the stock denoiser (modules, attention processors, hooks)."""
        if self._removed:
            return
        for h in self._hooks:
            h.remove()
        for name, old in reversed(self._replaced):
            _set_submodule(self.unet, name, old)
        self._replaced.clear()
        if self._processors is not None:
            for name, proc in self._processors.items():
                self.unet.get_submodule(name).set_processor(proc)
        self._removed = True

    def replace_module(self, name: str, new: nn.Module) -> None:
        old = _set_submodule(self.unet, name, new)
        self._replaced.append((name, old))

    def save_processors(self) -> None:
        """Remember every attention layer's processor, for :meth:`remove` (any model with diffusers
        ``Attention`` layers, not only UNets)."""
        from diffusers.models.attention_processor import Attention

        if self._processors is None:
            self._processors = {
                n: m.processor for n, m in self.unet.named_modules() if isinstance(m, Attention)
            }

    # -- per-step hooks for subclasses ----------------------------------------------------------
    def split_input(self, sample: torch.Tensor) -> torch.Tensor:
        return sample

    def gather_output(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def end_step(self) -> None:
        pass

    # -- the forward hooks ---------------------------------------------------------------------
    def _cfg_slice(self, x: Any, batch: int) -> Any:
        if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == batch:
            return x.chunk(2, dim=0)[self.ctx.cfg_rank]
        return x

    @staticmethod
    def _call_key(sample: torch.Tensor, args: list, kwargs: dict) -> tuple[float | None, tuple[int, ...]]:
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        if torch.is_tensor(t):  # no value on the meta device (the dry run): only the shape can tell
            t = None if t.device.type == "meta" else float(t.reshape(-1)[0])
        elif t is not None:
            t = float(t)
        return t, tuple(sample.shape)

    def _new_call(self, key: tuple[float | None, tuple[int, ...]]) -> bool:
        """Whether a denoiser call with this (timestep, latent shape) starts a new pipeline call.

        Within one pipeline call the samplers evaluate the UNet once per step at strictly decreasing
        timesteps; a timestep that does not decrease, or a latent of another shape, starts a new call, so
        nobody can skip the warm-up. (Reading a timestep that lives on a GPU costs one host read per step;
        the stock schedulers do the same.)
        """
        last = self._last_call_key
        if self.step == 0 or last is None:
            return False
        t, t_last = key[0], last[0]
        return key[1] != last[1] or (t is not None and t_last is not None and t >= t_last)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, key_name = list(args), self.adapter.input_name
        sample = args[0] if args else kwargs[key_name]
        key = self._call_key(sample, args, kwargs)
        if self._new_call(key):
            self.reset()
        self._last_call_key = key
        self.ctx.ledger.step = self.step
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
            sample = args[0] if args else kwargs[key_name]
        sample = self.split_input(sample)
        if args:
            args[0] = sample
        else:
            kwargs[key_name] = sample
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
