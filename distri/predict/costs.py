"""Per-layer cost of one device, from the dry run (:mod:`distri.dryrun`).

The real UNet runs on the meta device as rank 0 of ``world_size`` on torch's fake process group (the dry run's
:func:`~distri.dryrun.simulate.fake_process_group`); a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
sees every ATen operator the strategy and the model issue and records, per operator:

* the layer: the innermost named module running it (``down_blocks.1.attentions.0...to_q``);
* its class: ``conv`` (``aten.convolution``), ``linear`` (``mm``/``addmm``/``bmm``/``baddbmm``),
  ``attention`` (one call of ``F.scaled_dot_product_attention``: one fused kernel on a GPU or a CPU; on the
  meta device torch decomposes it into matmuls and a softmax over the whole score matrix, which no real
  device runs, so the call is recorded as one operator at the torch-function level and what it decomposes
  into is not) or ``other`` (element-wise, normalisation, copies);
* MACs: FLOPs of :data:`torch.utils.flop_counter.flop_registry` / 2 (the counter the dry run uses);
* bytes of activations and weights read and written: every distinct input and output tensor, once;
* the dtype it computes in (its widest tensor's);
* its parallel shape ``(m, n)``, what a GPU splits into thread-block tiles: output rows and columns of a
  matrix multiplication (``m`` = batch x rows for a batched one), output pixels and channels of a
  convolution (implicit GEMM), and for attention the number of (batch, head) pairs and query rows; ``(0, 0)``
  for the other operators.

Views (operators whose output aliases an input without writing it) launch no kernel and are not counted;
in-place operators are. The collectives come from the strategy's communication ledger
(:meth:`distri.parallel.ledger.CommLedger.collectives`): kind, operation, group size, bytes and whether the
strategy issued them blocking or asynchronously, for every simulated step.

:func:`step_costs` returns a :class:`StepCosts`: the operators of one steady step (as a histogram of identical
operators, which is what the latency model needs), the collectives of the warm-up and steady steps, and on
request the per-layer table. :func:`pipeline_costs` adds what does not split: the VAE decoder and the text
encoders (traced the same way on the meta device) and the scheduler's update.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from distri.predict.model import CLASSES, StepCosts

aten = torch.ops.aten
_CLASS = {
    aten.convolution: "conv",
    aten.mm: "linear",
    aten.addmm: "linear",
    aten.bmm: "linear",
    aten.baddbmm: "linear",
}
_FREE = {aten.empty, aten.empty_strided, aten.empty_like, aten.detach, aten.lift_fresh}
"""Operators that allocate or relabel memory without a kernel that touches it."""


def _is_view(func: Any) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass
class OpRecord:
    layer: str
    cls: str
    macs: int
    bytes: int
    m: int = 0
    n: int = 0
    dtype: str = ""


def _shape(cls: str, out: Any) -> tuple[int, int]:
    """``(m, n)`` of a conv or linear operator's output (see the module docstring)."""
    if cls == "conv":  # [B, C, H, W]
        return out.shape[0] * out.shape[2:].numel(), out.shape[1]
    if cls == "linear":  # [M, N] or [B, M, N]
        return out.shape[:-1].numel(), out.shape[-1]
    return 0, 0


