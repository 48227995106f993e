"""Dry runs: per-device compute and communication of a strategy at full scale, with no weights and no GPUs.

The real UNet is built from its public ``unet/config.json`` (``distri/models/configs``) on the **meta device**
(shapes only, no memory, no weights) and driven with meta inputs of the requested resolution. ``world_size``
ranks are simulated in this single process on torch's **fake process group**: rank 0 runs the strategy exactly
as it would on a real device, its collectives complete without moving data, and the communication ledger
counts what each of them would move. Patch strategies give every rank the same work, so rank 0's numbers are
per device. Tensor parallelism may split heads unevenly (SDXL's 10 heads over 8 ranks: 2,2,1,1,1,1,1,1); every
rank moves the same bytes, and rank 0 holds the largest blocks, so its MACs and parameters are the per-device
maximum (``strategy_report``: the strategy's own per-rank report, e.g. ``tensor``'s ``param_report()``).

* MACs per step: :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention) / 2.
  Element-wise ops, normalisations and activations are not counted (they are not in the paper's figure either).
* Bytes per step: the ledger's paper convention (all-gather of ``s`` elements per rank over ``n`` ranks =
  ``s * (n - 1) * esize``; all-reduce of ``s`` elements = ``s * (n - 1) / n * 2 * esize``), per device,
  averaged over the steady-state steps (after the displaced warm-up), by ledger kind.

Library use::

    from distri.dryrun import dryrun
    r = dryrun("sdxl", 1024, 1024, world_size=8, strategy="displaced_patch", batch=1)
    r["gmacs_per_step"], r["bytes_per_step"], r["by_kind"]

Command line (``key=value`` arguments, the key names of the Hydra config; other keys go to the strategy)::

    python -m distri.dryrun model=sdxl height=1024 width=1024 world_size=8 strategy=all
    python -m distri.dryrun model=sdxl height=3840 width=3840 world_size=8 strategy=displaced_patch batch=1
    python -m distri.dryrun model=sdxl world_size=8 strategy=displaced_patch strategy.mode=full_sync cfg_split=true
    python -m distri.dryrun table=distrifusion_table2      # ours next to the paper's Table 2

Keys: ``model`` (sdxl | sd15 | sd21 | tiny_sdxl | tiny_sd15 | path to a UNet config.json), ``height``, ``width``
(default: the model's native resolution), ``world_size`` (default 8), ``strategy`` (none | naive_patch |
displaced_patch | tensor | all; default all), ``cfg_split``, ``steps``, ``dtype`` (default float16), ``batch``
(default 2: the CFG batch), ``count_macs``, ``json=true`` (also print the results as JSON); any other key
(``mode``, ``warmup_steps``, ``split_scheme``, ``bucket_mb``, ...) goes to the strategy's ``apply``.

The DistriFusion paper's Table 2 communication amounts are ``bytes_per_step / 1e9`` with ``batch=1`` (one
latent, no CFG duplicate), 8 devices, fp16; see ``experiments/distrifusion_table2/README.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

CONFIG_DIR = Path(__file__).resolve().parent / "models" / "configs"

MODEL_CONFIGS: dict[str, str] = {"sdxl": "sdxl_unet.json", "sd15": "sd15_unet.json", "sd21": "sd21_unet.json"}
"""Full-size models: their diffusers ``unet/config.json`` in :data:`CONFIG_DIR`."""

TINY_MODELS: tuple[str, ...] = ("tiny_sdxl", "tiny_sd15")

STRATEGIES: dict[str, str] = {
    "none": "distri.parallel.base:apply_none",
    "naive_patch": "distri.parallel.naive_patch:apply",
    "displaced_patch": "distri.parallel.displaced_patch:apply",
    "tensor": "distri.parallel.tensor:apply",
}
PATCH_STRATEGIES = ("naive_patch", "displaced_patch")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TEXT_TOKENS = 77


# -- the model on the meta device -------------------------------------------------------------------------
def unet_config(model: str) -> dict[str, Any]:
    """The diffusers UNet config dict of ``model`` (a full-size name, a tiny name, or a path to a JSON file)."""
    if model in MODEL_CONFIGS:
        return json.loads((CONFIG_DIR / MODEL_CONFIGS[model]).read_text())
    if model in TINY_MODELS:
        from distri.models.tiny import tiny_spec

        return tiny_spec(model)["unet"]
    if model.endswith(".json") and Path(model).is_file():
        return json.loads(Path(model).read_text())
    raise ValueError(
        f"unknown model {model!r}; valid: {', '.join([*MODEL_CONFIGS, *TINY_MODELS])} or a path to a UNet config.json"
    )


def build_meta_unet(config: dict[str, Any], dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """A ``UNet2DConditionModel`` from ``config`` with every parameter on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # from_config().to(fp16) warns about fp32 modules; there are none here
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        unet = unet.to(dtype).eval()
    finally:
        dlogging.set_verbosity(verbosity)
    return unet


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
def _downsamples(config: dict[str, Any]) -> int:
    return len(config["block_out_channels"]) - 1


