"""Typed config schemas (registered in Hydra's ConfigStore) and validation with actionable messages.

The schemas make a wrong key or a wrong type fail when Hydra composes the config. :func:`validate` then checks
what a type cannot express (known names, divisibility, step counts, ...) on the plain resolved dict, before
any model is loaded or any worker started. It collects every problem and raises one :class:`ConfigError`.

Strategies are not known here by name: the strategy group's schemas, parameter checks and the world sizes that
fit come from the strategies themselves (:mod:`distri.parallel.strategy`), which read the model's architecture
from its UNet config (:func:`distri.models.denoiser.find_unet_config`) without loading a weight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from distri.devices import DTYPE_NAMES

SAMPLERS = ("ddim", "euler", "dpmpp")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", *DTYPE_NAMES)
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")
RUNNER_STATISTICS = ("trimmed_mean", "median", "mean")  # keys of distri.metrics.latency.STATISTICS


class ConfigError(ValueError):
    """One or more problems with a config; the message lists each with what to change."""

    HEADING = "invalid config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{self.HEADING}:\n" + "\n".join(f"  - {p}" for p in problems))


class Infeasible(ConfigError):
    """A well-formed config that cannot run this model at this size: only misfits that the strategy itself
    declares (:class:`distri.parallel.strategy.Checks`), no mistake. A job raising it is recorded as
    ``skipped`` (not ``failed``), so a sweep over world sizes and strategies passes over the impossible cells."""

    HEADING = "cannot run this combination"


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = MISSING  # sdxl | sd: which diffusers pipeline class
    source: str = (
        "hub"  # tiny: built locally from configs; bundled: shipped in distri/models/weights; hub: HF
    )
    domain: str = (
        "open"  # open: any caption | shapes: trained on distri.data.shapes captions (shape_accuracy)
    )
    id: str = ""
    revision: str | None = None
    variant: str | None = None
    cache_dir: str | None = None
    resolution: int = 1024  # default height and width
    vae_scale_factor: int = 8
    allow_pickle: bool = False  # also load pickled (.bin/.ckpt) weights; default: safetensors only


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
    # Image quality (distri.metrics.options.MetricOptions reads and checks these):
    compute: list[str] = field(default_factory=lambda: ["psnr", "lpips", "fid", "clip_score"])
    backbones: str = "auto"  # auto | real | stand-in
    lpips_net: str = "alex"  # alex | vgg
    fid_impl: str = "clean-fid"  # clean-fid | torchmetrics
    clip_model: str = "openai/clip-vit-large-patch14"  # hub id or local folder
    gt_dir: str | None = None  # folder of real images (COCO val2014), the first N sorted paired with prompts
    batch_size: int = 16
    num_workers: int = 0
    progress: bool = True
    originals_dir: str | None = None  # cache of single-device originals; default $DISTRI_CACHE/originals


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
    timed_runs: int = 5
    trim: float = 0.4  # fraction of timed runs the trimmed mean drops (half fastest, half slowest)
    statistic: str = "trimmed_mean"  # trimmed_mean | median | mean: latency headline and speedup
    save_images: bool = True
    cpu_threads_per_rank: int = 1  # the same for every world_size, so rows of a sweep compare
    timeout_s: float = 300.0  # the longest a rank may go without progress (a step, a load) or a heartbeat
    port: int | None = None  # rendezvous port of the worker pool; None: a free one (retried on a clash)


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
    device: str = "auto"  # auto: cuda when every rank can have its own GPU, else cpu
    dtype: str = "auto"  # auto: float16 on cuda, float32 on cpu
    fault: str | None = None  # fault injection, e.g. "rank=1,at=step:2,kind=hang" (see distri.faults)
    force: bool = False  # run even when the sweep folder already holds an ok record of this job


def register_configs(cs: Any) -> None:
    """Register the schemas in ``cs``, Hydra's ``ConfigStore.instance()`` (given by the caller: the library does
    not import Hydra); config files extend them through their defaults lists."""
    from distri.parallel.strategy import register_schemas

    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    register_schemas(cs)
    cs.store(group="sampler", name="sampler_schema", node=SamplerConfig)
    cs.store(group="prompts", name="prompts_schema", node=PromptsConfig)
    cs.store(group="metrics", name="metrics_schema", node=MetricsConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def cfg_size(cfg: dict[str, Any]) -> int:
    return 2 if cfg["strategy"].get("cfg_split") else 1


def _choice(problems: list[str], what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        problems.append(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def dtype_problem(dtype: str, device: str) -> str | None:
    """The problem with running ``dtype`` on ``device`` (None if fine): float16 on the CPU is refused."""
    if dtype != "float16" or device != "cpu":
        return None
    return (
        "dtype=float16 on the CPU is refused: PyTorch runs many float16 operators on the CPU through slow, "
        "partly emulated kernels whose cost does not scale like the float32 ones, so latencies and speedups "
        "measured that way say nothing about the method (such a run reported a bogus 2x speedup). Use "
        "dtype=auto (float32 on the CPU), float32 or bfloat16, or run on CUDA (device=cuda)"
    )


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> float16 on ``cuda`` (the paper's setting), float32 on ``cpu``; float16 on ``cpu`` raises."""
    from distri.devices import DTYPE_BY_DEVICE

    name = DTYPE_BY_DEVICE[device] if dtype == "auto" else dtype
    problem = dtype_problem(name, device)
    if problem:
        raise ConfigError([problem])
    return name


