"""The latency model: one device's costs (:mod:`distri.predict.costs`) on a device and a link profile.

Per operator ``o`` of class ``c`` (conv, linear, attention, other) with ``M`` MACs and ``B`` bytes read and
written, on a device of peak ``P_c`` (its dtype's), efficiency ``e_c``, memory bandwidth ``W`` and ``S``
streaming multiprocessors that each take one output tile of ``T x T`` at a time::

    t(o) = max(2 M q / (e_c P_c), B / W) + k            (k: the fixed time per kernel)
    q    = ceil(tiles / S) S / (tiles' useful fraction x tiles)      (wave quantisation, >= 1)

A matrix multiplication or convolution of output ``m x n`` has ``tiles = ceil(m / T) ceil(n / T)``, of
which the useful fraction is ``m n / (tiles T^2)``; fused attention has ``tiles = heads ceil(L_q / T)``
(one query block per tile). So ``q = 1`` for large operators and grows when an operator is too small to fill
the device: the per-device work of many devices, or a layer cut thin by tensor parallelism.

Per collective of a group of ``n`` ranks on a link of latency ``a`` per ring step and bandwidth ``b``::

    t = s a + bytes / b (+ w if blocking),   s = n - 1 (ring all-gather), 2 (n - 1) (ring all-reduce)

where ``bytes`` is what one rank sends by the ring algorithm (the ledger's paper convention: all-gather
``(n - 1) x`` the local part, all-reduce ``2 (n - 1) / n x`` the tensor) and ``w`` (the link's ``wake_us``)
is what a rank loses at a blocking collective it reaches from compute: measured for gloo, where a waiting
thread sleeps and wakes late; 0 for NCCL on GPUs. A step of the UNet:

    compute   C = sum of t(o) over the step's operators
    exposed   E = sum of the blocking collectives + max(0, A - C)

where ``A`` is the sum of the asynchronous collectives, which the strategy issued during step ``t`` and waits
for at step ``t + 1``: one communication stream works through them in order while step ``t + 1`` computes,
so only what outlasts a step's compute is exposed. On a device whose profile says it cannot overlap
(``comm_overlap=False``: a CPU rank with one core, where gloo's threads take the core the compute needs)
``E = sum of all collectives``. Which collectives are blocking is what the strategy itself
issued (the ledger's ``blocking`` flag), so the model needs no per-strategy rule: ``full_sync`` and ``tensor``
block on all, displaced patch's asynchronous modes on the output gather only after the warm-up (every
collective of a warm-up step blocks), ``no_sync`` and naive patch send only the output gather, a CFG split adds
one blocking gather per step. The whole call of ``T`` steps, ``w`` of them warm-up steps:

    total = w (C + E_warm) + (T - w) (C + E) + T S + V + X

with ``S`` the scheduler's per-step update, ``V`` the VAE decoder and ``X`` the text encoders, which every
rank runs whole (the non-split parts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from distri.predict.profiles import DeviceProfile, LinkProfile

CLASSES = ("conv", "linear", "attention", "other")
"""Operator classes of the costs (:mod:`distri.predict.costs` says which operators fall in each)."""


@dataclass
class StepCosts:
    """One device's costs of one UNet call, and of the parts of the pipeline that do not split.

    ``ops``: histogram of a steady step's operators (:func:`distri.predict.costs.histogram`);
    ``warmup_comm`` / ``steady_comm``: the collectives of one warm-up (synchronous) step and of one steady step
    (ledger records, per step); ``non_split``: histograms of the pipeline parts every rank runs whole, per call
    (``vae_decode``, ``text_encoders``) and per step (``scheduler``).
    """

    setting: dict[str, Any]
    ops: list[list[Any]]
    steady_comm: list[dict[str, Any]]
    warmup_comm: list[dict[str, Any]] = field(default_factory=list)
    non_split: dict[str, list[list[Any]]] = field(default_factory=dict)
    layers: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepCosts:
        return cls(**d)

    def totals(self) -> dict[str, int]:
        """A steady step's MACs per class, bytes and kernels."""
        out = {**dict.fromkeys(CLASSES, 0), "bytes": 0, "kernels": 0}
        for c, macs, b, _, _, _, count in self.ops:
            out[c] += macs * count
            out["bytes"] += b * count
            out["kernels"] += count
        return out


