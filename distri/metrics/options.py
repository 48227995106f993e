"""Options of the image-quality metrics (the ``metrics`` config group), as a plain frozen dataclass.

:func:`metric_options` turns the resolved ``metrics`` config dict (or keyword arguments) into
:class:`MetricOptions` and raises one ``ValueError`` listing every problem; :func:`metric_problems` returns the
problems without raising, for a config validator that collects problems from every group. Nothing here imports
torch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUALITY_METRICS: tuple[str, ...] = ("psnr", "lpips", "fid", "clip_score")
"""Names accepted in ``metrics.compute``."""

BACKBONE_MODES: tuple[str, ...] = ("auto", "real", "stand-in")
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")
FID_IMPLS: tuple[str, ...] = ("clean-fid", "torchmetrics")
DOMAINS: tuple[str, ...] = ("open", "shapes")
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
"""torchmetrics' default CLIP for ``CLIPScore``."""


@dataclass(frozen=True)
class MetricOptions:
    """How the quality metrics are computed (see ``conf/metrics/default.yaml`` for each field)."""

    compute: tuple[str, ...] = QUALITY_METRICS
    backbones: str = "auto"
    lpips_net: str = "alex"
    fid_impl: str = "clean-fid"
    clip_model: str = DEFAULT_CLIP_MODEL
    gt_dir: str | None = None
    batch_size: int = 16
    num_workers: int = 0
    progress: bool = True
    domain: str = "open"  # the model's (model.domain, set by the job): "shapes" adds shape_accuracy

    def wants(self, metric: str) -> bool:
        return metric in self.compute


_FIELDS = tuple(f.name for f in dataclasses.fields(MetricOptions))


def _choice(problems: list[str], key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        problems.append(f"metrics.{key}={value!r} is not one of: {', '.join(valid)}")


def _problems(o: MetricOptions) -> list[str]:
    problems: list[str] = []
    for name in o.compute:
        _choice(problems, "compute", name, QUALITY_METRICS)
    _choice(problems, "backbones", o.backbones, BACKBONE_MODES)
    _choice(problems, "lpips_net", o.lpips_net, LPIPS_NETS)
    _choice(problems, "fid_impl", o.fid_impl, FID_IMPLS)
    _choice(problems, "domain", o.domain, DOMAINS)
    if not isinstance(o.batch_size, int) or o.batch_size < 1:
        problems.append(f"metrics.batch_size must be an integer >= 1, got {o.batch_size!r}")
    if not isinstance(o.num_workers, int) or o.num_workers < 0:
        problems.append(f"metrics.num_workers must be an integer >= 0, got {o.num_workers!r}")
    if not o.clip_model:
        problems.append(f"metrics.clip_model must name a CLIP model (e.g. {DEFAULT_CLIP_MODEL})")
    if o.gt_dir is not None and not os.path.isdir(os.path.expanduser(o.gt_dir)):
        problems.append(
            f"metrics.gt_dir={o.gt_dir!r} is not a folder; point it at the real images (e.g. COCO val2014) "
            "or set metrics.gt_dir=null to skip the metrics against real images"
        )
    return problems


def _build(options: Mapping[str, Any] | MetricOptions | None) -> MetricOptions:
    if isinstance(options, MetricOptions):
        return options
    known = {k: v for k, v in (options or {}).items() if k in _FIELDS}
    if "compute" in known:
        known["compute"] = tuple(known["compute"])
    if known.get("gt_dir") == "":
        known["gt_dir"] = None
    return MetricOptions(**known)


def metric_problems(options: Mapping[str, Any] | MetricOptions | None) -> list[str]:
    """Every problem with ``options`` (the ``metrics`` config dict), each naming the key to change.

    Keys this module does not own (e.g. ``compare_to_original``, ``originals_dir``) are ignored.
    """
    return _problems(_build(options))


def job_metric_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A job's ``metrics`` config with its model's ``domain`` (which decides the shapes metrics)."""
    return {**cfg["metrics"], "domain": cfg["model"].get("domain", "open")}


def metric_options(
    options: Mapping[str, Any] | MetricOptions | None = None, **overrides: Any
) -> MetricOptions:
    """Validated :class:`MetricOptions` from the ``metrics`` config dict (missing keys take the defaults)."""
    o = _build(options)
    if overrides:
        o = dataclasses.replace(o, **{k: tuple(v) if k == "compute" else v for k, v in overrides.items()})
    problems = _problems(o)
    if problems:
        raise ValueError("invalid metrics options:\n" + "\n".join(f"  - {p}" for p in problems))
    return o
