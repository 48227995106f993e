"""What a job ran on: software versions, device, git commit (:func:`collect_env`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


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
    cuda_ok = torch.cuda.device_count() > 0  # NVML: no CUDA context in the launching process
    if dev_type == "cuda" and cuda_ok:
        from distri.devices import cuda_device_name

        device_name = cuda_device_name(torch.device(device).index or 0) or "CUDA GPU (name unknown: no NVML)"
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
