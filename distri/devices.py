"""Which device and dtype a job runs on, decided in the launching process without creating a CUDA context.

``device: auto`` picks CUDA only when every rank of this node can have its own GPU (``world_size`` GPUs, or
``LOCAL_WORLD_SIZE`` under ``torchrun``); otherwise the job runs on the CPU and :func:`resolve_device` prints
why. ``dtype: auto`` is float16 on CUDA (the paper's setting) and float32 on the CPU
(:func:`distri.config.resolve_dtype`).

The launching process only counts GPUs, with :func:`torch.cuda.device_count`, which asks NVML and initialises
neither torch's CUDA state nor a CUDA context (when NVML is unavailable torch falls back to
``cudaGetDeviceCount``, which initialises the driver but still creates no context). Clusters that run GPUs in
exclusive-process mode refuse a second context on a device, so the launcher must leave the GPUs to the
workers: each worker selects its GPU and creates the only context on it. :func:`cuda_device_name` reads a
GPU's name through NVML for the same reason. Nothing here imports torch at module level.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

DTYPE_BY_DEVICE = {"cuda": "float16", "cpu": "float32"}
"""What ``dtype: auto`` means on each device."""

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
"""The dtypes a job may run in (their ``torch`` names)."""


def torch_dtype(name: str):
    """The ``torch.dtype`` of one of :data:`DTYPE_NAMES` (the one map from names to dtypes)."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def visible_gpus() -> int:
    """How many CUDA devices this process may use (``CUDA_VISIBLE_DEVICES`` honoured); creates no CUDA context."""
    import torch

    return torch.cuda.device_count()


def gpus_needed(world_size: int) -> int:
    """GPUs this node needs, one per local rank: ``LOCAL_WORLD_SIZE`` under ``torchrun``, else ``world_size``."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))


def auto_device(world_size: int) -> tuple[str, str]:
    """``(device, reason)`` for ``device: auto``; the reason is empty when CUDA was picked."""
    need, have = gpus_needed(world_size), visible_gpus()
    if have >= need:
        return "cuda", ""
    if have == 0:
        return "cpu", "device=auto runs on the CPU: torch sees no CUDA GPU"
    return "cpu", (
        f"device=auto runs on the CPU: {need} rank(s) on this node need one CUDA GPU each but {have} "
        f"{'is' if have == 1 else 'are'} visible; set world_size={have} to use the GPUs "
        f"(device=cuda refuses to start instead of falling back)"
    )


def resolve_device(device: str, world_size: int = 1, say: bool = True) -> str:
    """``auto`` -> ``cuda`` or ``cpu`` (printing why not CUDA, unless ``say`` is false); ``cuda`` with too few
    GPUs raises.

    Raises ``RuntimeError`` naming what to change when ``device="cuda"`` but fewer than :func:`gpus_needed`
    GPUs are visible. Under ``torchrun`` only rank 0 prints.
    """
    if device == "auto":
        device, reason = auto_device(world_size)
        if reason and say and os.environ.get("RANK", "0") == "0":
            print(f"distri: {reason}", flush=True)
        return device
    if device == "cuda":
        need, have = gpus_needed(world_size), visible_gpus()
        if have < need:
            raise RuntimeError(
                f"device=cuda with {need} rank(s) on this node needs {need} CUDA GPU(s) (one per rank) but "
                f"{have} {'is' if have == 1 else 'are'} visible; lower world_size, or use device=cpu or auto"
            )
    return device


def resolve_runtime(cfg: dict[str, Any], say: bool = True) -> dict[str, Any]:
    """A copy of a validated config with ``device`` and ``dtype`` resolved (``cuda``/``cpu``, a dtype name).

    The workers receive (and the record keeps) the resolved values. Raises
    :class:`distri.config.ConfigError` for float16 on the CPU (``device: auto`` can fall back to it).
    """
    from distri.config import resolve_dtype

    device = resolve_device(cfg["device"], cfg["world_size"], say)
    return {**cfg, "device": device, "dtype": resolve_dtype(cfg["dtype"], device)}


def enable_tf32() -> None:
    """Let float32 matrix multiplications and convolutions on CUDA use TF32 tensor cores (a worker's setting).

    Set through the legacy flags on purpose: in this torch, setting the newer ``fp32_precision`` attributes makes
    later reads of the legacy ones (``allow_tf32``, ``get_float32_matmul_precision()``, used by libraries) raise.
    """
    import torch

    torch.set_float32_matmul_precision("high")  # CUDA: TF32 for float32 matmuls
    torch.backends.cudnn.allow_tf32 = True  # float32 convolutions (cuDNN's default, made explicit)


def cuda_device_name(index: int = 0) -> str | None:
    """The name of visible CUDA device ``index`` read through NVML (no CUDA context); None without NVML."""
    import torch

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        handle, name = ctypes.c_void_p(), ctypes.create_string_buffer(96)
        physical = torch.cuda._get_nvml_device_index(index)  # CUDA_VISIBLE_DEVICES -> NVML index
        if nvml.nvmlDeviceGetHandleByIndex_v2(physical, ctypes.byref(handle)) != 0:
            return None
        if nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name))) != 0:
            return None
        return name.value.decode(errors="replace")
    except (OSError, AttributeError, RuntimeError):
        return None
