"""Model loading: tiny locally built pipelines (:mod:`distri.models.tiny`) and real weights
(:mod:`distri.models.loader`).

The names below are imported lazily, so ``import distri.models.tiny`` does not pull in diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_tiny": "distri.models.tiny",
    "TINY_MODELS": "distri.models.tiny",
    "load_pipeline": "distri.models.loader",
    "ModelNotFoundError": "distri.models.loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