class _Attention(TorchFunctionMode):
    """Records each ``F.scaled_dot_product_attention`` call as one ``attention`` operator (see the module
    docstring): MACs ``B * H * Lq * Lk * (D_qk + D_v)`` (scores and the weighted sum), bytes of q, k, v, out."""

    def __init__(self, tracer: CostTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention or self.tracer.muted:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        self.tracer.muted = True
        try:
            out = func(*args, **kwargs)
        finally:
            self.tracer.muted = False
        macs = q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        heads = q.shape[:-2].numel()
        self.tracer.add("attention", macs, _tensor_bytes([q, k, v, out]), q.dtype, heads, q.shape[-2])
        return out


class CostTracer(TorchDispatchMode):
    """Records every kernel-launching ATen operator (see the module docstring) while :meth:`trace` is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpRecord] = []
        self.muted = False
        self._names: dict[int, str] = {}
        self._stack: list[str] = []

    def add(self, cls: str, macs: int, nbytes: int, dtype: torch.dtype, m: int = 0, n: int = 0) -> None:
        layer = self._stack[-1] if self._stack else ""
        name = str(dtype).removeprefix("torch.")
        self.ops.append(OpRecord(layer, cls, int(macs), int(nbytes), int(m), int(n), name))

    @contextmanager
    def trace(self, model: torch.nn.Module) -> Iterator[CostTracer]:
        """Record the operators run inside, each attributed to the innermost named module of ``model`` running
        it (global forward hooks)."""
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._names = {id(m): n for n, m in model.named_modules()}

        def pre(mod: torch.nn.Module, args: Any) -> None:
            self._stack.append(self._names.get(id(mod), self._stack[-1] if self._stack else ""))

        def post(mod: torch.nn.Module, args: Any, out: Any) -> None:
            self._stack.pop()

        hooks = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        try:
            with _Attention(self), self, torch.no_grad():
                yield self
        finally:
            for h in hooks:
                h.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.muted or func.namespace != "aten" or func._overloadpacket in _FREE or _is_view(func):
            return out
        packet = func._overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        cls = _CLASS.get(packet, "other")
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = max(floats, key=lambda d: d.itemsize) if floats else torch.float32
        self.add(cls, flops // 2, _tensor_bytes(tensors), dtype, *_shape(cls, out))
        return out


def histogram(ops: list[OpRecord]) -> list[list[Any]]:
    """``[[class, macs, bytes, m, n, dtype, count], ...]``: identical operators counted once (the model's
    input)."""
    counts = Counter((o.cls, o.macs, o.bytes, o.m, o.n, o.dtype) for o in ops)
    return [[*key, count] for key, count in sorted(counts.items())]


def layer_table(ops: list[OpRecord]) -> dict[str, dict[str, int]]:
    """Per layer: MACs per class, bytes read and written, kernels."""
    table: dict[str, dict[str, int]] = defaultdict(
        lambda: {**dict.fromkeys(CLASSES, 0), "bytes": 0, "kernels": 0}
    )
    for o in ops:
        row = table[o.layer]
        row[o.cls] += o.macs
        row["bytes"] += o.bytes
        row["kernels"] += 1
    return dict(table)


# -- the parts that do not split -----------------------------------------------------------------------------
PARTS = json.loads((Path(__file__).resolve().parent / "parts.json").read_text())


def _parts_spec(model: str) -> dict[str, Any]:
    """VAE and text-encoder configs of ``model``: bundled for full-size models, the builder's for local ones."""
    if model in PARTS:
        return PARTS[model]
    from distri.models.tiny import tiny_spec

    spec = tiny_spec(model)  # ValueError names the valid models
    encoders = [spec[k] for k in ("text_encoder", "text_encoder_2") if k in spec]
    vocab = {
        "vocab_size": 49408
    }  # CLIP's; the locally built tokenizers use a smaller one (a lookup either way)
    return {"vae": spec["vae"], "vae_dtype": None, "text_encoders": [{**vocab, **e} for e in encoders],
            "negative_pass": spec["family"] != "sdxl"}  # fmt: skip


def _trace(model: torch.nn.Module, fn: Any) -> list[list[Any]]:
    tracer = CostTracer()
    with tracer.trace(model):
        fn()
    return histogram(tracer.ops)


def _upcast(vae: torch.nn.Module, spec: dict[str, Any], dtype: torch.dtype) -> None:
    """What the SDXL pipeline of diffusers 0.24 (the DistriFusion code's) does to a half-precision VAE with
    ``force_upcast``: float32, but for ``vae_half_modules``, which stay in ``dtype`` when attention runs
    through PyTorch's SDPA; the decoder casts to float32 after its middle block. (Newer diffusers upcast the
    whole VAE, middle block included.)"""
    if not spec.get("vae_dtype") or dtype == torch.float32:
        return
    vae.to(torch.float32)
    for name in spec.get("vae_half_modules", []):
        vae.get_submodule(name).to(dtype)
    vae.decoder.mid_block.register_forward_hook(lambda mod, args, out: out.float())


def non_split_costs(model: str, height: int, width: int, dtype: str) -> dict[str, list[list[Any]]]:
    """Histograms of what every rank runs whole: ``vae_decode`` (upcast as the pipeline does) and ``text_encoders``
    once per call, the ``scheduler`` (CFG combination and the DDIM update of the whole latent) once per step."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextConfig, CLIPTextModel

    from distri.devices import torch_dtype

    spec = _parts_spec(model)
    dt = torch_dtype(dtype)
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # .to(dtype) warns about float32 modules; the VAE has none
    with torch.device("meta"):
        vae = AutoencoderKL(**spec["vae"]).to(dt).eval()
        _upcast(vae, spec, dt)
        dlogging.set_verbosity(verbosity)
        latent = torch.empty(1, spec["vae"]["latent_channels"], height // 8, width // 8, dtype=dt)
        out = {"vae_decode": _trace(vae, lambda: vae.decode(latent))}
        texts: list[list[Any]] = []
        prompts = 2 if spec["negative_pass"] else 1
        for cfg in spec["text_encoders"]:
            enc = CLIPTextModel(CLIPTextConfig(**cfg)).to(dt).eval()
            ids = torch.zeros(prompts, cfg["max_position_embeddings"], dtype=torch.long)
            texts += _trace(enc, lambda enc=enc, ids=ids: enc(ids))
        out["text_encoders"] = texts
        x = torch.empty(1, 4, height // 8, width // 8, dtype=dt)
        sched = DDIMScheduler()
        sched.set_timesteps(50)

        def step() -> None:
            both = torch.cat([x, x])  # the pipeline's CFG batch
            uncond, cond = both.chunk(2)
            sched.step(uncond + 5.0 * (cond - uncond), int(sched.timesteps[1]), x)

        out["scheduler"] = _trace(torch.nn.Module(), step)
    return out


# -- the UNet step ------------------------------------------------------------------------------------------
def step_costs(model: str, height: int, width: int, world_size: int, strategy: str, layers: bool = False,
               **kw: Any) -> StepCosts:  # fmt: skip
    """One device's :class:`StepCosts` from the dry run (rank 0 of ``world_size``); ``kw`` are
    :func:`distri.dryrun.dryrun`'s (``cfg_split``, ``dtype``, ``batch`` = the CFG batch, strategy parameters)."""
    from distri.dryrun.simulate import dryrun

    tracer = CostTracer()
    r = dryrun(model, height, width, world_size, strategy, count_macs=False, tracer=tracer, **kw)
    steady, steps, dtype = r["steady_steps"], r["steps"], r["dtype"]
    warm = [s for s in range(steps) if s not in steady]
    setting = {
        k: r[k] for k in ("model", "height", "width", "world_size", "strategy", "cfg_split", "dtype", "batch")
    }
    setting["params"] = r["strategy_params"]
    return StepCosts(
        setting=setting,
        ops=histogram(tracer.ops),
        steady_comm=r["per_step"][steady[-1]]["collectives"],
        warmup_comm=r["per_step"][warm[0]]["collectives"] if warm else [],
        non_split=non_split_costs(model, height, width, dtype),
        layers=layer_table(tracer.ops) if layers else None,
    )
