"""Typed config schemas (registered in Hydra's ConfigStore) and validation with actionable messages.

The schemas make a wrong key or a wrong type fail when Hydra composes the config. :func:`validate` then checks
what a type cannot express (known names, divisibility, step counts, ...) on the plain resolved dict, before
any model is loaded or any worker started. It collects every problem and raises one :class:`ConfigError`.
Nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

STRATEGIES = ("none", "naive_patch", "displaced_patch", "tensor")
SAMPLERS = ("ddim", "euler", "dpmpp")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16", "float64")
PATCH_SPLITS = ("row", "col", "alternate")
DISPLACED_MODES = ("corrected_async_gn", "stale_gn", "sync_gn", "separate_gn", "full_sync", "no_sync")
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """One or more problems with a config; the message lists each with what to change."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = MISSING  # sdxl | sd: which diffusers pipeline class
    source: str = "hub"  # tiny: built locally from configs; hub: HF hub id or local folder
    id: str = ""
    revision: str | None = None
    variant: str | None = None
    cache_dir: str | None = None
    resolution: int = 1024  # default height and width
    vae_scale_factor: int = 8
    unet_downsamples: int = 2  # 2x down-samplings in the UNet encoder (SDXL: 2, SD 1.x/2.x: 3)


@dataclass
class StrategyConfig:
    _target_: str = MISSING
    name: str = MISSING
    cfg_split: bool = False


@dataclass
class NoneStrategyConfig(StrategyConfig):
    _target_: str = "distri.parallel.base.apply_none"
    name: str = "none"


@dataclass
class NaivePatchConfig(StrategyConfig):
    _target_: str = "distri.parallel.naive_patch.apply"
    name: str = "naive_patch"
    split_scheme: str = "row"


@dataclass
class DisplacedPatchConfig(StrategyConfig):
    _target_: str = "distri.parallel.displaced_patch.apply"
    name: str = "displaced_patch"
    mode: str = "corrected_async_gn"
    warmup_steps: int = 4
    bucket_mb: float = 16.0


@dataclass
class TensorConfig(StrategyConfig):
    _target_: str = "distri.parallel.tensor.apply"
    name: str = "tensor"
    free_full: bool = False  # drop the unsharded layers (needs metrics.compare_to_original=false)


@dataclass
class SamplerConfig:
    name: str = "ddim"
    num_inference_steps: int = 50
    guidance_scale: float = 5.0


@dataclass
class PromptsConfig:
    name: str = "builtin"
    prompts: list[str] = field(default_factory=list)  # builtin: override the built-in list
    path: str | None = None  # coco: captions file (captions_val2014.json, .jsonl or .txt)
    limit: int | None = None


@dataclass
class MetricsConfig:
    compare_to_original: bool = True  # also run the single-device pipeline and compare images and latency


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: str = "offline"
    project: str = "distri"
    entity: str | None = None
    group: str | None = None  # default: the sweep folder's name
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # default: the job's output folder
    job_type: str | None = None


@dataclass
class RunnerConfig:
    warmup_runs: int = 1
    timed_runs: int = 3
    trim: float = 0.2  # fraction of timed runs dropped (half fastest, half slowest) for the trimmed mean
    save_images: bool = True
    cpu_threads_per_rank: int | None = None  # default: max(1, cores // world_size)
    timeout_s: float = 1800.0  # process-group timeout


@dataclass
class Config:
    model: ModelConfig = MISSING
    strategy: Any = MISSING
    sampler: SamplerConfig = MISSING
    prompts: PromptsConfig = MISSING
    metrics: MetricsConfig = MISSING
    logger: LoggerConfig = MISSING
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    world_size: int = 2
    height: int = MISSING
    width: int = MISSING
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"


def register_configs() -> None:
    """Register the schemas; config files extend them through their defaults lists."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="strategy", name="none_schema", node=NoneStrategyConfig)
    cs.store(group="strategy", name="naive_patch_schema", node=NaivePatchConfig)
    cs.store(group="strategy", name="displaced_patch_schema", node=DisplacedPatchConfig)
    cs.store(group="strategy", name="tensor_schema", node=TensorConfig)
    cs.store(group="sampler", name="sampler_schema", node=SamplerConfig)
    cs.store(group="prompts", name="prompts_schema", node=PromptsConfig)
    cs.store(group="metrics", name="metrics_schema", node=MetricsConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def strategy_params(strategy: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a strategy's ``apply`` (everything but ``_target_`` and ``name``)."""
    return {k: v for k, v in strategy.items() if k not in ("_target_", "name")}


def cfg_size(cfg: dict[str, Any]) -> int:
    return 2 if cfg["strategy"].get("cfg_split") else 1


