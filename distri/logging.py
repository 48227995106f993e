"""Results store (``result.json`` per job + ``results.jsonl`` per sweep) and Weights & Biases logging.

Results store
-------------
Every job writes one *record* (a JSON object, see :data:`RESULT_FIELDS`) twice: ``<job_dir>/result.json``
(pretty-printed, replaced atomically) and one line appended to ``<sweep_root>/results.jsonl``. Appends are
serialised with a ``filelock.FileLock`` on ``results.jsonl.lock`` (``fcntl.flock`` if filelock is missing) and
written with a single ``O_APPEND`` write, so concurrent jobs never interleave lines. Records are strict JSON:
:func:`to_jsonable` turns NaN into ``null``, +/-inf into the strings ``"inf"`` / ``"-inf"`` (``float()`` parses
them back), numpy / torch scalars into numbers, arrays and tensors into lists, paths into strings.

W&B
---
:class:`RunLogger` mirrors a record into a W&B run. Only the main process (global rank 0) of a job should
create one; on other ranks (``RANK`` env var != 0) it disables itself. The default mode is ``"offline"``: the
run is written under ``<dir>/wandb/offline-run-<timestamp>-<id>/`` (``run-<id>.wandb`` holds config,
history and summary; ``files/media/`` the logged images) and can be uploaded later with
``wandb sync <that dir>``. :func:`read_offline_run` reads such a directory back without any network.

Importing this module is cheap: wandb (and torch / numpy, for conversions) are only imported when needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import platform
import socket
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_LOGGER_CFG",
    "RESULT_FIELDS",
    "RunLogger",
    "collect_env",
    "failed_record",
    "read_offline_run",
    "read_results",
    "scalar_metrics",
    "to_jsonable",
    "validate_record",
    "write_result",
]

RESULT_FIELDS: dict[str, str] = {
    "status": '"ok" or "failed".',
    "error": "None, or a one-line error message (``ExceptionType: message``) when status is failed.",
    "traceback": "None, or the full formatted traceback when status is failed.",
    "config": "The fully resolved job configuration (nested dict, no interpolations left).",
    "env": "Environment of the run, see collect_env(): versions, device name, backend, world_size, git commit.",
    "latency": "Latency stats in seconds (mean_s, std_s, median_s, min_s, max_s, trimmed_mean_s, n, "
    "trim_fraction, ...) plus a human-readable 'method' string; {} if not measured.",
    "metrics": "Quality metrics, e.g. psnr_vs_orig (float dB, or the string 'inf'), max_abs_err_vs_orig, "
    "mean_abs_err_vs_orig, n_images; {} if none.",
    "comm": "Communication accounting, e.g. bytes_per_step and per-kind breakdowns; {} if none.",
    "images": "List of paths (strings) of the saved sample images; [] if none.",
}
"""The record contract: every record has at least these keys (others, e.g. ``speedup``, may be present)."""

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


# --------------------------------------------------------------------------------------------- JSON safety


def _float(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


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
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            return to_jsonable(obj.item())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return to_jsonable(t.item() if t.numel() == 1 and t.ndim == 0 else t.tolist())
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and isinstance(obj, (omegaconf.DictConfig, omegaconf.ListConfig)):
        return to_jsonable(omegaconf.OmegaConf.to_container(obj, resolve=True))
    return str(obj)


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ records / env


def validate_record(record: Mapping[str, Any]) -> list[str]:
    """Return a list of problems with ``record`` against :data:`RESULT_FIELDS` (empty when it conforms)."""
    problems = [f"missing key {k!r}" for k in RESULT_FIELDS if k not in record]
    if record.get("status") not in ("ok", "failed"):
        problems.append(f"status must be 'ok' or 'failed', got {record.get('status')!r}")
    for k in ("config", "env", "latency", "metrics", "comm"):
        if k in record and not isinstance(record[k], Mapping):
            problems.append(f"{k!r} must be a dict, got {type(record[k]).__name__}")
    if "images" in record and not isinstance(record["images"], (list, tuple)):
        problems.append(f"'images' must be a list, got {type(record['images']).__name__}")
    return problems


def failed_record(
    config: Mapping[str, Any], exc: BaseException, env: Mapping[str, Any] | None = None
) -> dict:
    """A conforming record for a job that raised ``exc`` (call from inside the ``except`` block or anywhere)."""
    import traceback as _tb

    return {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__,
        "traceback": "".join(_tb.format_exception(type(exc), exc, exc.__traceback__)),
        "config": dict(config),
        "env": dict(env or {}),
        "latency": {},
        "metrics": {},
        "comm": {},
        "images": [],
    }


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_env(device: str, backend: str, world_size: int) -> dict[str, Any]:
    """Describe the software and hardware a job ran on.

    Keys: ``python``, ``platform``, ``hostname``, ``torch`` (``torch.__version__``), ``diffusers``,
    ``transformers``, ``wandb``, ``numpy`` (installed versions, None if absent), ``cuda`` (the CUDA version
    torch was built with; None for CPU-only builds), ``cudnn`` / ``nccl`` (None without a usable GPU),
    ``device`` (as given), ``device_name`` (CUDA device name, or the CPU model from ``/proc/cpuinfo`` /
    ``platform.processor()``), ``gpu_count``, ``cpu_count``, ``torch_num_threads``,
    ``cuda_visible_devices``, ``backend``, ``world_size``, ``git_commit`` (``git rev-parse HEAD`` in the
    directory of the ``distri`` package; None when unavailable, e.g. before the first commit), ``git_dirty``
    (tracked files modified or staged; None when git is unavailable), ``argv``, ``timestamp_utc``.
    """
    import torch

    dev_type = str(device).split(":", 1)[0].lower()
    cuda_ok = torch.cuda.is_available()
    if dev_type == "cuda" and cuda_ok:
        try:
            device_name = torch.cuda.get_device_name(torch.device(device))
        except Exception:  # best effort description
            device_name = torch.cuda.get_device_name()
    else:
        device_name = _cpu_model()
    nccl = None
    if cuda_ok:
        with contextlib.suppress(Exception):
            v = torch.cuda.nccl.version()
            nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)

    pkg_dir = Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], pkg_dir)
    status = _git(["status", "--porcelain", "--untracked-files=no"], pkg_dir)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "diffusers": _pkg_version("diffusers"),
        "transformers": _pkg_version("transformers"),
        "wandb": _pkg_version("wandb"),
        "numpy": _pkg_version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "nccl": nccl,
        "device": str(device),
        "device_name": device_name,
        "gpu_count": torch.cuda.device_count() if cuda_ok else 0,
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "backend": backend,
        "world_size": int(world_size),
        "git_commit": commit or None,
        "git_dirty": bool(status) if status is not None else None,
        "argv": list(sys.argv),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------- results store


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    try:
        import filelock
    except ImportError:
        filelock = None
    if filelock is not None:
        with filelock.FileLock(str(lock_path), timeout=120):
            yield
        return
    import fcntl

    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _append_line(path: Path, line: str) -> None:
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_result(
    record: Mapping[str, Any], job_dir: str | os.PathLike, sweep_root: str | os.PathLike
) -> None:
    """Write ``job_dir/result.json`` (indent 2) and append the record as one line to ``sweep_root/results.jsonl``.

    The record is converted with :func:`to_jsonable` and serialised as strict JSON. ``result.json`` is written
    to a temporary file and renamed into place; the append holds a lock on ``results.jsonl.lock`` and is a
    single ``O_APPEND`` write, so several processes may call this at once. Directories are created as needed.
    """
    job_dir, sweep_root = Path(job_dir), Path(sweep_root)
    job_dir.mkdir(parents=True, exist_ok=True)
    sweep_root.mkdir(parents=True, exist_ok=True)
    rec = to_jsonable(record)

    target = job_dir / "result.json"
    tmp = job_dir / f".result.json.{os.getpid()}.tmp"
    tmp.write_text(_dumps(rec, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)

    jsonl = sweep_root / "results.jsonl"
    with _locked(sweep_root / "results.jsonl.lock"):
        _append_line(jsonl, _dumps(rec))


def read_results(path: str | os.PathLike, strict: bool = False) -> list[dict[str, Any]]:
    """Read a ``results.jsonl`` file (or the ``results.jsonl`` inside a directory), one dict per line.

    Blank lines are skipped. A line that is not valid JSON (e.g. a job killed mid-write) raises
    ``ValueError`` when ``strict``; otherwise it is skipped with a warning.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
    records: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if strict:
                    raise ValueError(f"{p}:{lineno}: invalid JSON: {e}") from e
                warnings.warn(f"{p}:{lineno}: skipping invalid JSON line ({e})", stacklevel=2)
    return records


