"""Weights & Biases logging of job records (:class:`RunLogger`), offline by default.

Only the main process (global rank 0) of a job should create a :class:`RunLogger`; on other ranks (``RANK``
env var != 0) it disables itself. Offline, the run is written under ``<dir>/wandb/offline-run-<ts>-<id>/``
(``run-<id>.wandb`` holds config, history and summary; ``files/media/`` the logged images) and can be uploaded
later with ``wandb sync <that dir>``. The job layer logs a record only after it is on disk
(:mod:`distri.job.results`), so nothing here can lose a result.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distri.job.record import to_jsonable

DEFAULT_LOGGER_CFG: dict[str, Any] = {
    "name": "wandb",
    "mode": "offline",
    "project": "distri",
    "entity": None,
    "group": None,
    "tags": [],
    "dir": None,
    "job_type": None,
    "console": "off",
    "system_stats": False,
}
"""Defaults for :class:`RunLogger`'s logger config. ``console`` is passed to ``wandb.Settings(console=...)``;
``system_stats=False`` turns off W&B's background system-metrics sampling so it cannot perturb timings."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite scalars of a record as W&B keys.

    Nested dicts under ``latency``, ``metrics`` and ``comm`` become ``section/key[/subkey...]`` (e.g.
    ``latency/mean_s``, ``comm/bytes_per_step``); a numeric top-level ``speedup`` is kept as ``speedup``.
    Lists, strings (e.g. a ``"inf"`` PSNR), booleans, None and the per-step series (``comm.per_step``) are
    skipped.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if k != "per_step":  # a series: history (RunLogger.log_steps), not scalars
                    walk(f"{prefix}/{k}", v)
        elif _is_number(obj):
            out[prefix] = obj

    for section in ("latency", "metrics", "comm"):
        if isinstance(record.get(section), Mapping):
            walk(section, record[section])
    if _is_number(record.get("speedup")):
        out["speedup"] = record["speedup"]
    return out


def run_identity(config: Mapping[str, Any], job: str) -> tuple[str, list[str]]:
    """A job's W&B run name (``tiny_sdxl displaced_patch/corrected_async_gn x2 (job)``) and tags: the model,
    the strategy, each of its choice parameters (``mode:corrected_async_gn``), ``cfg_split`` when set, and
    the world size, all from the strategy's own description (no strategy known here by name)."""
    from distri.parallel.strategy import choice_fields, strategy_from_config

    strategy, n, model = (
        strategy_from_config(config["strategy"]),
        config["world_size"],
        config["model"]["name"],
    )
    tags = [f"model:{model}", f"strategy:{strategy.name}"]
    tags += [f"{key}:{getattr(strategy, key)}" for key in choice_fields(type(strategy))]
    if strategy.cfg_split:
        tags.append("cfg_split")
    tags.append(f"world_size:{n}")
    return f"{model} {strategy.label()} x{n} ({job})", tags


def step_rows(record: Mapping[str, Any]) -> list[dict[str, float]]:
    """The per-step series of a record, one row per denoising step: ``step/latency_s`` (the per-step
    profile), ``step/baseline_latency_s`` (the single device's), ``step/comm_bytes`` and ``step/comm_wait_s``
    (the ledger's, summed over kinds) and ``step/comm_bytes/<kind>``."""
    lat = record.get("latency") or {}
    base = (record.get("baseline_latency") or {}).get("per_step_s") or []
    comm = (record.get("comm") or {}).get("per_step") or {}
    rows = []
    for i, seconds in enumerate(lat.get("per_step_s") or []):
        kinds = comm.get(str(i)) or comm.get(i) or {}
        row = {"denoising_step": i, "step/latency_s": seconds}
        if i < len(base):
            row["step/baseline_latency_s"] = base[i]
        row["step/comm_bytes"] = sum(k["bytes"] for k in kinds.values())
        row["step/comm_wait_s"] = sum(k["wait_s"] for k in kinds.values())
        row.update({f"step/comm_bytes/{kind}": k["bytes"] for kind, k in kinds.items()})
        rows.append(row)
    return rows


ONLINE_PROBE_S = 5.0
"""``mode: online``: how long to try to reach the W&B server before logging offline instead."""


def _api_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc


def _reachable(timeout_s: float) -> bool:
    """Whether a TCP connection to the W&B server opens within ``timeout_s`` (no request is sent)."""
    host, _, port = _api_host().partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _rank_is_zero() -> bool:
    for var in ("RANK", "SLURM_PROCID"):
        val = os.environ.get(var)
        if val is not None and val.strip().isdigit():
            return int(val) == 0
    return True


