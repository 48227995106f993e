"""Where the time of one pipeline call goes, per operator, on rank 0 of 2 (CPU, gloo, 1 thread per rank).

    python experiments/cpu_speedup/profile_ops.py --size 512 --steps 6

Profiles (``torch.profiler``, CPU activities, self time per operator) one whole pipeline call of the single
device, of ``naive_patch`` (rows) and of ``displaced_patch`` (``no_sync`` and ``corrected_async_gn``, warm-up 1+1
steps), after one untimed call each, and prints the operators that take the most self time in any of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RUNS = {
    "single": None,
    "naive_patch": ("distri.parallel.naive_patch:apply", {"split_scheme": "row"}),
    "displaced/no_sync": ("distri.parallel.displaced_patch:apply", {"mode": "no_sync", "warmup_steps": 1}),
    "displaced/corrected": ("distri.parallel.displaced_patch:apply", {"warmup_steps": 1}),
}


def profile_task(env, model: str, size: int, steps: int) -> dict | None:
    import torch
    import torch.distributed as dist
    from diffusers.utils import logging as dlog
    from torch.profiler import ProfilerActivity, profile

    from distri.generate import generate
    from distri.launch import locate
    from distri.models.loader import load_pipeline
    from distri.worker.job import ensure_model

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    mcfg = {"name": model, "family": "sdxl" if "sdxl" in model else "sd", "source": "tiny", "id": model}
    ensure_model(env, mcfg)
    pipe = load_pipeline(mcfg, env.device, torch.float32)
    ctx = env.context(1)
    out: dict[str, dict[str, float]] = {}
    for name, spec in RUNS.items():
        handle = locate(spec[0])(pipe.unet, ctx, **spec[1]) if spec else None
        for rep in range(2):
            if handle is not None:
                handle.reset()
            dist.barrier()
            if spec is None and env.rank != 0:
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                generate(pipe, "a lighthouse on a cliff at sunset", 0, steps, 5.0, size, size)
            if rep == 1:
                out[name] = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        if handle is not None:
            handle.remove()
        dist.barrier()
    return out if env.rank == 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_sdxl")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from distri.launch import WorkerPool
    from distri.models.tiny import build_tiny

    build_tiny(a.model)
    with WorkerPool(2, device="cpu", threads=1) as pool:
        res = pool.run(
            "experiments.cpu_speedup.profile_ops:profile_task", model=a.model, size=a.size, steps=a.steps
        )[0]
    names = list(res)
    ops = sorted({k for r in res.values() for k in r}, key=lambda k: -max(r.get(k, 0) for r in res.values()))
    print(f"{a.model} {a.size}x{a.size}, {a.steps} steps; self CPU seconds per operator, rank 0, one call")
    print(f"  {'operator':<52}" + "".join(f"{n:>21}" for n in names))
    for k in ops[: a.top]:
        print(f"  {k[:52]:<52}" + "".join(f"{res[n].get(k, 0):>21.3f}" for n in names))
    rest = [sum(v for k, v in res[n].items() if k not in ops[: a.top]) for n in names]
    print(f"  {'(all other operators)':<52}" + "".join(f"{v:>21.3f}" for v in rest))
    print(f"  {'total':<52}" + "".join(f"{sum(res[n].values()):>21.3f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
