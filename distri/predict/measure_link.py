"""Measure the ``gloo`` link profile: all-gathers of several sizes between processes on this machine.

    python -m distri.predict.measure_link                # 2 ranks, 1 KiB .. 16 MiB, 20 repeats each
    python -m distri.predict.measure_link world_size=2 repeats=50

Each rank is one process with one thread, on gloo over loopback; every size is all-gathered ``repeats`` times
after a barrier and a warm-up, and rank 0's median per call is kept. A least-squares line through
``time = (n - 1) alpha + bytes / bandwidth`` (``bytes``: the ledger's ring bytes, ``(n - 1) x`` the local part),
fitted on relative errors so that the small messages, which set ``alpha``, count as much as the large ones,
gives ``alpha`` and the bandwidth.

Then the wake-up: every rank computes for a few milliseconds (matrix products, as many as take ~5 ms on rank
0: a layer's worth of work) and all-gathers 1 KiB, ``WAKE_REPEATS`` times in a row; the time rank 0 spends
in that all-gather beyond the median of the back-to-back ones is what a rank loses at a blocking collective it
reaches from compute: the other rank's skew and, above all, the wake-up of a thread that went to sleep
waiting (on this VM single waits of ~3-5 ms are common, and their mean was 0.9-2.5 ms over eight runs,
where back-to-back collectives take ~0.3 ms). Its mean is ``wake_us``.
The three numbers are printed as a :class:`distri.predict.profiles.LinkProfile` line to put in ``LINKS``.
Measure on a quiet machine: other processes on the cores inflate every term.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

SIZES = [2**k for k in range(10, 25, 2)]  # bytes of the local part: 1 KiB (GroupNorm statistics) .. 16 MiB
SEGMENT_S = 0.005  # compute before each all-gather of the wake-up measurement
WAKE_REPEATS = 100  # all-gathers of the wake-up measurement (its losses are bimodal: average many)


def _products(n: int, a) -> None:
    import torch

    for _ in range(n):
        torch.mm(a, a)


def _wake_s(back_to_back_s: float) -> float:
    """Mean time an all-gather of 1 KiB takes beyond ``back_to_back_s`` when every rank reaches it from
    ~``SEGMENT_S`` of compute (see the module doc)."""
    import torch
    import torch.distributed as dist

    a = torch.randn(256, 256)
    t0 = time.perf_counter()
    _products(20, a)
    n = torch.tensor([max(1, round(SEGMENT_S / ((time.perf_counter() - t0) / 20)))])
    dist.broadcast(n, 0)  # every rank does rank 0's amount of work
    x, y = torch.zeros(256), torch.empty(dist.get_world_size() * 256)
    waits = []
    dist.barrier()
    # no barrier in between: each all-gather is the ranks' only meeting, as in a step
    for _ in range(WAKE_REPEATS):
        _products(int(n), a)
        t1 = time.perf_counter()
        dist.all_gather_single(y, x)
        waits.append(time.perf_counter() - t1 - back_to_back_s)
    return statistics.mean(waits)  # the model sums these losses: their mean, not a typical one


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
    wake = _wake_s(rows[0][1])
    if rank == 0:
        with open(out, "w") as f:
            f.write(f"{wake}\n")
            f.writelines(f"{s} {t}\n" for s, t in rows)
    dist.destroy_process_group()


def measure(world_size: int = 2, repeats: int = 20) -> tuple[float, float, float, list[tuple[int, float]]]:
    """``(alpha_us, bandwidth_gbs, wake_us, [(local bytes, median s), ...])`` of gloo all-gathers on this
    machine (see the module doc)."""
    import numpy as np
    import torch.multiprocessing as mp

    from distri.launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.txt")
        mp.spawn(_rank, args=(world_size, repeats, free_port(), out), nprocs=world_size)
        wake, *lines = open(out).read().splitlines()
        rows = [(int(s), float(t)) for s, t in (line.split() for line in lines)]
    ring = np.array([s * (world_size - 1) for s, _ in rows], dtype=float)
    secs = np.array([t for _, t in rows])
    slope, intercept = np.polyfit(ring, secs, 1, w=1.0 / secs)  # residuals relative to each time
    alpha_us = max(intercept, 0.0) / (world_size - 1) * 1e6
    return alpha_us, 1.0 / slope / 1e9, max(float(wake), 0.0) * 1e6, rows


def main(argv: list[str] | None = None) -> None:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    alpha, bw, wake, rows = measure(int(args.get("world_size", 2)), int(args.get("repeats", 20)))
    for size, t in rows:
        print(f"  all-gather {size / 2**10:>8.0f} KiB per rank: {t * 1e3:8.3f} ms (median)")
    print(f"  wake-up at a blocking all-gather reached from {SEGMENT_S * 1e3:g} ms of compute: {wake:.0f} us")
    print(f'"gloo": LinkProfile("gloo", "gloo over loopback, this machine", {alpha:.1f}, {bw:.2f}, '
          f"wake_us={wake:.0f}, ...)")  # fmt: skip


if __name__ == "__main__":
    main()