def _patch_dims(strategy: str, params: dict[str, Any]) -> tuple[int, ...]:
    """Latent dims (2: height, 3: width) a patch strategy splits."""
    scheme = params.get("split_scheme", "row") if strategy == "naive_patch" else "row"
    return {"row": (2,), "col": (3,)}.get(scheme, (2, 3))


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

    Patch strategies: the patch degree ``n`` (``world_size / 2`` with ``cfg_split``) must cut the latent into
    bands of whole, even rows at every UNet level (:func:`distri.parallel.geometry.patch_world_sizes`).
    Tensor parallelism: splits may be uneven, but every rank needs at least one attention head, GroupNorm
    group, FFN feature and conv input channel of every sharded layer, so ``n <=`` the smallest such count
    (:func:`distri.parallel.tensor.valid_world_sizes`; SDXL: 10 heads, ``n <= 10``). ``none`` accepts any size.
    """
    cfg = 2 if cfg_split else 1
    if strategy in PATCH_STRATEGIES:
        from distri.parallel.geometry import patch_world_sizes

        down = _downsamples(config if isinstance(config, dict) else config.config)
        dims = _patch_dims(strategy, strategy_params)
        sizes = [patch_world_sizes((height, width)[d - 2] // 8, down, limit) for d in dims]
        ok = [n for n in sizes[0] if all(n in s for s in sizes)]
    elif strategy == "tensor":
        from distri.parallel.tensor import valid_world_sizes as tensor_sizes

        ok = tensor_sizes(config, limit)
    elif strategy == "none":
        ok = list(range(1, limit + 1))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return [n * cfg for n in ok if n * cfg <= limit]


def _tensor_sizes(config: dict[str, Any] | torch.nn.Module) -> str:
    """The sizes tensor parallelism splits, for the error message."""
    from diffusers.models.attention_processor import Attention

    unet = config if isinstance(config, torch.nn.Module) else build_meta_unet(config)
    heads = sorted({m.heads for m in unet.modules() if isinstance(m, Attention)})
    groups = sorted({m.num_groups for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)})
    return (
        f"attention heads {heads}, GroupNorm groups {groups}, channels {list(unet.config.block_out_channels)}"
    )


def check_world_size(
    config: dict[str, Any] | torch.nn.Module,
    height: int,
    width: int,
    world_size: int,
    strategy: str,
    cfg_split: bool = False,
    **strategy_params: Any,
) -> None:
    """Raise ``ValueError`` naming the valid world sizes when ``world_size`` does not fit."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if cfg_split and world_size % 2:
        raise ValueError(f"cfg_split needs an even world_size (2 CFG groups), got {world_size}")
    limit = max(64, world_size)
    ok = valid_world_sizes(config, height, width, strategy, cfg_split, limit, **strategy_params)
    if world_size not in ok:
        if strategy in PATCH_STRATEGIES:
            down = _downsamples(config if isinstance(config, dict) else config.config)
            why = (
                f"the latent of {height // 8}x{width // 8} must split into bands of whole, even rows at all "
                f"{down + 1} UNet levels: latent side % (patches * {2**down}) == 0"
            )
        elif strategy == "tensor":
            why = (
                "every rank needs at least one attention head and GroupNorm group of every layer: the degree "
                f"must not exceed the smallest of {_tensor_sizes(config)}"
            )
        else:
            why = "unknown reason"
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
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _load_strategy(strategy: str):
    target = STRATEGIES.get(strategy)
    if target is None:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)} or all")
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