_HOPS = {"all_gather": 1, "all_reduce": 2}


def quantisation(cls: str, m: int, n: int, device: DeviceProfile) -> float:
    """``q`` of the module docstring: the work the device's tiles do, over the operator's work."""
    t, sms = device.tile, device.sms
    if not m or not n:
        return 1.0
    if cls == "attention":
        tiles, useful = m * math.ceil(n / t), m * n / t
    else:
        tiles, useful = math.ceil(m / t) * math.ceil(n / t), m * n / t**2
    return math.ceil(tiles / sms) * sms / useful


def op_time(cls: str, macs: int, nbytes: int, m: int, n: int, dtype: str, device: DeviceProfile) -> float:
    """Seconds of one operator (see the module docstring)."""
    t = nbytes / (device.memory_gbs * 1e9)
    if cls != "other" and macs:
        eff = device.attention_efficiency if cls == "attention" else device.matmul_efficiency
        q = quantisation(cls, m, n, device)
        t = max(t, 2 * macs * q / (eff * device.peak_tflops[dtype][cls] * 1e12))
    return t + device.kernel_overhead_us * 1e-6


def ops_time(ops: list[list[Any]], device: DeviceProfile) -> float:
    """Seconds of a histogram ``[[class, macs, bytes, m, n, dtype, count], ...]`` run one after another."""
    return sum(count * op_time(c, macs, b, m, n, dt, device) for c, macs, b, m, n, dt, count in ops)


def comm_time(records: list[dict[str, Any]], link: LinkProfile, blocking: bool) -> float:
    """Seconds of the blocking (or the asynchronous) collectives among ledger ``records``."""
    wake = link.wake_us if blocking else 0.0
    return sum(
        r["calls"] * (_HOPS[r["op"]] * (r["n"] - 1) * link.alpha_us + wake) * 1e-6
        + r["bytes"] / (link.bandwidth_gbs * 1e9)
        for r in records
        if r["blocking"] == blocking
    )


def exposed(
    records: list[dict[str, Any]], link: LinkProfile, compute_s: float, overlap: bool = True
) -> float:
    """Communication of one step not hidden behind its ``compute_s``: the blocking collectives, and the
    asynchronous ones beyond the compute (all of them on a device that cannot overlap, ``overlap=False``)."""
    hidden = compute_s if overlap else 0.0
    return comm_time(records, link, True) + max(0.0, comm_time(records, link, False) - hidden)


@dataclass
class Prediction:
    """A predicted pipeline call; ``to_dict()`` is what :func:`analysis.frame.predictions_frame` reads."""

    setting: dict[str, Any]
    total_s: float
    compute_s: float  # UNet compute of the whole call
    exposed_comm_s: float  # exposed communication of the whole call
    non_split_s: float  # VAE decoder, text encoders, scheduler
    per_step: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_costs(
    costs: StepCosts, steps: int, warmup_steps: int, device: DeviceProfile, link: LinkProfile
) -> Prediction:
    """The latency of a call of ``steps`` UNet steps, ``warmup_steps`` of them synchronous."""
    compute = ops_time(costs.ops, device)
    e_steady = exposed(costs.steady_comm, link, compute, device.comm_overlap)
    e_warm = exposed(costs.warmup_comm, link, compute, device.comm_overlap) if costs.warmup_comm else e_steady
    ns = costs.non_split
    per_call = ops_time(ns["vae_decode"], device) + ops_time(ns["text_encoders"], device)
    scheduler = ops_time(ns["scheduler"], device)
    warm = min(warmup_steps, steps)
    exposed_total = warm * e_warm + (steps - warm) * e_steady
    non_split = per_call + steps * scheduler
    setting = {**costs.setting, "steps": steps, "device": device.name, "link": link.name}
    return Prediction(
        setting=setting,
        total_s=steps * compute + exposed_total + non_split,
        compute_s=steps * compute,
        exposed_comm_s=exposed_total,
        non_split_s=non_split,
        per_step={
            "compute_s": compute,
            "exposed_comm_s": e_steady,
            "warmup_exposed_comm_s": e_warm,
            "scheduler_s": scheduler,
        },  # fmt: skip
    )
