"""Device and link profiles: the hardware numbers of the cost model, each with its source.

A :class:`DeviceProfile` holds the published peak throughput per operator class and dtype, the memory
bandwidth, and three numbers calibrated from single-device latencies only (:mod:`distri.predict.calibrate`):
the fraction of peak that convolutions and linear layers reach (``matmul_efficiency``), the fraction that fused
attention reaches (``attention_efficiency``) and a fixed time per kernel (``kernel_overhead_us``: launch,
ramp-up and tail of every operator, which does not shrink when the work is split).

A :class:`LinkProfile` is an alpha-beta model of one link between the devices of a collective: ``alpha_us``
per ring step and ``bandwidth_gbs`` per direction per device (see :mod:`distri.predict.model`).

H100 and H200 have no single-device SDXL latencies to calibrate on here: they take the A100's efficiencies
and kernel overhead with their own published peaks (a starting point, said so in their ``calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Published dense tensor-core peaks (TFLOP/s, no sparsity). float32: convolutions use TF32 (cuDNN's default in
# PyTorch, torch.backends.cudnn.allow_tf32=True), matrix multiplications and attention plain FP32
# (torch.backends.cuda.matmul.allow_tf32=False by default).
# A100 SXM4 80GB: NVIDIA A100 Tensor Core GPU datasheet (2021): FP16 312, TF32 156, FP32 19.5; HBM2e 2,039 GB/s.
# H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (2023): FP16 989.5, TF32 494.7, FP32 67; HBM3 3,350 GB/s.
# H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (2024): same compute as H100 SXM; HBM3e 4,800 GB/s.
# Streaming multiprocessors: A100 108, H100/H200 SXM 132 (NVIDIA Ampere / Hopper architecture whitepapers).
# Tile 64: the 64 x 64 output tile, the smallest of the tiles cuBLAS/CUTLASS half-precision GEMMs choose
# from on these GPUs (they take smaller tiles for smaller problems), and a 64-row query block of attention.
# This is not from a datasheet: 64 and 128 were both tried against the paper's multi-GPU latencies and 64
# was kept (128 put No Comm. at 1024 px on 8 GPUs 67 % too slow); see experiments/distrifusion_fig6/README.md.


def _gpu_peaks(fp16: float, tf32: float, fp32: float) -> dict[str, dict[str, float]]:
    half = {"conv": fp16, "linear": fp16, "attention": fp16}
    return {"float16": half, "bfloat16": half, "float32": {"conv": tf32, "linear": fp32, "attention": fp32}}


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    peak_tflops: dict[str, dict[str, float]]  # dtype -> operator class -> TFLOP/s
    memory_gbs: float  # memory bandwidth, GB/s
    matmul_efficiency: float  # fraction of peak reached by convolutions and linear layers
    attention_efficiency: float  # fraction of peak reached by fused attention
    kernel_overhead_us: float  # fixed time per kernel
    sms: int = 1  # streaming multiprocessors (cores): tiles in flight at once
    tile: int = 1  # output tile side of a matmul / query block of attention
    dtype: str = "float16"  # what a run on it uses by default (distri.devices: float16 on CUDA)
    comm_overlap: bool = True  # asynchronous collectives run beside compute (GPU: NCCL's own SMs and copy
    # engines); False: they take the compute's own resource (a CPU rank of one core: gloo's threads)
    calibration: str = ""
    sources: tuple[str, ...] = field(default=())

    def calibrated(self, matmul: float, attention: float, overhead_us: float, how: str) -> DeviceProfile:
        return replace(
            self,
            matmul_efficiency=matmul,
            attention_efficiency=attention,
            kernel_overhead_us=overhead_us,
            calibration=how,
        )


@dataclass(frozen=True)
class LinkProfile:
    name: str
    description: str
    alpha_us: float  # latency of one ring step
    bandwidth_gbs: float  # per direction per device, GB/s
    sources: tuple[str, ...] = field(default=())
    wake_us: float = 0.0
    """Time a rank loses at each blocking collective it reaches from compute, beyond ``alpha``: a host thread
    that went to sleep waiting for its peers is woken late (gloo; measured by :mod:`.measure_link`). 0 for the
    GPU links: NCCL's kernels wait by polling on the device, and their launch is in the profile's overhead."""


A100_CALIBRATION = (
    "calibrated on the DistriFusion paper's one-A100 SDXL latencies (5.02 / 23.7 / 140 s at 1024 / 2048 / "
    "3840 px, 50 DDIM steps, fp16): python -m distri.predict.calibrate device=a100"
)
A100 = DeviceProfile(
    "a100", "NVIDIA A100 SXM4 80GB", _gpu_peaks(312.0, 156.0, 19.5), 2039.0,
    matmul_efficiency=0.5786, attention_efficiency=0.5935, kernel_overhead_us=2.64, sms=108, tile=64,
    calibration=A100_CALIBRATION, sources=("NVIDIA A100 Tensor Core GPU datasheet, 2021",),
)  # fmt: skip


def _from_a100(name: str, description: str, memory_gbs: float, source: str) -> DeviceProfile:
    """A Hopper SXM GPU (H100, H200: same compute, 132 SMs) with the A100's calibrated efficiencies."""
    return replace(A100, name=name, description=description, peak_tflops=_gpu_peaks(989.5, 494.7, 67.0),
                   memory_gbs=memory_gbs, sms=132, sources=(source,),
                   calibration="efficiencies and kernel overhead of the A100 calibration, peaks from the datasheet")  # fmt: skip


