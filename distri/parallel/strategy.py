"""What a strategy declares, and the registry of strategies.

A strategy is one module holding one dataclass, a subclass of :class:`Strategy`. distri's own strategy modules
import no torch (:meth:`Strategy.apply` imports the strategy's handle, what it does to the denoiser, when called),
so validation and the cost model read strategies without loading torch or diffusers. The dataclass fields are the
strategy's parameters (types, choices as ``Literal``, defaults, a docstring under each): the single source of
Hydra's schema for its config group (:func:`register_schemas`), of the defaults its YAML composes to, and of what
``apply`` receives. Its methods say everything the rest of distri asks about a strategy:

* :meth:`Strategy.apply` ``(denoiser, ctx) -> handle`` (a :class:`distri.parallel.base.StrategyHandle`);
* :meth:`Strategy.degrees` / :meth:`Strategy.misfit`: which parallel degrees fit a model and resolution, and
  the message when one does not (checked before any worker starts, and by the dry run);
* :meth:`Strategy.problems`: other checks of the parameters against the job (e.g. steps);
* :meth:`Strategy.sync_steps`, :meth:`Strategy.dryrun_steps`, :meth:`Strategy.label`.

A strategy's config (its Hydra group's YAML) holds ``_target_`` (the dotted path of the dataclass), ``name``
and the parameters. :func:`strategy_from_config` turns that dict into the dataclass, refusing a key that is not
a parameter. :data:`BUILTIN` lists the modules of distri's own strategies: the only list of them. A strategy
defined elsewhere (a researcher's own package) is found through its ``_target_`` alone.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from torch import nn

    from distri.parallel.base import StrategyHandle
    from distri.parallel.context import ParallelContext

BUILTIN = (
    "distri.parallel.none",
    "distri.parallel.naive_patch",
    "distri.parallel.displaced_patch",
    "distri.parallel.tensor",
)
"""Modules of distri's strategies; each defines ``STRATEGY``, its :class:`Strategy` subclass."""

RESERVED = ("_target_", "name")
"""Keys of a strategy config that are not parameters."""


@dataclass(frozen=True)
class Fit:
    """What validation knows about a job before anything is loaded."""

    world_size: int
    steps: int
    size: tuple[int, int]  # height, width in pixels
    latent: tuple[int, int] | None  # latent height, width; None when the pixel size is itself invalid
    unet: Any = None  # the denoiser's config dict (or a built denoiser); None when it cannot be found here
    downsamples: int = 0  # 2x down-samplings of the denoiser (distri.models.adapters)
    compare_to_original: bool = False


@dataclass
class Strategy:
    """Base of every strategy's parameter dataclass (see the module docstring)."""

    name: ClassVar[str]
    identity: ClassVar[bool] = False  # True: the stock model alone (nothing to compare at world_size 1)

    cfg_split: bool = False
    """Split the classifier-free-guidance batch over two groups of ranks (world_size = 2 x parallel degree)."""

    def __post_init__(self) -> None:
        bad = self.invalid()
        if bad:
            raise ValueError("; ".join(bad))

    # -- what each strategy implements or overrides ---------------------------------------------------------
    def invalid(self) -> list[str]:
        """What is wrong with the parameters themselves (checked on construction): here, unknown choices."""
        return [
            f"unknown strategy.{key} {getattr(self, key)!r}; valid: {', '.join(map(str, valid))}"
            for key, valid in choice_fields(type(self)).items()
            if getattr(self, key) not in valid
        ]

    def apply(self, denoiser: nn.Module, ctx: ParallelContext) -> StrategyHandle:
        """Wrap ``denoiser`` for the ranks of ``ctx``; ``handle.remove()`` restores it."""
        raise NotImplementedError

    def degrees(self, fit: Fit, limit: int = 64) -> list[int]:
        """Parallel degrees (ranks per CFG group) ``<= limit`` that can split this model at this size."""
        return list(range(1, limit + 1))

    def misfit(self, fit: Fit, degree: int) -> str | None:
        """Why ``degree`` ranks per CFG group cannot run this model at this size (None if they can).

        A misfit is not a mistake: the job is well formed but infeasible, and a sweep records it as
        ``skipped`` with this message (:func:`check`); mistakes in the parameters go to :meth:`problems`."""
        if degree in self.degrees(fit, max(64, degree)):
            return None
        return f"strategy={self.name} cannot split this model over {degree} ranks"

    def problems(self, fit: Fit) -> list[str]:
        """Mistakes in the parameters against the job beyond their types and choices (the job fails)."""
        return []

    def sync_steps(self, steps: int) -> int | None:
        """Leading steps of a call run synchronously (the warm-up); None for a strategy without phases."""
        return None

    def dryrun_steps(self) -> int:
        """UNet calls the dry run simulates by default: enough to reach the steady state."""
        return 2

    def exact(self) -> bool:
        """Whether the ranks together compute the single device's images (up to floating-point rounding)."""
        return False

    def label(self) -> str:
        """The strategy in a table: its name and the values of its choice parameters."""
        choices = [str(getattr(self, f)) for f in choice_fields(type(self))]
        return "/".join([self.name, *choices]) + (" +cfg_split" if self.cfg_split else "")

    # -- config --------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choice_fields(cls: type[Strategy]) -> dict[str, tuple[Any, ...]]:
    """The ``Literal`` parameters of ``cls`` and their valid values."""
    hints = get_type_hints(cls)
    return {
        f.name: get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if get_origin(hints[f.name]) is Literal
    }