def _check_dtype(cfg: dict[str, Any], problems: list[str]) -> None:
    device, dtype, reason = cfg["device"], cfg["dtype"], ""
    if dtype == "float16" and device == "auto":
        from distri.devices import auto_device

        device, reason = auto_device(cfg["world_size"])
    problem = dtype_problem(dtype, device)
    if problem:
        problems.append(f"{problem}; {reason}" if reason else problem)


def _latent_sizes(
    cfg: dict[str, Any], down: int, problems: list[str], unet: Any = None
) -> tuple[int, int] | None:
    f = cfg["model"]["vae_scale_factor"]
    out = []
    for key in ("height", "width"):
        v = cfg[key]
        if v <= 0 or v % f:
            problems.append(
                f"{key}={v} must be a positive multiple of the VAE factor {f}{_near(cfg, key, down, unet)}"
            )
            return None
        lat = v // f
        if lat % 2**down:
            problems.append(
                f"{key}={v} gives a latent of {lat}, which the UNet's {down} down-samplings cannot halve "
                f"evenly; use a multiple of {f * 2**down}{_near(cfg, key, down, unet)}"
            )
            return None
        out.append(lat)
    return out[0], out[1]


def _fit(cfg: dict[str, Any], down: int, unet: Any, latent: tuple[int, int] | None):
    from distri.parallel.strategy import Fit

    return Fit(
        world_size=cfg["world_size"],
        steps=cfg["sampler"]["num_inference_steps"],
        size=(cfg["height"], cfg["width"]),
        latent=latent,
        unet=unet,
        downsamples=down,
        compare_to_original=cfg["metrics"]["compare_to_original"],
    )


def _fits(cfg: dict[str, Any], down: int, unet: Any) -> bool:
    from distri.parallel.strategy import check

    problems: list[str] = []
    latent = _latent_sizes(cfg, down, problems)
    return not problems and not any(check(cfg["strategy"], _fit(cfg, down, unet, latent)))