DEVICES: dict[str, DeviceProfile] = {
    "a100": A100,
    "h100": _from_a100("h100", "NVIDIA H100 SXM5 80GB", 3350.0, "NVIDIA H100 Tensor Core GPU datasheet, 2023"),
    "h200": _from_a100("h200", "NVIDIA H200 SXM 141GB", 4800.0, "NVIDIA H200 Tensor Core GPU datasheet, 2024"),
    # One core of this project's VM as it was when calibrated (an Intel Xeon host with AVX-512; the VM has
    # since also run on an AMD EPYC host with AVX2, about 3x slower), 1 thread per rank as in the CPU benchmark.
    # Peak: 0.2 TFLOP/s float32 (2 x 512-bit FMA units x 16 lanes x 2 FLOPs at a nominal 3 GHz: the VM does
    # not report its clock, and 1.6 GHz, used before, was exceeded by the measured runs); memory: 10
    # GB/s for one thread. No overlap of communication: gloo's threads share the rank's one core. Calibrated per class on the README's operator profile of one single-device call
    # (small_sdxl, 512 px, 6 steps, experiments/cpu_speedup/profile_ops.py): conv 2.614 s, linear 1.738 s,
    # attention 0.837 s, everything else 0.964 s, against the dry run's MACs and bytes of that call;
    # experiments/cpu_speedup/predict_check.py re-calibrates it in each run.
    "cpu": DeviceProfile(
        "cpu", "one CPU core (this project's VM, 1 thread)",
        {"float32": {"conv": 0.2, "linear": 0.2, "attention": 0.2},
         "bfloat16": {"conv": 0.2, "linear": 0.2, "attention": 0.2}}, 10.0,
        matmul_efficiency=0.3775, attention_efficiency=0.282, kernel_overhead_us=48.4, dtype="float32",
        comm_overlap=False,
        calibration="per class from the README's single-device operator profile (small_sdxl, 512 px)",
    ),
}  # fmt: skip

# Links. bandwidth_gbs: the per-direction bandwidth of one device into the collective; alpha_us: one ring
# step's latency. NVLink: A100 SXM4 has 12 third-generation links x 25 GB/s per direction = 300 GB/s (A100
# datasheet: 600 GB/s bidirectional); H100/H200 SXM 18 fourth-generation links = 450 GB/s per direction (900
# GB/s bidirectional, H100 datasheet). PCIe without NVLink: x16 Gen4 32 GB/s, Gen5 64 GB/s per direction
# (PCI-SIG base specifications 4.0 / 5.0, 16 GT/s and 32 GT/s per lane, 128b/130b). InfiniBand between nodes:
# NDR 400 Gb/s = 50 GB/s per direction per adapter (NVIDIA ConnectX-7 datasheet; one adapter per GPU as in
# DGX H100). Ring-step latencies: NVLink/NVSwitch 2 us, PCIe 5 us, InfiniBand 8 us (orders of magnitude of
# the small-message latencies NCCL reports, nccl-tests all_gather_perf at 8 bytes, divided by n - 1 steps).
LINKS: dict[str, LinkProfile] = {
    "nvlink": LinkProfile("nvlink", "NVLink 3 (A100 SXM4, NVSwitch)", 2.0, 300.0, ("NVIDIA A100 datasheet",)),
    "nvlink4": LinkProfile(
        "nvlink4", "NVLink 4 (H100/H200 SXM, NVSwitch)", 2.0, 450.0, ("NVIDIA H100 datasheet",)
    ),
    "pcie": LinkProfile("pcie", "PCIe Gen4 x16, no NVLink", 5.0, 32.0, ("PCI-SIG PCIe 4.0",)),
    "pcie5": LinkProfile("pcie5", "PCIe Gen5 x16, no NVLink", 5.0, 64.0, ("PCI-SIG PCIe 5.0",)),
    "infiniband": LinkProfile(
        "infiniband", "InfiniBand NDR 400 Gb/s between nodes", 8.0, 50.0, ("NVIDIA ConnectX-7",)
    ),
    # gloo over loopback between 2 processes of this VM, measured (python -m distri.predict.measure_link, the
    # same as predict_check.py's first step) on the quiet machine, 2026-11-26: all-gathers of 1 KiB-16 MiB
    # fitted on relative errors, and a rank's wake-up at a blocking all-gather reached from 5 ms of compute
    # (2.4 ms on average in that run; 0.9-2.5 ms over eight runs of the same day, and once 0 in a run with
    # repeats=5: a noisy quantity); predict_check.py measures all three again in each run.
    "gloo": LinkProfile(
        "gloo", "gloo over loopback (this VM)", 157.7, 0.72, ("measured here",), wake_us=2383.0
    ),
}


def device_profile(name: str) -> DeviceProfile:
    if name not in DEVICES:
        raise ValueError(f"unknown device={name!r}; valid: {', '.join(DEVICES)}")
    return DEVICES[name]


def link_profile(name: str) -> LinkProfile:
    if name not in LINKS:
        raise ValueError(f"unknown link={name!r}; valid: {', '.join(LINKS)}")
    return LINKS[name]