# -- the dry run -------------------------------------------------------------------------------------------
def _count_macs(unet: torch.nn.Module, inputs: dict[str, Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(**inputs)
    return counter.get_total_flops() // 2


def _steady_steps(handle: Any, steps: int) -> list[int]:
    """Steps past the synchronous warm-up of the displaced strategy (all steps for the others)."""
    warm = getattr(handle, "warmup_steps", None)
    if warm is None or getattr(handle, "name", "") != "displaced_patch":
        return list(range(steps))
    return [s for s in range(steps) if s > warm] or list(range(steps))


def _default_steps(strategy: str, apply: Any, params: dict[str, Any]) -> int:
    """``warmup_steps + 3`` for the displaced strategy (warm-up, first async step, a steady one), else 2."""
    if strategy != "displaced_patch":
        return 2
    warm = params.get("warmup_steps", inspect.signature(apply).parameters["warmup_steps"].default)
    return int(warm) + 3


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
    apply: Any,
    cfg_split: bool,
    steps: int,
    count_macs: bool,
    params: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[int], dict[str, Any] | None]:
    """Rank 0 of ``world_size`` on the fake group: ``steps`` UNet calls; per-step records, the steady steps and
    the handle's ``param_report()`` (``None`` for strategies without one)."""
    from distri.parallel.context import make_context

    per_step: list[dict[str, Any]] = []
    with fake_process_group(world_size):
        ctx = make_context(0, world_size, torch.device("meta"), "fake", cfg_size=2 if cfg_split else 1)
        handle = apply(unet, ctx, cfg_split=cfg_split, **params)
        try:
            handle.reset()
            for step in range(steps):
                macs = None
                if count_macs and step == steps - 1:  # the counter is slow on meta: count one steady step
                    macs = _count_macs(unet, inputs)
                else:
                    with torch.no_grad():
                        unet(**inputs)
                per_step.append({"step": step, "macs": macs})
            recs = ctx.ledger.per_step()
            steady = _steady_steps(handle, steps)
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
    **strategy_params: Any,
) -> dict[str, Any]:
    """Simulate rank 0 of ``world_size`` running ``steps`` UNet calls of ``strategy``; per-device figures.

    ``batch`` is the UNet batch before any CFG split (2: unconditional + conditional). ``steps`` defaults to
    ``warmup_steps + 3`` for ``displaced_patch`` (the synchronous warm-up, the first asynchronous step, and a
    steady one) and 2 otherwise. ``strategy_params`` go to the strategy's ``apply``. MACs are counted on the
    last step (a steady one; every step of these strategies does the same work); ``count_macs=False`` skips the
    counter (faster; ``macs_per_step`` is then ``None``).

    Returns ``macs_per_step``/``gmacs_per_step``, ``bytes_per_step``/``by_kind`` averaged over the steady-state
    steps, ``warmup_bytes_per_step`` over the others (if any), ``per_step`` records and ``strategy_report``
    (rank 0's ``param_report()`` where the strategy has one, e.g. ``tensor``: its shard of the weights and heads).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if cfg_split and batch % 2:
        raise ValueError(f"cfg_split needs an even batch (unconditional + conditional), got {batch}")
    config = unet_config(model)
    apply = _load_strategy(strategy)
    accepted = set(inspect.signature(apply).parameters) - {"unet", "ctx", "cfg_split"}
    if set(strategy_params) - accepted:
        unknown = ", ".join(sorted(set(strategy_params) - accepted))
        raise ValueError(
            f"strategy {strategy} takes no parameter {unknown}; it takes: {', '.join(sorted(accepted))}"
        )
    steps = _default_steps(strategy, apply, strategy_params) if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    unet = build_meta_unet(config, DTYPES[dtype])
    check_world_size(unet, height, width, world_size, strategy, cfg_split, **strategy_params)
    inputs = meta_inputs(config, batch, height, width, DTYPES[dtype])
    per_step, steady, report = _simulate(
        unet, inputs, world_size, apply, cfg_split, steps, count_macs, strategy_params
    )
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

    Each strategy gets the keyword arguments its ``apply`` accepts (``mode`` goes to ``displaced_patch`` only).
    """
    out: dict[str, dict[str, Any] | str] = {}
    common = {k: v for k, v in kw.items() if k in ("cfg_split", "steps", "dtype", "batch", "count_macs")}
    for s in strategies or list(STRATEGIES):
        try:
            accepted = inspect.signature(_load_strategy(s)).parameters
        except (ImportError, AttributeError):
            out[s] = "not available in this checkout"
            continue
        params = {k: v for k, v in kw.items() if k in accepted and k not in common}
        try:
            out[s] = dryrun(model, height, width, world_size, s, **common, **params)
        except ValueError as e:
            out[s] = str(e)
    return out