def _near(cfg: dict[str, Any], key: str, down: int, unet: Any) -> str:
    """`` (e.g. a or b)``: the nearest sizes below and above that work with the whole config (strategy,
    world size, the other side), or nothing when the sizes are not what is wrong."""
    if unet is None:
        return ""
    f, v = cfg["model"]["vae_scale_factor"], max(cfg[key], 1)
    below = (c for c in range(v // f * f, 0, -f) if c != v)
    above = range((v // f + 1) * f, 8 * v + f, f)
    found = [next((c for c in cands if _fits({**cfg, key: c}, down, unet)), None) for cands in (below, above)]
    found = [str(c) for c in found if c is not None]
    return (
        f" (e.g. {' or '.join(found)}: sizes that also fit world_size={cfg['world_size']})" if found else ""
    )


def _check_parallel(cfg: dict[str, Any], problems: list[str], misfits: list[str]) -> None:
    """World size, CFG split and the strategy's own checks: its parameters (``problems``) and the degrees
    that fit the model at this size (``misfits``)."""
    from distri.models.adapters import unet_downsamples
    from distri.models.denoiser import find_unet_config
    from distri.parallel.strategy import check

    s, n = cfg["strategy"], cfg["world_size"]
    if n < 1:
        problems.append(f"world_size must be >= 1, got {n}")
        return
    if s.get("cfg_split") and cfg["sampler"]["guidance_scale"] <= 1:
        problems.append("cfg_split needs classifier-free guidance: set sampler.guidance_scale > 1")
    unet = find_unet_config(cfg["model"])
    down = 0 if unet is None else unet_downsamples(unet)
    found = check(s, _fit(cfg, down, unet, _latent_sizes(cfg, down, problems, unet)))
    problems += found.problems
    misfits += found.misfits


def validate(cfg: dict[str, Any]) -> None:
    """Check a resolved config dict; raise :class:`ConfigError` listing every problem and the fix, or
    :class:`Infeasible` when the only problems are the strategy's misfits (a combination that cannot run)."""
    p: list[str] = []
    misfits: list[str] = []
    _choice(p, "device", cfg["device"], DEVICES)
    _choice(p, "dtype", cfg["dtype"], DTYPES)
    _check_dtype(cfg, p)
    _choice(p, "model.family", cfg["model"]["family"], ("sdxl", "sd"))
    _choice(p, "model.source", cfg["model"]["source"], ("tiny", "bundled", "hub"))
    _choice(p, "model.domain", cfg["model"]["domain"], ("open", "shapes"))
    sm = cfg["sampler"]
    _choice(p, "sampler", sm["name"], SAMPLERS)
    steps = sm["num_inference_steps"]
    if steps < 1:
        p.append(f"sampler.num_inference_steps must be >= 1, got {steps}")
    if sm["guidance_scale"] < 0:
        p.append(f"sampler.guidance_scale must be >= 0, got {sm['guidance_scale']}")
    _check_parallel(cfg, p, misfits)
    r = cfg["runner"]
    if r["timed_runs"] < 1:
        p.append(f"runner.timed_runs must be >= 1, got {r['timed_runs']}")
    if r["warmup_runs"] < 0:
        p.append(f"runner.warmup_runs must be >= 0, got {r['warmup_runs']}")
    if not 0 <= r["trim"] < 1:
        p.append(f"runner.trim must be in [0, 1), got {r['trim']}")
    _choice(p, "runner.statistic", r["statistic"], RUNNER_STATISTICS)
    if r["cpu_threads_per_rank"] < 1:
        p.append(f"runner.cpu_threads_per_rank must be >= 1, got {r['cpu_threads_per_rank']}")
    pr = cfg["prompts"]
    _choice(p, "prompts", pr["name"], ("builtin", "coco", "shapes"))
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
    _check_job(cfg, p)
    if p:
        raise ConfigError(p + misfits)
    if misfits:
        raise Infeasible(misfits)


def _check_job(cfg: dict[str, Any], p: list[str]) -> None:
    """Seed, model id, deadlines, port: what a type cannot refuse (files are checked by distri.job.preflight)."""
    if cfg["seed"] < 0:
        p.append(f"seed must be >= 0 (prompt i uses seed + i), got {cfg['seed']}")
    m = cfg["model"]
    if m["source"] == "tiny" and m.get("id") not in ("", None, m["name"]):
        p.append(
            f"model.id={m['id']!r} is not used by model={m['name']} (built locally, source: tiny); drop "
            "model.id, or for real weights choose a hub model (e.g. model=sdxl model.id=/path/to/folder)"
        )
    r = cfg["runner"]
    if r["timeout_s"] <= 0:
        p.append(f"runner.timeout_s must be > 0 seconds, got {r['timeout_s']}")
    if r.get("port") is not None and not 1024 <= r["port"] <= 65535:
        p.append(f"runner.port must be in 1024..65535 or null (a free port), got {r['port']}")