# ---------------------------------------------------------------------------------------------- W&B


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite scalars of a record as W&B keys.

    Nested dicts under ``latency``, ``metrics`` and ``comm`` become ``section/key[/subkey...]`` (e.g.
    ``latency/mean_s``, ``comm/bytes_per_step``); a numeric top-level ``speedup`` is kept as ``speedup``.
    Lists, strings (e.g. a ``"inf"`` PSNR), booleans and None are skipped.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif _is_number(obj):
            out[prefix] = obj

    for section in ("latency", "metrics", "comm"):
        if isinstance(record.get(section), Mapping):
            walk(section, record[section])
    if _is_number(record.get("speedup")):
        out["speedup"] = record["speedup"]
    return out


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
    If an online ``wandb.init`` fails (no network, no API key), the run falls back to offline with a warning.

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

        if self.name == "none":
            return
        if self.name != "wandb":
            raise ValueError(f"unknown logger name {self.name!r} (expected 'wandb' or 'none')")
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"unknown W&B mode {self.mode!r} (expected offline, online or disabled)")
        if self.mode == "disabled" or os.environ.get("WANDB_MODE", "").lower() == "disabled":
            self.mode = "disabled"
            return
        if not _rank_is_zero():
            warnings.warn("RunLogger created on a non-zero rank: W&B logging disabled here", stacklevel=2)
            self.mode = "disabled"
            return

        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

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

        def settings() -> Any:
            return wandb.Settings(
                silent=True,
                console=str(cfg.get("console") or "off"),
                x_disable_stats=not bool(cfg.get("system_stats")),
                save_code=False,
            )

        try:
            self.run = wandb.init(mode=self.mode, settings=settings(), **init_kwargs)
        except Exception as e:  # any init failure online should not lose the results
            if self.mode != "online":
                raise
            warnings.warn(f"wandb.init online failed ({e!r}); logging offline instead", stacklevel=2)
            self.mode = "offline"
            self.run = wandb.init(mode="offline", settings=settings(), **init_kwargs)

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
        * the whole record (strict-JSON form) as ``summary["record"]``, and ``summary["status"]``;
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
        self.run.log(payload)
        self.run.summary["record"] = rec
        self.run.summary["status"] = rec.get("status")

    def finish(self, exit_code: int | None = None, wait_s: float = 30.0) -> Path | None:
        """Close the run (idempotent) and return its directory (None when disabled).

        ``exit_code`` defaults to 1 if the last logged record failed, else 0. ``wandb.Run.finish()`` returns
        before W&B's background service has flushed ``run-<id>.wandb`` to disk (wandb 0.31 writes the file
        when the run's stream closes, asynchronously), so this then waits up to ``wait_s`` seconds until the
        file ends with its exit record; after that :func:`read_offline_run` sees the complete run. A timeout
        only warns (the service still completes the file, at the latest when the process exits).
        """
        if self.run is not None and not self._finished:
            if exit_code is None:
                exit_code = 1 if self._status == "failed" else 0
            self.run.finish(exit_code=exit_code)
            self._finished = True
            if wait_s > 0 and self.run_dir is not None and not _wait_for_exit_record(self.run_dir, wait_s):
                warnings.warn(
                    f"W&B run files in {self.run_dir} not complete after {wait_s:g} s",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.run_dir

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)


