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
  averaged over the steady-state steps (after the strategy's synchronous warm-up), by ledger kind; printed in
  decimal units (:func:`distri.units.format_bytes`).

Library use::

    from distri.dryrun import dryrun
    r = dryrun("sdxl", 1024, 1024, world_size=8, strategy="displaced_patch", batch=1)
    r["gmacs_per_step"], r["bytes_per_step"], r["by_kind"]

Command line (``key=value`` arguments, the key names of the Hydra config; other keys go to the strategy)::

    python -m distri.dryrun model=sdxl height=1024 width=1024 world_size=8 strategy=all
    python -m distri.dryrun model=sdxl height=3840 width=3840 world_size=8 strategy=displaced_patch batch=1
    python -m distri.dryrun model=sdxl world_size=8 strategy=displaced_patch strategy.mode=full_sync cfg_split=true

Keys: ``model`` (sdxl | sd15 | sd21 | tiny_sdxl | tiny_sd15 | path to a UNet config.json), ``height``, ``width``
(default: the model's native resolution), ``world_size`` (default 8), ``strategy`` (a registered strategy's
name, see :mod:`distri.parallel.strategy`, or all; default all), ``cfg_split``, ``steps``, ``dtype`` (default
float16), ``batch`` (default 2: the CFG batch), ``count_macs``, ``json=true`` (also print the results as JSON); any
other key (``mode``, ``warmup_steps``, ``split_scheme``, ``bucket_mb``, ...) is a parameter of the strategy.

Modules: :mod:`.simulate` (the model on the meta device, the fake process group, the simulated steps),
:mod:`.report` (the tables, the paper's Table 2), :mod:`.cli` (the command line).

The DistriFusion paper's Table 2 communication amounts are ``bytes_per_step / 1e9`` with ``batch=1`` (one
latent, no CFG duplicate), 8 devices, fp16; see ``experiments/distrifusion_table2/README.md``.
"""

from __future__ import annotations

from distri.dryrun.cli import main, parse_args
from distri.dryrun.report import format_table
from distri.dryrun.simulate import (
    TEXT_TOKENS,
    build_meta_unet,
    check_world_size,
    dryrun,
    dryrun_all,
    fake_process_group,
    meta_inputs,
    unet_config,
    valid_world_sizes,
)

__all__ = [
    "TEXT_TOKENS", "build_meta_unet", "check_world_size", "dryrun", "dryrun_all",
    "fake_process_group", "format_table", "main", "meta_inputs", "parse_args",
    "unet_config", "valid_world_sizes",
]  # fmt: skip
