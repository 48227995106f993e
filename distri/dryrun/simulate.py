"""The dry run itself: the real UNet on the meta device, ``world_size`` ranks simulated on the fake process group
(see :mod:`distri.dryrun`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distri.devices import torch_dtype
from distri.models.adapters import unet_downsamples
from distri.models.denoiser import BUNDLED, build_meta_unet, bundled_config
from distri.models.tiny import LOCAL_MODELS
from distri.parallel.strategy import Fit, Strategy, builtin, strategy_from_config

TINY_MODELS: tuple[str, ...] = LOCAL_MODELS  # built locally: the tiny models and small_sdxl
TEXT_TOKENS = 77


# -- the model on the meta device -------------------------------------------------------------------------
def unet_config(model: str) -> dict[str, Any]:
    """The diffusers UNet config dict of ``model`` (a full-size name, a tiny name, or a path to a JSON file)."""
    if model in BUNDLED:
        return bundled_config(model)
    if model in TINY_MODELS:
        from distri.models.tiny import tiny_spec

        return tiny_spec(model)["unet"]
    if model.endswith(".json") and Path(model).is_file():
        return json.loads(Path(model).read_text())
    raise ValueError(
        f"unknown model {model!r}; valid: {', '.join([*BUNDLED, *TINY_MODELS])} or a path to a UNet config.json"
    )


def meta_inputs(
    config: dict[str, Any], batch: int, height: int, width: int, dtype: torch.dtype = torch.float16
) -> dict[str, Any]:
    """Meta UNet inputs for an image of ``height x width`` pixels: latent, timestep, text (+ SDXL conditioning)."""
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8 (the VAE factor), got {height}x{width}")
    with torch.device("meta"):
        kw: dict[str, Any] = {
            "sample": torch.empty(batch, config.get("in_channels", 4), height // 8, width // 8, dtype=dtype),
            "timestep": torch.tensor(999),
            "encoder_hidden_states": torch.empty(
                batch, TEXT_TOKENS, config["cross_attention_dim"], dtype=dtype
            ),
        }
        if config.get("addition_embed_type") == "text_time":
            n_time = 6  # original size, crop top-left, target size
            text_dim = (
                config["projection_class_embeddings_input_dim"] - n_time * config["addition_time_embed_dim"]
            )
            kw["added_cond_kwargs"] = {
                "text_embeds": torch.empty(batch, text_dim, dtype=dtype),
                "time_ids": torch.empty(batch, n_time, dtype=dtype),
            }
    return kw


# -- which world sizes fit ---------------------------------------------------------------------------------
def _fit(config: dict[str, Any] | torch.nn.Module, height: int, width: int, world_size: int) -> Fit:
    cfg = config if isinstance(config, dict) else config.config
    return Fit(world_size, 1, (height, width), (height // 8, width // 8), config, unet_downsamples(cfg))


def valid_world_sizes(
    config: dict[str, Any] | torch.nn.Module,
    height: int,
    width: int,
    strategy: str,
    cfg_split: bool = False,
    limit: int = 64,
    **strategy_params: Any,
) -> list[int]:
    """World sizes ``<= limit`` over which ``strategy`` can split this model (config or UNet) and resolution.

    The strategy says which parallel degrees fit (:meth:`distri.parallel.strategy.Strategy.degrees`); with
    ``cfg_split`` every degree counts twice. Patch strategies: the degree ``n`` must cut the latent into bands of
    whole, even rows at every UNet level; tensor parallelism: ``n <=`` the smallest head, group, FFN or channel
    count of a sharded layer (SDXL: 10 heads, ``n <= 10``); ``none``: 1.
    """
    spec = strategy_from_config({"name": strategy, "cfg_split": cfg_split, **strategy_params})
    cfg = 2 if cfg_split else 1
    ok = spec.degrees(_fit(config, height, width, limit), limit)
    return [n * cfg for n in ok if n * cfg <= limit]


def check_world_size(
    config: dict[str, Any] | torch.nn.Module,
    height: int,
    width: int,
    world_size: int,
    strategy: str,
    cfg_split: bool = False,
    **strategy_params: Any,
) -> None:
    """Raise ``ValueError`` with the strategy's reason and the valid world sizes when ``world_size`` does not fit."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if cfg_split and world_size % 2:
        raise ValueError(f"cfg_split needs an even world_size (2 CFG groups), got {world_size}")
    limit = max(64, world_size)
    ok = valid_world_sizes(config, height, width, strategy, cfg_split, limit, **strategy_params)
    if world_size not in ok:
        spec = strategy_from_config({"name": strategy, "cfg_split": cfg_split, **strategy_params})
        why = spec.misfit(_fit(config, height, width, world_size), world_size // (2 if cfg_split else 1))
        raise ValueError(
            f"world_size={world_size} does not fit strategy={strategy} at {height}x{width}"
            f"{' with cfg_split' if cfg_split else ''} ({why}); valid world sizes (<= {limit}): {ok}"
        )


# -- the fake process group --------------------------------------------------------------------------------
@contextlib.contextmanager
def fake_process_group(world_size: int, rank: int = 0) -> Iterator[None]:
    """This process as ``rank`` of ``world_size`` on torch's fake backend: collectives complete, move nothing.

    The group is destroyed on exit, so dry runs with different world sizes can follow each other.
    """
    if world_size == 1:
        yield
        return
    if dist.is_initialized():
        raise RuntimeError("a dry run needs its own process: torch.distributed is already initialised here")
    # torch 2.14 has no public way to register its "fake" backend: importing this module is what registers it
    # (the store itself is the public HashStore).
    import torch.testing._internal.distributed.fake_pg  # noqa: F401

    dist.init_process_group("fake", store=dist.HashStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


# -- the dry run -------------------------------------------------------------------------------------------
def _count_macs(unet: torch.nn.Module, inputs: dict[str, Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(**inputs)
    return counter.get_total_flops() // 2


def _steady_steps(strategy: Strategy, steps: int) -> list[int]:
    """Steps past the strategy's synchronous warm-up (all steps when it has none, or when all are synchronous)."""
    warm = strategy.sync_steps(steps) or 0
    return [s for s in range(steps) if s >= warm] or list(range(steps))


def _average(per_step: list[dict[str, Any]], steps: list[int]) -> tuple[float, dict[str, dict]]:
    """Mean bytes per step over ``steps``, in total and by ledger kind."""
    n = len(steps)
    by_kind: dict[str, dict[str, float]] = {}
    for s in steps:
        for kind, rec in per_step[s]["by_kind"].items():
            d = by_kind.setdefault(kind, {"calls": 0.0, "elements": 0.0, "bytes": 0.0})
            for f in d:
                d[f] += rec[f] / n
    return sum(d["bytes"] for d in by_kind.values()), dict(sorted(by_kind.items()))


def _simulate(
    unet: torch.nn.Module,
    inputs: dict[str, Any],
    world_size: int,
    strategy: Strategy,
    steps: int,
    count_macs: bool,
    tracer: Any = None,
) -> tuple[list[dict[str, Any]], list[int], dict[str, Any] | None]:
    """Rank 0 of ``world_size`` on the fake group: ``steps`` UNet calls; per-step records (with the ledger's
    ``collectives``), the steady steps and the handle's ``param_report()`` (``None`` for strategies without
    one). With a ``tracer`` (:class:`distri.predict.costs.CostTracer`) the last step runs under it instead of
    the MAC counter, and its MACs are the tracer's."""
    from distri.parallel.context import make_context

    per_step: list[dict[str, Any]] = []
    with fake_process_group(world_size):
        ctx = make_context(
            0, world_size, torch.device("meta"), "fake", cfg_size=2 if strategy.cfg_split else 1
        )
        handle = strategy.apply(unet, ctx)
        try:
            handle.reset()
            for step in range(steps):
                macs = None
                if tracer is not None and step == steps - 1:
                    with tracer.trace(unet):
                        unet(**inputs)
                    macs = sum(o.macs for o in tracer.ops)
                elif count_macs and step == steps - 1:  # the counter is slow on meta: count one steady step
                    macs = _count_macs(unet, inputs)
                else:
                    with torch.no_grad():
                        unet(**inputs)
                per_step.append({"step": step, "macs": macs})
            recs = ctx.ledger.per_step()
            for rec in per_step:
                rec["collectives"] = ctx.ledger.collectives(rec["step"])
            steady = _steady_steps(strategy, steps)
            report = handle.param_report() if hasattr(handle, "param_report") else None
        finally:
            handle.remove()
    for rec in per_step:
        rec["by_kind"] = {k: dict(v) for k, v in recs.get(rec["step"], {}).items()}
        rec["bytes"] = sum(v["bytes"] for v in rec["by_kind"].values())
    return per_step, steady, report


def dryrun(
    model: str,
    height: int,
    width: int,
    world_size: int,
    strategy: str,
    cfg_split: bool = False,
    steps: int | None = None,
    dtype: str = "float16",
    batch: int = 2,
    count_macs: bool = True,
    tracer: Any = None,
    **strategy_params: Any,
) -> dict[str, Any]:
    """Simulate rank 0 of ``world_size`` running ``steps`` UNet calls of ``strategy``; per-device figures.

    ``batch`` is the UNet batch before any CFG split (2: unconditional + conditional). ``steps`` defaults to the
    strategy's :meth:`~distri.parallel.strategy.Strategy.dryrun_steps` (``displaced_patch``: the synchronous
    warm-up, the first asynchronous step and a steady one; 2 otherwise). ``strategy_params`` are the strategy's
    parameters. MACs are counted on the
    last step (a steady one; every step of these strategies does the same work); ``count_macs=False`` skips the
    counter (faster; ``macs_per_step`` is then ``None``). ``tracer``: a :class:`distri.predict.costs.CostTracer`
    that records the last step's operators (the cost model's per-layer costs).

    Returns ``macs_per_step``/``gmacs_per_step``, ``bytes_per_step``/``by_kind`` averaged over the steady-state
    steps, ``warmup_bytes_per_step`` over the others (if any), ``per_step`` records and ``strategy_report``
    (rank 0's ``param_report()`` where the strategy has one, e.g. ``tensor``: its shard of the weights and heads).
    """
    torch_dt = torch_dtype(dtype)
    if cfg_split and batch % 2:
        raise ValueError(f"cfg_split needs an even batch (unconditional + conditional), got {batch}")
    config = unet_config(model)
    spec = strategy_from_config({"name": strategy, "cfg_split": cfg_split, **strategy_params})
    steps = spec.dryrun_steps() if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    unet = build_meta_unet(config, torch_dt)
    check_world_size(unet, height, width, world_size, strategy, cfg_split, **strategy_params)
    inputs = meta_inputs(config, batch, height, width, torch_dt)
    per_step, steady, report = _simulate(unet, inputs, world_size, spec, steps, count_macs, tracer)
    warm = [s for s in range(steps) if s not in steady]
    nbytes, by_kind = _average(per_step, steady)
    macs = per_step[-1]["macs"]
    return {
        "model": model,
        "height": height,
        "width": width,
        "world_size": world_size,
        "strategy": strategy,
        "strategy_params": strategy_params,
        "cfg_split": cfg_split,
        "batch": batch,
        "dtype": dtype,
        "steps": steps,
        "steady_steps": steady,
        "macs_per_step": macs,
        "gmacs_per_step": None if macs is None else macs / 1e9,
        "bytes_per_step": nbytes,
        "gb_per_step": nbytes / 1e9,
        "by_kind": by_kind,
        "warmup_bytes_per_step": _average(per_step, warm)[0] if warm else None,
        "per_step": per_step,
        "strategy_report": report,
        "convention": (
            "per device (rank 0), per UNet call, steady state; bytes: all-gather s*(n-1)*esize, "
            "all-reduce s*(n-1)/n*2*esize; MACs = FlopCounterMode FLOPs / 2"
        ),
    }


def dryrun_all(
    model: str, height: int, width: int, world_size: int, strategies: list[str] | None = None, **kw: Any
) -> dict[str, dict[str, Any] | str]:
    """:func:`dryrun` for several strategies; one that cannot run maps to the reason (a string).

    Each strategy gets the parameters it has (``mode`` goes to ``displaced_patch`` only).
    """
    out: dict[str, dict[str, Any] | str] = {}
    common = {k: v for k, v in kw.items() if k in ("cfg_split", "steps", "dtype", "batch", "count_macs")}
    known = builtin()
    for s in strategies or list(known):
        accepted = {f.name for f in dataclasses.fields(known[s])}
        params = {k: v for k, v in kw.items() if k in accepted and k not in common}
        try:
            out[s] = dryrun(model, height, width, world_size, s, **common, **params)
        except ValueError as e:
            out[s] = str(e)
    return out