# -- printing ----------------------------------------------------------------------------------------------
def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    return f"{b / 1e9:.4g} G" if b >= 1e8 else f"{b / 1e6:.4g} M"


def _table_rows(kinds: list[str]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        (
            "GMACs / step / device",
            lambda r: "-" if r["gmacs_per_step"] is None else f"{r['gmacs_per_step']:,.1f}",
        ),
        ("comm bytes / step / device", lambda r: _fmt_bytes(r["bytes_per_step"])),
    ]
    rows += [(f"  {k}", lambda r, k=k: _fmt_bytes(r["by_kind"].get(k, {}).get("bytes"))) for k in kinds]
    rows.append(("collectives / step", lambda r: f"{sum(v['calls'] for v in r['by_kind'].values()):g}"))
    rows.append(("warm-up bytes / step", lambda r: _fmt_bytes(r["warmup_bytes_per_step"])))
    return rows


def format_table(results: dict[str, dict[str, Any] | str]) -> str:
    """A plain-text table, one column per strategy, of the per-device figures of :func:`dryrun` results.

    A strategy whose value is a string (why it could not run) shows ``n/a`` and its reason below the table.
    """
    cols = list(results)
    kinds = sorted({k for r in results.values() if isinstance(r, dict) for k in r["by_kind"]})
    rows = [
        (name, [f(results[c]) if isinstance(results[c], dict) else "n/a" for c in cols])
        for name, f in _table_rows(kinds)
    ]
    w0 = max(len(name) for name, _ in rows)
    ws = [max(len(c), *(len(vals[i]) for _, vals in rows)) for i, c in enumerate(cols)]
    lines = [" | ".join([" " * w0, *(c.rjust(w) for c, w in zip(cols, ws))])]
    lines.append("-+-".join(["-" * w0, *("-" * w for w in ws)]))
    lines += [" | ".join([name.ljust(w0), *(v.rjust(w) for v, w in zip(vals, ws))]) for name, vals in rows]
    first = next((r for r in results.values() if isinstance(r, dict)), None)
    if first is not None:
        head = f"{first['model']} {first['height']}x{first['width']}, world_size={first['world_size']}, "
        head += (
            f"batch={first['batch']}, cfg_split={first['cfg_split']}, {first['dtype']}; {first['convention']}"
        )
        lines.insert(0, head)
    return "\n".join(lines + [f"{c}: {r}" for c, r in results.items() if isinstance(r, str)])


# -- the paper's Table 2 -----------------------------------------------------------------------------------
PAPER_TABLE2: dict[int, dict[str, float]] = {
    1024: {"patch": 0.42, "tensor": 1.33},
    2048: {"patch": 1.48, "tensor": 5.33},
    3840: {"patch": 5.38, "tensor": 18.7},
}
"""DistriFusion Table 2: communication amount ("G") per device on 8 A100s, SDXL, for patch parallelism (Sync. PP
and DistriFusion alike) and tensor parallelism (Sync. TP)."""


