"""Device and dtype resolution in the launching process (GPU counts simulated; no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from distri.config import ConfigError
from distri.devices import cuda_device_name, enable_tf32, resolve_device, resolve_runtime
from distri.job.environment import collect_env

TORCHRUN_VARS = ("LOCAL_WORLD_SIZE", "RANK")


@pytest.fixture
def gpus(monkeypatch):
    """Set how many GPUs torch reports; outside torchrun."""
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


@pytest.mark.parametrize(
    "count, world_size, device, says",
    [
        (0, 1, "cpu", "torch sees no CUDA GPU"),
        (1, 2, "cpu", "2 rank(s) on this node need one CUDA GPU each but 1 is visible; set world_size=1"),
        (3, 4, "cpu", "but 3 are visible"),
        (1, 1, "cuda", None),
        (8, 2, "cuda", None),
    ],
)
def test_auto_picks_cuda_only_with_one_gpu_per_rank(gpus, capsys, count, world_size, device, says):
    gpus(count)
    assert resolve_device("auto", world_size) == device
    out = capsys.readouterr().out
    if says is None:
        assert out == ""
    else:
        assert out.startswith("distri: device=auto runs on the CPU") and says in out


def test_cuda_with_too_few_gpus_says_what_to_change(gpus):
    gpus(1)
    with pytest.raises(RuntimeError, match=r"needs 2 CUDA GPU\(s\) \(one per rank\) but 1 is visible; lower"):
        resolve_device("cuda", 2)
    assert resolve_device("cpu", 2) == "cpu"


def test_torchrun_counts_the_ranks_of_this_node(gpus, monkeypatch, capsys):
    """Two nodes of 4 GPUs, 8 ranks: each node needs 4 (LOCAL_WORLD_SIZE), and only rank 0 prints."""
    gpus(4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    assert resolve_device("auto", 8) == "cuda"
    assert resolve_device("cuda", 8) == "cuda"
    gpus(2)
    assert resolve_device("auto", 8) == "cpu"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "count, device, dtype, expected",
    [(0, "auto", "auto", ("cpu", "float32")), (2, "auto", "auto", ("cuda", "float16")),
     (2, "cuda", "float32", ("cuda", "float32")), (2, "cpu", "bfloat16", ("cpu", "bfloat16"))],
)  # fmt: skip
def test_resolve_runtime(gpus, count, device, dtype, expected):
    gpus(count)
    cfg = {"device": device, "dtype": dtype, "world_size": 2, "seed": 3}
    out = resolve_runtime(cfg)
    assert (out["device"], out["dtype"]) == expected
    assert out["seed"] == 3 and cfg["device"] == device  # a copy


def test_float16_refused_when_auto_falls_back_to_cpu(gpus):
    gpus(1)
    with pytest.raises(ConfigError, match="dtype=float16 on the CPU is refused"):
        resolve_runtime({"device": "auto", "dtype": "float16", "world_size": 2})


def test_launcher_side_touches_no_cuda_state(gpus, monkeypatch):
    """Resolving a CUDA job and describing its environment only count GPUs: every torch.cuda call that would
    initialise torch's CUDA state (and could create a context) in the launching process fails this test.
    (``is_available``, used by ``cudnn.version()``, only initialises the driver: no context.)"""
    gpus(2)

    def forbidden(*args, **kwargs):
        raise AssertionError("the launching process initialised CUDA")

    for name in ("_lazy_init", "init", "set_device", "current_device", "get_device_name",
                 "get_device_properties", "synchronize", "mem_get_info"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, forbidden)
    cfg = resolve_runtime({"device": "auto", "dtype": "auto", "world_size": 2})
    env = collect_env(cfg["device"], "nccl", 2)
    assert (cfg["device"], cfg["dtype"]) == ("cuda", "float16")
    assert env["gpu_count"] == 2 and env["device_name"]
    assert not torch.cuda.is_initialized()


def test_cuda_device_name_without_nvml_is_none():
    if torch.cuda.device_count():
        pytest.skip("a GPU is visible: tests/gpu checks the name")
    assert cuda_device_name(0) is None


def test_enable_tf32_sets_the_flags_and_keeps_them_readable():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        enable_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.get_float32_matmul_precision() == "high"  # legacy readers (libraries) still work
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