def _to_pil(x: Any) -> list[Any]:
    """Tensors ``[C,H,W]`` / ``[N,C,H,W]`` in [0,1] (or uint8) -> list of PIL images; others passed through."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        from PIL import Image

        t = x.detach().cpu()
        batch = [t] if t.ndim == 3 else list(t.unbind(0))
        out = []
        for im in batch:
            if im.is_floating_point():
                im = (im.float().clamp(0, 1) * 255).round()
            arr = im.to(torch.uint8).permute(1, 2, 0).numpy()
            out.append(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr))
        return out
    return [x]


class RunLogger:
    """Mirrors job records into one W&B run (offline by default). Use only on the main process / rank 0.

    Args:
        logger_cfg: ``{"name": "wandb"|"none", "mode": "offline"|"online"|"disabled", "project", "entity",
            "group", "tags", "dir", "job_type", "console", "system_stats"}``; missing keys take
            :data:`DEFAULT_LOGGER_CFG`. ``dir`` is where W&B creates its ``wandb/`` folder (default: the
            ``WANDB_DIR`` env var, else the working directory); point it at the sweep directory.
        run_name: the W&B run's display name (e.g. the job name).
        group: W&B group used when ``logger_cfg["group"]`` is not set; give every job of a sweep the same
            group (e.g. the sweep name) so they are grouped in the UI.
        config: the resolved job configuration, stored as the run's config.

    Nothing is logged (and wandb is not even imported) when ``name`` is ``"none"``, ``mode`` is
    ``"disabled"``, the ``WANDB_MODE`` env var is ``"disabled"``, or the ``RANK`` env var is set and non-zero.
    In offline mode W&B never contacts a server or asks for a login; ``wandb sync <run_dir>`` uploads later.
    ``mode: online`` first checks (for :data:`ONLINE_PROBE_S`) that the server is reachable, and else logs offline
    and says so on stderr (wandb itself would retry silently for about 90 s).

    After construction, ``run_dir`` is the run's directory (``.../wandb/offline-run-<ts>-<id>`` offline) and
    ``files_dir`` its ``files/`` folder; both are None when disabled.
    """

    def __init__(
        self,
        logger_cfg: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        group: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        cfg = dict(DEFAULT_LOGGER_CFG)
        cfg.update(to_jsonable(dict(logger_cfg)) if logger_cfg is not None else {})
        self.cfg = cfg
        self.name = str(cfg.get("name") or "none").lower()
        self.mode = str(cfg.get("mode") or "offline").lower()
        self.run: Any = None
        self.run_dir: Path | None = None
        self.files_dir: Path | None = None
        self._status: str | None = None
        self._finished = False

        if self._wanted():
            self._start(run_name, group, config)

    def _wanted(self) -> bool:
        """Check the settings; False (mode ``disabled`` where it applies) when nothing is to be logged here."""
        if self.name == "none":
            return False
        if self.name != "wandb":
            raise ValueError(f"unknown logger name {self.name!r} (expected 'wandb' or 'none')")
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"unknown W&B mode {self.mode!r} (expected offline, online or disabled)")
        if self.mode == "disabled" or os.environ.get("WANDB_MODE", "").lower() == "disabled":
            self.mode = "disabled"
            return False
        if not _rank_is_zero():
            warnings.warn("RunLogger created on a non-zero rank: W&B logging disabled here", stacklevel=2)
            self.mode = "disabled"
            return False
        return True

    def _start(self, run_name: str | None, group: str | None, config: Mapping[str, Any] | None) -> None:
        """``wandb.init`` (offline instead of online when the server does not answer), and the run's folders."""
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        cfg = self.cfg
        wandb_dir = cfg.get("dir")
        if wandb_dir:
            Path(wandb_dir).mkdir(parents=True, exist_ok=True)
        init_kwargs: dict[str, Any] = {
            "project": cfg.get("project") or "distri",
            "entity": cfg.get("entity"),
            "group": cfg.get("group") or group,
            "name": run_name,
            "tags": [str(t) for t in (cfg.get("tags") or [])],
            "dir": str(wandb_dir) if wandb_dir else None,
            "job_type": cfg.get("job_type"),
            "config": to_jsonable(dict(config)) if config is not None else None,
            "reinit": "create_new",
        }
        settings = wandb.Settings(
            silent=True,
            console=str(cfg.get("console") or "off"),
            x_disable_stats=not bool(cfg.get("system_stats")),
            save_code=False,
        )
        if self.mode == "online" and not _reachable(ONLINE_PROBE_S):
            print(
                f"W&B: {_api_host()} not reachable within {ONLINE_PROBE_S:g} s; logging offline instead "
                "(upload later with `wandb sync <run dir>`)",
                file=sys.stderr,
            )
            self.mode = "offline"
        self.run = wandb.init(mode=self.mode, settings=settings, **init_kwargs)
        with contextlib.suppress(Exception):
            self.files_dir = Path(self.run.dir)
        try:
            self.run_dir = Path(self.run.settings.sync_dir)
        except Exception:  # older/newer wandb without sync_dir
            self.run_dir = self.files_dir.parent if self.files_dir is not None else None

    @property
    def enabled(self) -> bool:
        """True when a W&B run is open and receiving data."""
        return self.run is not None and not self._finished

    def log(self, data: Mapping[str, Any]) -> None:
        """Log arbitrary key/values (one W&B history step). No-op when disabled."""
        if self.enabled:
            self.run.log(dict(data))

    def log_result(
        self,
        record: Mapping[str, Any],
        images: Sequence[Any] | None = None,
        captions: Sequence[str] | None = None,
    ) -> None:
        """Log a job record: scalars, the full record, and sample images.

        * :func:`scalar_metrics` of the record (``latency/mean_s``, ``metrics/psnr_vs_orig``,
          ``comm/bytes_per_step``, ``speedup``, ...) as one history step (so they also land in the summary);
        * the per-step series (:meth:`log_steps`) as history rows against ``denoising_step``;
        * the whole record (strict-JSON form) as ``summary["record"]`` (less ``comm.per_step``, which is in
          the history), and ``summary["status"]``;
        * ``images`` (PIL images, tensors ``[3,H,W]`` / ``[N,3,H,W]`` in [0,1], numpy arrays or file paths) as
          ``samples``, a list of ``wandb.Image`` with ``captions`` (matched by position). When ``images`` is
          None the record's ``images`` paths that exist are logged instead.

        A failed record makes :meth:`finish` mark the run as failed (exit code 1). No-op when disabled.
        """
        self._status = str(record.get("status")) if record.get("status") is not None else None
        if not self.enabled:
            return
        import wandb

        rec = to_jsonable(record)
        payload: dict[str, Any] = dict(scalar_metrics(rec))
        if images is None:
            images = [p for p in rec.get("images") or [] if isinstance(p, str) and Path(p).is_file()]
        flat: list[Any] = []
        for im in images or []:
            flat.extend(_to_pil(im))
        caps = list(captions or [])
        if flat:
            payload["samples"] = [
                wandb.Image(
                    im if not isinstance(im, os.PathLike) else os.fspath(im),
                    caption=caps[i] if i < len(caps) else None,
                )
                for i, im in enumerate(flat)
            ]
        grid = rec.get("comparison_grid")
        if isinstance(grid, str) and Path(grid).is_file():
            payload["comparison_grid"] = wandb.Image(grid, caption="original | parallel | |difference|")
        self.run.log(payload)
        self.log_steps(rec)
        for key, value in (rec.get("metrics") or {}).items():
            if key.startswith("backbone_"):  # "real" or "stand-in", beside each metric's number
                self.run.summary[f"metrics/{key}"] = value
        comm = {k: v for k, v in (rec.get("comm") or {}).items() if k != "per_step"}  # in the history
        self.run.summary["record"] = {**rec, "comm": comm}
        self.run.summary["status"] = rec.get("status")

    def log_steps(self, record: Mapping[str, Any]) -> None:
        """The record's per-step series (:func:`step_rows`) as W&B history against ``denoising_step``, kept
        out of the summary (``summary="none"``). No-op when disabled."""
        if not self.enabled:
            return
        self.run.define_metric("denoising_step", hidden=True)
        self.run.define_metric("step/*", step_metric="denoising_step", summary="none")
        for row in step_rows(record):
            self.run.log(row)

    def finish(self, exit_code: int | None = None) -> Path | None:
        """Close the run (idempotent) and return its directory (None when disabled).

        ``exit_code`` defaults to 1 if the last logged record was not ok, else 0. W&B's background service
        completes ``run-<id>.wandb`` shortly after this returns (the record itself is on disk already).
        """
        if self.run is not None and not self._finished:
            if exit_code is None:
                exit_code = 0 if self._status in (None, "ok") else 1
            self.run.finish(exit_code=exit_code)
            self._finished = True
        return self.run_dir

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)