def table2(world_size: int = 8, resolutions: tuple[int, ...] = tuple(PAPER_TABLE2), **kw: Any) -> list[dict]:
    """Our per-device communication per step next to the paper's Table 2 (SDXL, batch 1 = one latent, fp16).

    Patch: ``displaced_patch`` over ``world_size`` ranks (its steady state moves what ``full_sync`` moves).
    Tensor: ``tensor`` over ``world_size`` ranks (SDXL's 10 and 20 heads split unevenly over 8: 2,2,1,1,1,1,1,1
    and 3,3,3,3,2,2,2,2; the all-reduced outputs are full-size either way).
    """
    rows = []
    for res in resolutions:
        patch = dryrun("sdxl", res, res, world_size, "displaced_patch", batch=1, count_macs=False, **kw)
        tp = dryrun("sdxl", res, res, world_size, "tensor", batch=1, steps=1, count_macs=False)
        paper = PAPER_TABLE2.get(res, {})
        rows.append(
            {
                "resolution": res,
                "world_size": world_size,
                "patch_bytes": patch["bytes_per_step"],
                "patch_by_kind": {k: v["bytes"] for k, v in patch["by_kind"].items()},
                "tensor_bytes": tp["bytes_per_step"],
                "paper_patch_g": paper.get("patch"),
                "paper_tensor_g": paper.get("tensor"),
            }
        )
    return rows


def format_table2(rows: list[dict]) -> str:
    """The rows of :func:`table2` as text: ours (G = 1e9 bytes) next to the paper's."""
    n = rows[0]["world_size"] if rows else 8
    lines = [
        f"SDXL, {n} devices, per device per step, batch 1 (one latent), fp16, G = 1e9 bytes"
        + ("" if n == 8 else " (the paper's figures are for 8 devices)"),
        "resolution | patch (ours) | patch (paper) | tensor (ours) | tensor (paper) | patch: attn_kv + conv_halo + gn",
    ]
    for r in rows:
        k = r["patch_by_kind"]
        parts = " + ".join(f"{k.get(x, 0) / 1e9:.4f}" for x in ("attn_kv", "conv_halo", "gn_stats"))
        lines.append(
            f"{r['resolution']}^2 | {r['patch_bytes'] / 1e9:.3f} G | {r['paper_patch_g']} G | "
            f"{r['tensor_bytes'] / 1e9:.3f} G | {r['paper_tensor_g']} G | {parts}"
        )
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------
_INT_KEYS = ("height", "width", "world_size", "steps", "batch", "warmup_steps")


def _value(key: str, text: str) -> Any:
    if key in _INT_KEYS:
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(text)
    return text


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` words into a dict of typed values; Hydra-style ``+`` and ``strategy.`` prefixes are dropped
    (``strategy.mode=stale_gn`` is the strategy parameter ``mode``)."""
    args: dict[str, Any] = {}
    for word in argv:
        key, sep, text = word.partition("=")
        key = key.lstrip("+").removeprefix("strategy.")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        args[key] = _value(key, text)
    if not isinstance(args.get("cfg_split", False), bool):
        raise ValueError(f"cfg_split must be true or false, got {args['cfg_split']!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the table (and the JSON with ``json=true``)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
        as_json = bool(args.pop("json", False))
        if args.get("table") == "distrifusion_table2":
            print(format_table2(table2(args.get("world_size", 8))))
            return 0
        model = args.pop("model", "sdxl")
        height = args.pop("height", None)
        width = args.pop("width", None)
        if height is None or width is None:
            side = unet_config(model)["sample_size"] * 8
            height, width = height or side, width or side
        world_size = args.pop("world_size", 8)
        strategy = args.pop("strategy", "all")
        if strategy == "all":
            results = dryrun_all(model, height, width, world_size, **args)
        else:
            results = {strategy: dryrun(model, height, width, world_size, strategy, **args)}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    if as_json:
        slim = {
            k: ({f: v for f, v in r.items() if f != "per_step"} if isinstance(r, dict) else r)
            for k, r in results.items()
        }
        print(json.dumps(slim, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