# ------------------------------------------------------------------------------ offline run reader

_WANDB_HEADER_LEN = 7  # b":W&B" + uint16 magic 0xBEE1 + uint8 version
_BLOCK = 32768  # leveldb-log style: records never straddle a 32 KiB block header
_REC_HEADER = struct.Struct("<IHB")  # crc32c, length, type (1 full, 2 first, 3 middle, 4 last)


def _iter_wandb_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a .wandb transaction log")
    pos, chunks = _WANDB_HEADER_LEN, []
    while pos + _REC_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _REC_HEADER.size:  # block trailer padding
            pos += left
            continue
        _crc, length, rtype = _REC_HEADER.unpack_from(data, pos)
        pos += _REC_HEADER.size
        if rtype == 0 and length == 0:
            continue
        if pos + length > len(data):  # a record still being written
            return
        chunks.append(data[pos : pos + length])
        pos += length
        if rtype in (1, 4):
            yield b"".join(chunks)
            chunks = []


def _has_exit_record(path: Path) -> bool:
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        raws = list(_iter_wandb_records(path))
    except (OSError, ValueError):
        return False
    for raw in reversed(raws):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # a partially written record
            continue
        if rec.WhichOneof("record_type") == "exit":
            return True
    return False


def _wait_for_exit_record(run_dir: Path, timeout_s: float) -> bool:
    """Poll ``run_dir/*.wandb`` until it holds an exit record (the run's stream has closed and flushed)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        logs = sorted(Path(run_dir).glob("*.wandb"))
        if logs and _has_exit_record(logs[0]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _set_nested(d: dict, keys: Sequence[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[keys[-1]] = value


def _item_keys(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def read_offline_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a W&B run directory (e.g. ``.../wandb/offline-run-<ts>-<id>``) back without any network.

    Parses ``run-<id>.wandb`` (W&B's append-only protobuf log; CRCs are not verified) with wandb's own
    protobuf classes and returns ``{"run_id", "project", "group", "name", "tags", "config", "summary",
    "history", "files", "exit_code"}`` where ``summary`` is the final summary (all updates applied),
    ``history`` a list of logged steps (dicts; images appear as their W&B JSON descriptors) and ``files``
    the paths under ``files/`` on disk.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no .wandb file in {run_dir}")
    out: dict[str, Any] = {
        "run_id": None,
        "project": None,
        "group": None,
        "name": None,
        "tags": [],
        "config": {},
        "summary": {},
        "history": [],
        "files": [],
        "exit_code": None,
    }

    def apply_config(cfg_rec: Any) -> None:
        for item in cfg_rec.update:
            _set_nested(out["config"], _item_keys(item), json.loads(item.value_json))
        for item in cfg_rec.remove:
            keys = _item_keys(item)
            d = out["config"]
            for k in keys[:-1]:
                d = d.get(k, {})
            d.pop(keys[-1], None)

    for raw in _iter_wandb_records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(run_id=r.run_id, project=r.project, group=r.run_group, name=r.display_name)
            out["tags"] = list(r.tags)
            apply_config(r.config)
        elif kind == "config":
            apply_config(rec.config)
        elif kind == "summary":
            for item in rec.summary.update:
                _set_nested(out["summary"], _item_keys(item), json.loads(item.value_json))
            for item in rec.summary.remove:
                keys = _item_keys(item)
                d = out["summary"]
                for k in keys[:-1]:
                    d = d.get(k, {})
                d.pop(keys[-1], None)
        elif kind == "history":
            step: dict[str, Any] = {}
            for item in rec.history.item:
                _set_nested(step, _item_keys(item), json.loads(item.value_json))
            out["history"].append(step)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    files_dir = run_dir / "files"
    if files_dir.is_dir():
        out["files"] = sorted(str(p.relative_to(files_dir)) for p in files_dir.rglob("*") if p.is_file())
    return out
