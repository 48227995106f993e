"""The cost model as functions: one prediction, or a table of them, for analysis code and the command line."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from distri.parallel.strategy import choice_fields, strategy_class, strategy_from_config
from distri.predict.model import Prediction, predict_costs
from distri.predict.profiles import DeviceProfile, LinkProfile, device_profile, link_profile
from distri.predict.store import PAPER_STRATEGIES, costs, lookup, setting_of


def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """``displaced_patch/full_sync`` -> ``("displaced_patch", {"mode": "full_sync"})``: a strategy's name,
    optionally followed by values of its choice parameters (each names the parameter it belongs to)."""
    name, *choices = spec.split("/")
    cls = strategy_class({"name": name})
    fields = choice_fields(cls)
    params: dict[str, Any] = {}
    for value in choices:
        owners = [k for k, valid in fields.items() if value in valid]
        if not owners:
            valid = sorted({str(v) for vs in fields.values() for v in vs})
            raise ValueError(f"strategy {name} has no choice {value!r}; valid: {', '.join(valid) or 'none'}")
        params[owners[0]] = value
    return name, params


def predict(
    model: str = "sdxl",
    height: int = 1024,
    width: int = 1024,
    world_size: int = 1,
    strategy: str = "none",
    device: str | DeviceProfile = "a100",
    link: str | LinkProfile = "nvlink",
    steps: int = 50,
    cfg_split: bool = False,
    dtype: str | None = None,
    batch: int = 2,
    **params: Any,
) -> Prediction:
    """Predicted latency of one pipeline call (see :mod:`distri.predict.model`); ``strategy`` may carry choices
    (``displaced_patch/no_sync``), ``params`` are the strategy's other parameters; ``device`` and ``link`` are
    profile names (:mod:`distri.predict.profiles`) or profiles.

    The costs come from the package data, the cache, or a dry run (:mod:`distri.predict.store`); bad input
    (unknown strategy, device or link, a world size that does not fit) raises ``ValueError`` naming it.
    """
    dev = device if isinstance(device, DeviceProfile) else device_profile(device)
    lk = link if isinstance(link, LinkProfile) else link_profile(link)
    name, choice = parse_strategy(strategy)
    params = {**choice, **params}
    spec = strategy_from_config({"name": name, "cfg_split": cfg_split, **params})
    setting = setting_of(model, height, width, world_size, name, cfg_split, dtype or dev.dtype, batch, params)
    found = lookup(setting)
    if found is None:  # packaged and cached costs were checked when they were computed
        from distri.dryrun.simulate import check_world_size, unet_config

        check_world_size(unet_config(model), height, width, world_size, name, cfg_split, **params)
        found = costs(setting)
    p = predict_costs(found, steps, spec.sync_steps(steps) or 0, dev, lk)
    p.setting["label"] = spec.label()
    p.setting["exact"] = spec.exact()
    return p


def default_strategies() -> list[str]:
    """The strategies of the paper's comparisons (:data:`distri.predict.store.PAPER_STRATEGIES`, packaged for
    SDXL), as ``name/choice`` specs."""
    return ["/".join([name, *map(str, params.values())]) for name, params in PAPER_STRATEGIES]


def predict_table(
    world_sizes: list[int], strategies: list[str], **kw: Any
) -> list[Prediction | dict[str, Any]]:
    """:func:`predict` for every world size and strategy (``none`` at world size 1 is the baseline of
    ``speedup``); a setting that does not fit is a dict ``{"setting": ..., "error": reason}``. Keywords that
    are not :func:`predict`'s own are the strategies' parameters: the baseline gets only the others."""
    own = inspect.signature(predict).parameters
    base = predict(world_size=1, strategy="none", **{k: v for k, v in kw.items() if k in own})
    base.speedup = 1.0
    rows: list[Prediction | dict[str, Any]] = [base] if 1 in world_sizes else []
    for n in world_sizes:
        for s in strategies:
            if n == 1:  # every strategy is the stock model on one device: the baseline row
                continue
            try:
                p = predict(world_size=n, strategy=s, **kw)
            except ValueError as e:
                rows.append({"setting": {"world_size": n, "strategy": s}, "error": str(e)})
                continue
            p.speedup = base.total_s / p.total_s
            rows.append(p)
    return rows


def as_dicts(rows: list[Prediction | dict[str, Any]]) -> list[dict[str, Any]]:
    return [r.to_dict() if dataclasses.is_dataclass(r) else r for r in rows]
