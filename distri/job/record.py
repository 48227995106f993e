"""The job record: one typed object (:class:`JobRecord`), built here and serialised once (:meth:`to_dict`).

A record is what one job leaves behind: ``result.json`` in its folder, one line of ``results.jsonl`` in its
sweep, the W&B run's summary. Records are strict JSON: :func:`to_jsonable` turns NaN into ``null``, +/-inf
into the strings ``"inf"`` / ``"-inf"`` (``float()`` parses them back), numpy / torch scalars into numbers,
arrays and tensors into lists, paths into strings. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import math
import os
import sys
import traceback as _tb
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "failed", "interrupted", "skipped")

RESULT_FIELDS: dict[str, str] = {
    "status": '"ok", "failed" (the job raised, a rank died or went silent), "interrupted" (SIGINT/SIGTERM) '
    'or "skipped" (a combination the strategy cannot run; no worker started).',
    "error": "None, or a one-line error message (``ExceptionType: message``) when status is not ok.",
    "traceback": "None, or the full formatted traceback when status is not ok.",
    "config": "The fully resolved job configuration (nested dict, no interpolations left).",
    "env": "Environment of the run, see collect_env(): versions, device name, backend, world_size, git commit.",
    "latency": "Latency stats in seconds (mean_s, std_s, median_s, min_s, max_s, trimmed_mean_s, n, "
    "trim_fraction, ...) plus a human-readable 'method' string; {} if not measured.",
    "metrics": "Quality metrics, e.g. psnr_vs_orig (float dB, or the string 'inf'), max_abs_err_vs_orig, "
    "mean_abs_err_vs_orig, n_images; {} if none.",
    "comm": "Communication accounting, e.g. bytes_per_step and per-kind breakdowns; {} if none.",
    "images": "List of paths (strings) of the saved sample images; [] if none.",
}
"""The record contract: every record has at least these keys (others, e.g. ``speedup``, may be present; every
record distri writes has ``config_hash``, :func:`config_hash` of its ``config``, which a sweep resumes by)."""


def _float(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _convert_array(obj: Any) -> tuple[bool, Any]:
    """numpy / torch / OmegaConf values (only if those modules are already imported)."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        return True, to_jsonable(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        return True, to_jsonable(obj.item())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return True, to_jsonable(t.item() if t.numel() == 1 and t.ndim == 0 else t.tolist())
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and isinstance(obj, (omegaconf.DictConfig, omegaconf.ListConfig)):
        return True, to_jsonable(omegaconf.OmegaConf.to_container(obj, resolve=True))
    return False, None


def to_jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` into values that ``json.dumps(..., allow_nan=False)`` accepts.

    Floats: NaN -> None, inf -> ``"inf"``, -inf -> ``"-inf"``. numpy scalars and one-element tensors -> Python
    numbers; numpy arrays and tensors -> (nested) lists; ``Path`` / ``torch.dtype`` / ``torch.device`` and
    other unknown objects -> ``str(obj)``; dataclasses -> dicts; enums -> their value; datetimes -> ISO
    strings; OmegaConf containers -> resolved plain containers; sets / tuples -> lists; dict keys -> ``str``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    done, value = _convert_array(obj)
    return value if done else str(obj)


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (after :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def validate_record(record: Mapping[str, Any]) -> list[str]:
    """Return a list of problems with ``record`` against :data:`RESULT_FIELDS` (empty when it conforms)."""
    problems = [f"missing key {k!r}" for k in RESULT_FIELDS if k not in record]
    if record.get("status") not in STATUSES:
        problems.append(f"status must be one of {', '.join(STATUSES)}, got {record.get('status')!r}")
    for k in ("config", "env", "latency", "metrics", "comm"):
        if k in record and not isinstance(record[k], Mapping):
            problems.append(f"{k!r} must be a dict, got {type(record[k]).__name__}")
    if "images" in record and not isinstance(record["images"], (list, tuple)):
        problems.append(f"'images' must be a list, got {type(record['images']).__name__}")
    return problems


NOT_HASHED = (
    ("force",),
    ("logger",),
    ("runner", "timeout_s"),
    ("runner", "port"),
    ("metrics", "progress"),
    ("metrics", "num_workers"),
    ("metrics", "batch_size"),
    ("metrics", "originals_dir"),
    ("model", "cache_dir"),
)
"""Configuration keys left out of :func:`config_hash`: they say how a job is run, watched, logged or where
its caches are, not what it measures (Hydra's own keys and paths are never in a job's configuration)."""


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable hash (16 hex digits of SHA-256) of a resolved configuration without :data:`NOT_HASHED`:
    equal for two jobs that measure the same thing, on any machine and in any key order."""
    cfg = to_jsonable(config)
    for path in NOT_HASHED:
        node = cfg
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    text = json.dumps(cfg, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def error_line(exc: BaseException) -> str:
    """``ExceptionType: first line of the message`` (a ConfigError: every problem, joined by ``; ``)."""
    problems = getattr(exc, "problems", None)
    if problems:
        return f"{type(exc).__name__}: " + "; ".join(problems)
    return f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__


@dataclass
class JobRecord:
    """One job's record. The worker's rank 0 fills the measurements (:attr:`results`, a dict of the keys
    ``latency``, ``comm``, ``metrics``, ``images``, ``prompts``, ``speedup``, ...); the job layer fills the
    rest. :meth:`to_dict` is the one serialisation (strict-JSON-ready)."""

    status: str
    config: Mapping[str, Any]
    env: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    results: Mapping[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    wall_s: float | None = None
    rank: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)  # failed_rank, pid, wandb_dir, ...

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @classmethod
    def from_exception(
        cls, status: str, config: Mapping[str, Any], exc: BaseException, **kw: Any
    ) -> JobRecord:
        """A failed or interrupted record: the one-line ``error`` and the full traceback of ``exc``."""
        tb = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(status, config, error=error_line(exc), traceback=tb, **kw)

    def to_dict(self) -> dict[str, Any]:
        base = {"latency": {}, "metrics": {}, "comm": {}, "images": []}
        rec = {
            "status": self.status, "error": self.error, "traceback": self.traceback,
            "config": dict(self.config), "config_hash": config_hash(self.config), "env": dict(self.env),
            **base, **dict(self.results),
            "output_dir": self.output_dir, "wall_s": self.wall_s, "rank": self.rank, **dict(self.extra),
        }  # fmt: skip
        return to_jsonable(rec)


def failed_record(
    config: Mapping[str, Any], exc: BaseException, env: Mapping[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """A conforming record (a dict) for a job that raised ``exc``: ``interrupted`` for a KeyboardInterrupt,
    ``skipped`` for :class:`distri.config.Infeasible` (no traceback: nothing went wrong), else ``failed``."""
    from distri.config import Infeasible

    if isinstance(exc, Infeasible):
        return JobRecord("skipped", config, env=env or {}, error=error_line(exc), **kw).to_dict()
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    return JobRecord.from_exception(status, config, exc, env=env or {}, **kw).to_dict()
