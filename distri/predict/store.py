"""Where one device's costs are kept, so that a prediction does not re-run the dry run.

A dry run of the real SDXL takes 15-30 s on a CPU; a prediction needs one per strategy and world size. Costs
are looked up, in order, in

1. the package data ``distri/predict/data/costs.json.gz``: SDXL at the paper's 1024 / 2048 / 3840 px, world
   sizes 1, 2, 4, 8, the strategies of the paper's comparisons (regenerate with
   ``python -m distri.predict.store``);
2. the cache ``$DISTRI_CACHE/predict/<key>.json`` (else ``~/.cache/distri/predict``), filled by every dry run
   the cost model had to make;

and otherwise computed (:func:`distri.predict.costs.step_costs`) and written to the cache. The key is the
setting (model, size, world size, strategy and its parameters, CFG split, dtype, batch) and
:data:`COSTS_VERSION`, which changes whenever what the costs hold changes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from distri.predict.model import StepCosts

COSTS_VERSION = 2
PACKAGED = Path(__file__).resolve().parent / "data" / "costs.json.gz"

PAPER_SIZES = (1024, 2048, 3840)
PAPER_WORLD_SIZES = (1, 2, 4, 8)
PAPER_STRATEGIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("naive_patch", {}),
    ("displaced_patch", {}),
    ("displaced_patch", {"mode": "full_sync"}),
    ("displaced_patch", {"mode": "no_sync"}),
    ("tensor", {}),
)
"""What the package data holds per size and world size > 1 (world size 1: ``none``)."""


def cache_key(setting: dict[str, Any]) -> str:
    blob = json.dumps({"version": COSTS_VERSION, **setting}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    base = os.environ.get("DISTRI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "distri")
    return Path(base) / "predict"


_packaged: dict[str, Any] | None = None


def _packaged_costs() -> dict[str, Any]:
    global _packaged
    if _packaged is None:
        _packaged = json.loads(gzip.decompress(PACKAGED.read_bytes())) if PACKAGED.is_file() else {}
    return _packaged


def setting_of(model: str, height: int, width: int, world_size: int, strategy: str, cfg_split: bool,
               dtype: str, batch: int, params: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {"model": model, "height": height, "width": width, "world_size": world_size,
            "strategy": strategy, "cfg_split": cfg_split, "dtype": dtype, "batch": batch,
            "params": dict(sorted(params.items()))}  # fmt: skip


def lookup(setting: dict[str, Any]) -> StepCosts | None:
    """The packaged or cached :class:`StepCosts` of ``setting``, else None."""
    key = cache_key(setting)
    if key in _packaged_costs():
        return StepCosts.from_dict(_packaged_costs()[key])
    path = cache_dir() / f"{key}.json"
    return StepCosts.from_dict(json.loads(path.read_text())) if path.is_file() else None


def costs(setting: dict[str, Any], use_cache: bool = True) -> StepCosts:
    """The :class:`StepCosts` of ``setting`` (:func:`setting_of`): packaged, cached, or from a dry run."""
    key = cache_key(setting)
    found = lookup(setting) if use_cache else None
    if found is not None:
        return found
    from distri.predict.costs import step_costs  # torch: only when a dry run is needed

    s = setting
    c = step_costs(s["model"], s["height"], s["width"], s["world_size"], s["strategy"],
                   cfg_split=s["cfg_split"], dtype=s["dtype"], batch=s["batch"], **s["params"])  # fmt: skip
    if use_cache:
        path = cache_dir() / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(c.to_dict()))
        tmp.replace(path)
    return c


def paper_settings() -> list[dict[str, Any]]:
    """The settings the package data holds (see :data:`PAPER_STRATEGIES`)."""
    out = []
    for size in PAPER_SIZES:
        out.append(setting_of("sdxl", size, size, 1, "none", False, "float16", 2, {}))
        for n in PAPER_WORLD_SIZES[1:]:
            for name, params in PAPER_STRATEGIES:
                out.append(setting_of("sdxl", size, size, n, name, False, "float16", 2, params))
    return out


def build_packaged(path: Path = PACKAGED) -> None:
    """Write the package data: the costs of every :func:`paper_settings` (from the cache, else a dry run;
    minutes when the cache is empty)."""
    data = {}
    for i, s in enumerate(paper_settings()):
        print(f"[{i + 1}/{len(paper_settings())}] {s}", file=sys.stderr, flush=True)
        data[cache_key(s)] = costs(s).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0))


if __name__ == "__main__":
    build_packaged()