def target_of(cls: type[Strategy]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def builtin() -> dict[str, type[Strategy]]:
    """distri's own strategies by name, from :data:`BUILTIN`."""
    classes = [importlib.import_module(m).STRATEGY for m in BUILTIN]
    return {c.name: c for c in classes}


def _locate(target: str) -> Any:
    mod, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"strategy _target_ {target!r} cannot be imported: {e}") from e


def strategy_class(cfg: Mapping[str, Any]) -> type[Strategy]:
    """The class of a strategy config: its ``_target_``, else a built-in strategy of that ``name``."""
    name, target = cfg.get("name"), cfg.get("_target_")
    if target:
        cls = _locate(target)
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise ValueError(f"strategy _target_ {target!r} is not a distri.parallel.strategy.Strategy")
    else:
        known = builtin()
        if name not in known:
            raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(known)}")
        cls = known[name]
    if name is not None and name != cls.name:
        raise ValueError(f"strategy name {name!r} does not match its _target_ {target} (named {cls.name!r})")
    return cls


def strategy_from_config(cfg: Mapping[str, Any]) -> Strategy:
    """The strategy dataclass of a resolved strategy config; a key that is not a parameter is refused."""
    cls = strategy_class(cfg)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg) - set(valid) - set(RESERVED))
    if unknown:
        raise ValueError(
            f"strategy {cls.name} has no parameter {', '.join(unknown)}; its parameters: {', '.join(valid)}"
        )
    return cls(**{k: v for k, v in cfg.items() if k in valid})


def schema(cls: type[Strategy]) -> type:
    """Hydra's schema of ``cls``: its fields with ``Literal`` as ``str`` (choices are checked by validation),
    plus ``_target_`` and ``name``."""
    hints = get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=target_of(cls))),
        ("name", str, dataclasses.field(default=cls.name)),
    ]
    for f in dataclasses.fields(cls):
        typ = str if get_origin(hints[f.name]) is Literal else hints[f.name]
        fields.append((f.name, typ, dataclasses.field(default=f.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def register_schemas(store: Any) -> None:
    """Store ``<name>_schema`` in Hydra's ConfigStore ``store`` (group ``strategy``) for every built-in strategy."""
    for name, cls in builtin().items():
        store.store(group="strategy", name=f"{name}_schema", node=schema(cls))


class Checks(NamedTuple):
    """What :func:`check` found: ``problems`` are mistakes in the configuration (a typo, a bad value: the job
    fails); ``misfits`` are combinations that are well formed but cannot run this model at this size (a world
    size that does not divide the latent, more tensor-parallel ranks than heads: a sweep records the job as
    skipped). Misfits come from :meth:`Strategy.misfit` (each strategy declares its own) and from the base
    parameter ``cfg_split`` (an odd world size cannot hold two CFG groups)."""

    problems: list[str]
    misfits: list[str]


def check(cfg: Mapping[str, Any], fit: Fit) -> Checks:
    """Every problem and misfit of the strategy config ``cfg`` for the job ``fit``, each with what to change."""
    try:
        strategy = strategy_from_config(cfg)
    except ValueError as e:
        return Checks([str(e)], [])
    problems = strategy.problems(fit)
    if strategy.cfg_split and fit.world_size % 2:
        return Checks(
            problems, [f"cfg_split needs an even world_size (2 x parallel degree), got {fit.world_size}"]
        )
    misfit = strategy.misfit(fit, fit.world_size // (2 if strategy.cfg_split else 1))
    return Checks(problems, [misfit] if misfit else [])