def _choice(problems: list[str], what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        problems.append(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _latent_sizes(cfg: dict[str, Any], problems: list[str]) -> tuple[int, int] | None:
    m = cfg["model"]
    f, down = m["vae_scale_factor"], m["unet_downsamples"]
    out = []
    for key in ("height", "width"):
        v = cfg[key]
        if v <= 0 or v % f:
            lo, hi = max(f, v // f * f), (v // f + 1) * f
            problems.append(
                f"{key}={v} must be a positive multiple of the VAE factor {f} (e.g. {lo} or {hi})"
            )
            return None
        lat = v // f
        if lat % 2**down:
            step = f * 2**down
            problems.append(
                f"{key}={v} gives a latent of {lat}, which the UNet's {down} down-samplings cannot halve "
                f"evenly; use a multiple of {step} (e.g. {max(step, v // step * step)})"
            )
            return None
        out.append(lat)
    return out[0], out[1]


def _check_parallel(cfg: dict[str, Any], latent: tuple[int, int] | None, problems: list[str]) -> None:
    from distri.parallel.geometry import patch_world_sizes

    s, n = cfg["strategy"], cfg["world_size"]
    name, split = s["name"], bool(s.get("cfg_split"))
    if n < 1:
        problems.append(f"world_size must be >= 1, got {n}")
        return
    if split and n % 2:
        problems.append(f"cfg_split needs an even world_size (2 x parallel degree), got {n}")
        return
    if split and cfg["sampler"]["guidance_scale"] <= 1:
        problems.append("cfg_split needs classifier-free guidance: set sampler.guidance_scale > 1")
    par = n // (2 if split else 1)
    if name == "none" and par != 1:
        hint = "world_size=1, or strategy.cfg_split=true" if n == 2 else "world_size=1"
        problems.append(f"strategy=none runs the whole UNet on one rank: with world_size={n} use {hint}")
    if name in ("naive_patch", "displaced_patch") and latent is not None and par > 1:
        down = cfg["model"]["unet_downsamples"]
        dims = [("height", latent[0])]
        if name == "naive_patch" and s.get("split_scheme") in ("col", "alternate"):
            dims.append(("width", latent[1]))
        for what, lat in dims:
            ok = patch_world_sizes(lat, down)
            if par not in ok:
                mult = [k * (2 if split else 1) for k in ok]
                problems.append(
                    f"{par} patches do not divide the latent {what} {lat} at every UNet level "
                    f"({down} down-samplings: latent {what} % ({par} x {2**down}) != 0); "
                    f"world sizes that work at {cfg[what]} px: {mult}"
                )


def validate(cfg: dict[str, Any]) -> None:
    """Check a resolved config dict; raise :class:`ConfigError` listing every problem and the fix."""
    p: list[str] = []
    _choice(p, "device", cfg["device"], DEVICES)
    _choice(p, "dtype", cfg["dtype"], DTYPES)
    _choice(p, "model.family", cfg["model"]["family"], ("sdxl", "sd"))
    _choice(p, "model.source", cfg["model"]["source"], ("tiny", "hub"))
    s = cfg["strategy"]
    _choice(p, "strategy", s.get("name"), STRATEGIES)
    if s.get("name") == "naive_patch":
        _choice(p, "strategy.split_scheme", s.get("split_scheme"), PATCH_SPLITS)
    sm = cfg["sampler"]
    _choice(p, "sampler", sm["name"], SAMPLERS)
    steps = sm["num_inference_steps"]
    if steps < 1:
        p.append(f"sampler.num_inference_steps must be >= 1, got {steps}")
    if sm["guidance_scale"] < 0:
        p.append(f"sampler.guidance_scale must be >= 0, got {sm['guidance_scale']}")
    if s.get("name") == "displaced_patch":
        _choice(p, "strategy.mode", s.get("mode"), DISPLACED_MODES)
        w = s.get("warmup_steps", 0)
        if w < 0:
            p.append(f"strategy.warmup_steps must be >= 0, got {w}")
        elif w > steps:
            p.append(
                f"strategy.warmup_steps={w} is longer than the sampling ({steps} steps); "
                f"use at most {steps} (warmup_steps >= steps runs every step synchronously)"
            )
        if s.get("bucket_mb", 1) <= 0:
            p.append(f"strategy.bucket_mb must be > 0, got {s.get('bucket_mb')}")
    if s.get("free_full") and cfg["metrics"]["compare_to_original"]:
        p.append(
            "strategy.free_full=true drops the full layers, so the single-device comparison cannot run: "
            "also set metrics.compare_to_original=false"
        )
    latent = _latent_sizes(cfg, p)
    _check_parallel(cfg, latent, p)
    r = cfg["runner"]
    if r["timed_runs"] < 1:
        p.append(f"runner.timed_runs must be >= 1, got {r['timed_runs']}")
    if r["warmup_runs"] < 0:
        p.append(f"runner.warmup_runs must be >= 0, got {r['warmup_runs']}")
    if not 0 <= r["trim"] < 1:
        p.append(f"runner.trim must be in [0, 1), got {r['trim']}")
    pr = cfg["prompts"]
    _choice(p, "prompts", pr["name"], ("builtin", "coco"))
    if pr["name"] == "coco" and (not pr.get("path") or not os.path.exists(pr["path"])):
        p.append(
            f"prompts=coco needs prompts.path pointing at a COCO captions file (got {pr.get('path')!r}); "
            "e.g. annotations/captions_val2014.json from the COCO 2014 annotations archive"
        )
    if pr.get("limit") is not None and pr["limit"] < 1:
        p.append(f"prompts.limit must be >= 1 or null, got {pr['limit']}")
    lg = cfg["logger"]
    _choice(p, "logger", lg["name"], LOGGERS)
    _choice(p, "logger.mode", lg["mode"], LOGGER_MODES)
    if p:
        raise ConfigError(p)
