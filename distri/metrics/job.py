"""Quality metrics inside a job: single-device originals through the shared cache, then every metric.

Every rank calls :func:`fill_originals` with the stock pipeline (strategy removed): the originals a job needs are
looked up in :class:`~distri.metrics.originals.OriginalsCache` (keyed by model, weights fingerprint, sampler,
steps, guidance, resolution, dtype, prompt and seed), and the missing ones are made data-parallel, rank ``r``
making items ``r, r + N, ...``; items another job is making are waited for. Rank 0 then calls
:func:`job_quality` on the files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from distri.metrics.originals import FillStats, OriginalsCache, OriginalsSpec, weights_fingerprint


def weights_dir(model_cfg: Mapping[str, Any]) -> Path:
    """The local folder holding the model's weights (what the originals' key fingerprints)."""
    if model_cfg.get("source") == "tiny":
        from distri.models.tiny import build_tiny

        return build_tiny(model_cfg["name"], model_cfg.get("cache_dir"))  # returns the built folder
    if model_cfg.get("source") == "bundled":
        from distri.models.bundled import bundled_dir

        return bundled_dir(model_cfg)
    model_id = str(model_cfg.get("id") or "")
    path = Path(model_id).expanduser()
    if (path / "model_index.json").is_file():
        return path
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            model_id, revision=model_cfg.get("revision"), cache_dir=model_cfg.get("cache_dir"),
            local_files_only=True,
        )
    )  # fmt: skip


def originals_spec(cfg: Mapping[str, Any]) -> OriginalsSpec:
    return OriginalsSpec.from_config(cfg, weights_fingerprint(weights_dir(cfg["model"])))


def fill_originals(
    cfg: Mapping[str, Any],
    prompts: Sequence[str],
    generate: Callable[[int], Any],
    rank: int,
    world_size: int,
) -> tuple[list[Path], FillStats]:
    """This rank's share of the missing originals of the job's prompts (``generate(i)`` makes prompt ``i``'s
    single-device image); returns every original's path (the others' shares may still be in the making: wait
    at a barrier before reading them) and what this rank did."""
    spec = originals_spec(cfg)
    cache = OriginalsCache(cfg["metrics"].get("originals_dir") or None)
    items = [(p, cfg["seed"] + i) for i, p in enumerate(prompts)]
    index = {item: i for i, item in enumerate(items)}
    stats = cache.fill(spec, items, lambda p, s: generate(index[(p, s)]), rank=rank, world_size=world_size)
    return cache.paths(spec, items), stats


def job_quality(
    cfg: Mapping[str, Any],
    images: Sequence[str | Path],
    originals: Sequence[str | Path] | None,
    prompts: Sequence[str],
    out: str | Path | None,
    label: str,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """Rank 0: every metric of the job's images (``compute_metrics`` with the job's ``metrics`` options), the
    baseline metrics of the originals themselves (against G.T. and the prompts; ``None`` without originals),
    and the comparison grid of the first prompts into ``out`` (with originals and an ``out``); returns
    ``(metrics, baseline, grid path or None)``. Both sets share one :class:`MetricSession`: the backbones load
    once, and the originals' and G.T.'s FID features are computed once."""
    from distri.metrics.backbones import resolve_backbones
    from distri.metrics.compute import MetricSession, compute_metrics
    from distri.metrics.grid import comparison_grid
    from distri.metrics.options import job_metric_config

    opts = job_metric_config(cfg)
    session = MetricSession(opts, resolve_backbones(opts), device)
    metrics = compute_metrics(images, originals, None, prompts, session=session)
    baseline = compute_metrics(originals, None, None, prompts, session=session) if originals else None
    grid = None
    if originals and out is not None:
        grid = str(
            comparison_grid(originals, images, Path(out) / "comparison.png", label=label, prompts=prompts)
        )
    return metrics, baseline, grid
