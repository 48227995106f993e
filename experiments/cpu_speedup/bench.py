"""Speed of the patch strategies on CPU: 1 rank against 2 ranks, measured side by side in one run.

    python experiments/cpu_speedup/bench.py                       # defaults below
    python experiments/cpu_speedup/bench.py --model tiny_sdxl --size 512 --steps 8 --rounds 3

Method: one pool of 2 gloo worker processes, each limited to one thread (``torch.set_num_threads(1)``), both
holding the same pipeline. Each round times one whole pipeline call per configuration, in an order rotated from
round to round (so drift and position effects spread over all configurations):

* ``single``: rank 0 runs the stock pipeline alone (one thread) while rank 1 waits in a barrier;
* ``naive_patch`` (row split), ``displaced_patch`` with ``corrected_async_gn``, ``full_sync`` and ``no_sync``,
  ``tensor``: both ranks, the strategy applied for the call and removed after it.

Every call starts after a barrier; the time is rank 0's wall time of the whole call (``time.perf_counter``).
One untimed warm-up call per configuration precedes the rounds. The script prints the median over rounds of
each configuration, the speedup ``median(single) / median(config)`` and the per-step time of ``single`` (the
issue asks for a model and resolution where one step takes at least ~0.2 s on one core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

CONFIGS = {
    "single": None,
    "naive_patch": ("distri.parallel.naive_patch:apply", {"split_scheme": "row"}),
    "displaced_patch/corrected_async_gn": (
        "distri.parallel.displaced_patch:apply",
        {"mode": "corrected_async_gn"},
    ),
    "displaced_patch/full_sync": ("distri.parallel.displaced_patch:apply", {"mode": "full_sync"}),
    "displaced_patch/no_sync": ("distri.parallel.displaced_patch:apply", {"mode": "no_sync"}),
    "tensor": ("distri.parallel.tensor:apply", {}),
}


def bench_task(env, model: str, size: int, steps: int, rounds: int, warmup_steps: int) -> dict | None:
    """Runs on both ranks; rank 0 returns ``{config: [seconds per round]}``."""
    import torch
    import torch.distributed as dist
    from diffusers.utils import logging as dlog

    from distri.generate import generate
    from distri.launch import locate
    from distri.models.loader import load_pipeline
    from distri.worker.job import ensure_model

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    family = "sdxl" if "sdxl" in model else "sd"
    mcfg = {"name": model, "family": family, "source": "tiny", "id": model}
    ensure_model(env, mcfg)
    pipe = load_pipeline(mcfg, env.device, torch.float32)
    ctx = env.context(1)
    names = list(CONFIGS)
    times: dict[str, list[float]] = {n: [] for n in names}

    def one(name: str) -> float | None:
        spec = CONFIGS[name]
        handle = None
        if spec is not None:
            target, params = spec
            if "mode" in params:
                params = dict(params, warmup_steps=min(warmup_steps, steps))
            handle = locate(target)(pipe.unet, ctx, **params)
            handle.reset()
        dist.barrier()
        dt = None
        if spec is not None or env.rank == 0:
            t0 = time.perf_counter()
            generate(pipe, "a lighthouse on a cliff at sunset", 0, steps, 5.0, size, size)
            dt = time.perf_counter() - t0
        if handle is not None:
            handle.remove()
        dist.barrier()
        return dt

    for name in names:  # warm-up
        one(name)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            dt = one(name)
            if env.rank == 0:
                times[name].append(dt)
    return times if env.rank == 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_sdxl")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--warmup-steps", type=int, default=1, help="displaced patch synchronous steps after step 0"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    a = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from distri.launch import WorkerPool
    from distri.models.tiny import build_tiny

    build_tiny(a.model)
    with WorkerPool(2, device="cpu", threads=1) as pool:
        times = pool.run(
            "experiments.cpu_speedup.bench:bench_task",
            model=a.model, size=a.size, steps=a.steps, rounds=a.rounds, warmup_steps=a.warmup_steps,
        )[0]  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["single"]
    print(
        f"{a.model} {a.size}x{a.size}, {a.steps} DDIM steps (guidance 5: UNet batch 2), displaced warm-up "
        f"{a.warmup_steps}+1 steps; CPU, gloo, 2 ranks x 1 thread vs 1 rank x 1 thread"
    )
    print(
        f"method: whole pipeline call, rank 0 wall time, median of {a.rounds} alternating rounds after 1 warm-up"
    )
    print(f"single device: {base / a.steps:.3f} s per step (whole call / steps)\n")
    print(f"  {'configuration':<38} {'median (s)':>10} {'min (s)':>8} {'speedup':>8}")
    for k, v in med.items():
        print(f"  {k:<38} {v:>10.3f} {min(times[k]):>8.3f} {base / v:>7.2f}x")
    d, ns, fs = (
        med["displaced_patch/corrected_async_gn"],
        med["displaced_patch/no_sync"],
        med["displaced_patch/full_sync"],
    )
    print(
        f"\ndisplaced (corrected_async_gn) vs no_sync: {d / ns:.3f}x the time; vs full_sync: {d / fs:.3f}x the time"
    )
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "times_s": times}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
