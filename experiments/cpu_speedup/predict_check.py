"""The cost model against this machine: calibrate on single-device runs, predict the 2-rank runs, measure them.

    python experiments/cpu_speedup/predict_check.py                 # small_sdxl 512 px, 10 steps, 3 rounds
    python experiments/cpu_speedup/predict_check.py --quick         # 256 px, 4 steps, 1 round: does it run

In one run, on 2 gloo worker processes of one thread each:

1. the ``gloo`` link: all-gathers of several sizes and the wake-up at a blocking all-gather reached from
   compute (:func:`distri.predict.measure_link.measure`), and the memory bandwidth of one thread (a large copy);
2. the ``cpu`` device: single-device pipeline calls (rank 0 alone, one thread) at the calibration sizes and at
   ``--size``, median of ``--rounds``; :func:`distri.predict.calibrate.calibrate` fits the efficiencies and
   the kernel overhead on these latencies only;
3. the benchmark of ``bench.py`` at ``--size``: medians of the single device and of 2 ranks of
   ``naive_patch`` (rows), ``displaced_patch`` (corrected_async_gn, full_sync, no_sync) and ``tensor``;
4. the cost model's prediction of each 2-rank configuration (:func:`distri.predict.predict`, the profiles of
   1 and 2), printed beside the measured median with the error.

Exits 1 when a prediction misses its median by more than ``--tolerance`` (default 20 %). Timings taken while
other processes use the cores say nothing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def predicted_configs(warmup_steps: int) -> dict[str, tuple[str, dict]]:
    """bench.py's configurations as cost-model strategies and parameters (bench.py gives ``warmup_steps`` to
    the configurations with a ``mode``)."""
    warm = {"warmup_steps": warmup_steps}
    return {
        "naive_patch": ("naive_patch/row", {}),
        "displaced_patch/corrected_async_gn": ("displaced_patch/corrected_async_gn", warm),
        "displaced_patch/full_sync": ("displaced_patch/full_sync", warm),
        "displaced_patch/no_sync": ("displaced_patch/no_sync", warm),
        "tensor": ("tensor", {}),
    }


def single_task(env, model: str, sizes: list[int], steps: int, rounds: int) -> dict | None:
    """Rank 0 times the stock pipeline at each size (one thread) while rank 1 waits: ``{size: [s, ...]}``."""
    import torch
    import torch.distributed as dist
    from diffusers.utils import logging as dlog

    from distri.generate import generate
    from distri.models.loader import load_pipeline
    from distri.worker.job import ensure_model

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    mcfg = {"name": model, "family": "sdxl" if "sdxl" in model else "sd", "source": "tiny", "id": model}
    ensure_model(env, mcfg)
    pipe = load_pipeline(mcfg, env.device, torch.float32)
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for r in range(rounds + 1):  # round 0 warms up
        for size in sizes:
            dist.barrier()
            if env.rank == 0:
                t0 = time.perf_counter()
                generate(pipe, "a lighthouse on a cliff at sunset", 0, steps, 5.0, size, size)
                if r:
                    times[size].append(time.perf_counter() - t0)
            dist.barrier()
    return times if env.rank == 0 else None


def memory_gbs() -> float:
    """One thread's copy bandwidth (read + write) of a 64 MiB tensor, best of 5, GB/s."""
    import torch

    torch.set_num_threads(1)
    src = torch.ones(2**24)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_sdxl")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--calibration-sizes", default="256,384", help="single-device sizes besides --size")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.20)
    ap.add_argument("--quick", action="store_true", help="256 px (calibration 128, 192), 4 steps, 1 round")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.calibration_sizes, a.steps, a.rounds = 256, "128,192", 4, 1

    from distri.launch import WorkerPool
    from distri.models.tiny import build_tiny
    from distri.predict import predict
    from distri.predict.calibrate import calibrate
    from distri.predict.measure_link import measure
    from distri.predict.profiles import DEVICES, LinkProfile
    from distri.predict.store import costs, setting_of

    alpha, bw, wake, _ = measure(2, repeats=10 if a.quick else 30)
    link = LinkProfile("gloo", "gloo over loopback, measured in this run", alpha, bw, wake_us=wake)
    base = replace(DEVICES["cpu"], memory_gbs=memory_gbs())
    sizes = sorted({*(int(s) for s in a.calibration_sizes.split(",")), a.size})
    build_tiny(a.model)
    with WorkerPool(2, device="cpu", threads=1) as pool:
        single = pool.run("experiments.cpu_speedup.predict_check:single_task", model=a.model, sizes=sizes,
                          steps=a.steps, rounds=a.rounds)[0]  # fmt: skip
        bench = pool.run("experiments.cpu_speedup.bench:bench_task", model=a.model, size=a.size,
                         steps=a.steps, rounds=a.rounds, warmup_steps=a.warmup_steps)[0]  # fmt: skip
    points = [(costs(setting_of(a.model, s, s, 1, "none", False, "float32", 2, {})), a.steps,
               statistics.median(single[s])) for s in sizes]  # fmt: skip
    dev = calibrate(base, points, f"calibrated in this run on single-device latencies at {sizes} px")
    print(f"link gloo: alpha {alpha:.1f} us per ring step, {bw:.2f} GB/s, wake-up {wake:.0f} us per blocking "
          f"collective; memory {dev.memory_gbs:.1f} GB/s")  # fmt: skip
    print(f"cpu: matmul_efficiency={dev.matmul_efficiency} attention_efficiency={dev.attention_efficiency} "
          f"kernel_overhead_us={dev.kernel_overhead_us} ({dev.calibration})")  # fmt: skip
    for s in sizes:
        print(f"  single device {s} px: {statistics.median(single[s]):.3f} s measured (calibration point)")
    print(
        f"\n{a.model} {a.size}x{a.size}, {a.steps} steps, 2 ranks x 1 thread, gloo; median of {a.rounds} round(s)"
    )
    print(f"  {'configuration':<38} {'measured (s)':>12} {'predicted (s)':>13} {'error':>7}")
    worst = 0.0
    for name, (strategy, params) in predicted_configs(a.warmup_steps).items():
        p = predict(a.model, a.size, a.size, 2, strategy, dev, link, a.steps, dtype="float32", **params)
        measured = statistics.median(bench[name])
        err = p.total_s / measured - 1
        worst = max(worst, abs(err))
        print(f"  {name:<38} {measured:>12.3f} {p.total_s:>13.3f} {err:>+7.1%}")
    ok = worst <= a.tolerance
    print(f"\nworst error {worst:.1%}: {'within' if ok else 'beyond'} {a.tolerance:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
