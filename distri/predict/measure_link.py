"""Measure the ``gloo`` link profile: all-gathers of several sizes between processes on this machine.

    python -m distri.predict.measure_link                # 2 ranks, 1 KiB .. 16 MiB, 20 repeats each
    python -m distri.predict.measure_link world_size=2 repeats=50

Each rank is one process with one thread, on gloo over loopback; every size is all-gathered ``repeats`` times
after a barrier and a warm-up, and rank 0's median per call is kept. A least-squares line through
``time = (n - 1) alpha + bytes / bandwidth`` (``bytes``: the ledger's ring bytes, ``(n - 1) x`` the local part),
fitted on relative errors so that the small messages, which set ``alpha``, count as much as the large ones,
gives the profile, printed as a :class:`distri.predict.profiles.LinkProfile` line to put in ``LINKS``.
Measure on a quiet machine: other processes on the cores inflate both terms.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

SIZES = [2**k for k in range(10, 25, 2)]  # bytes of the local part: 1 KiB (GroupNorm statistics) .. 16 MiB


def _rank(rank: int, world_size: int, repeats: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    rows = []
    for size in SIZES:
        x = torch.zeros(size // 4)
        y = torch.empty(world_size * x.numel())
        dist.all_gather_single(y, x)
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_gather_single(y, x)
            times.append(time.perf_counter() - t0)
        rows.append((size, statistics.median(times)))
    if rank == 0:
        with open(out, "w") as f:
            f.writelines(f"{s} {t}\n" for s, t in rows)
    dist.destroy_process_group()


def measure(world_size: int = 2, repeats: int = 20) -> tuple[float, float, list[tuple[int, float]]]:
    """``(alpha_us, bandwidth_gbs, [(local bytes, median s), ...])`` of gloo all-gathers on this machine."""
    import numpy as np
    import torch.multiprocessing as mp

    from distri.launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.txt")
        mp.spawn(_rank, args=(world_size, repeats, free_port(), out), nprocs=world_size)
        rows = [(int(s), float(t)) for s, t in (line.split() for line in open(out))]
    ring = np.array([s * (world_size - 1) for s, _ in rows], dtype=float)
    secs = np.array([t for _, t in rows])
    slope, intercept = np.polyfit(ring, secs, 1, w=1.0 / secs)  # residuals relative to each time
    return max(intercept, 0.0) / (world_size - 1) * 1e6, 1.0 / slope / 1e9, rows


def main(argv: list[str] | None = None) -> None:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    alpha, bw, rows = measure(int(args.get("world_size", 2)), int(args.get("repeats", 20)))
    for size, t in rows:
        print(f"  all-gather {size / 2**10:>8.0f} KiB per rank: {t * 1e3:8.3f} ms (median)")
    print(f'"gloo": LinkProfile("gloo", "gloo over loopback, this machine", {alpha:.1f}, {bw:.2f}, ...)')


if __name__ == "__main__":
    main()
