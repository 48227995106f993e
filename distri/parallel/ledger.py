"""The communication ledger: every collective, counted per denoising step and per kind.

Byte counts follow the DistriFusion paper's convention (Table 2):

* an all-gather in which every one of ``n`` ranks contributes ``s`` elements moves ``s * (n - 1) * esize``
  bytes (what one rank receives);
* an all-reduce of a tensor of ``s`` elements over ``n`` ranks moves ``s * (n - 1) / n * 2 * esize`` bytes
  (a ring all-reduce: reduce-scatter plus all-gather, per rank).

Counts are per rank (this process's view). ``wait_s`` is the time this rank spent blocked on the collective:
the whole call for blocking collectives, only the ``wait()`` for asynchronous ones. On CPU it is host wall time;
on CUDA the host does not block (NCCL enqueues and returns), so it is measured with CUDA events on the compute
stream around the collective (what the stream waited), read once the step's work has finished.

:meth:`CommLedger.collectives` also keeps, per step, every collective's operation, group size and whether it
was issued blocking (the caller waits for it at once) or asynchronously (overlappable with later compute): what
the cost model (:mod:`distri.predict`) needs to say which communication a strategy exposes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def allgather_bytes(elements_per_rank: int, n: int, esize: int) -> float:
    return float(elements_per_rank * (n - 1) * esize)


def allreduce_bytes(elements: int, n: int, esize: int) -> float:
    return elements * (n - 1) / n * 2 * esize


class CommLedger:
    """Accumulates collectives by ``(step, kind)``. ``step`` is set by the strategy's step counter."""

    def __init__(self) -> None:
        self.step = 0
        self._rec: dict[tuple[int, str], dict[str, float]] = defaultdict(
            lambda: {"calls": 0, "elements": 0, "bytes": 0.0, "wait_s": 0.0}
        )
        self._events: list[tuple[int, str, Any, Any]] = []  # CUDA (step, kind, start, end), read lazily
        # (step, kind, op, group size, blocking) -> calls, bytes
        self._ops: dict[tuple[int, str, str, int, bool], dict[str, float]] = defaultdict(
            lambda: {"calls": 0, "bytes": 0.0}
        )

    def reset(self) -> None:
        self.step = 0
        self._rec.clear()
        self._events.clear()
        self._ops.clear()

    @staticmethod
    @contextmanager
    def waiting(ledger: CommLedger | None, kind: str, device: Any) -> Iterator[None]:
        """Time the enclosed wait on a collective into ``ledger`` (if any): CUDA events on CUDA, else host time."""
        if ledger is None:
            yield
            return
        if getattr(device, "type", device) == "cuda":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            ledger._events.append((ledger.step, kind, start, end))
            return
        t0 = time.perf_counter()
        yield
        ledger._rec[(ledger.step, kind)]["wait_s"] += time.perf_counter() - t0

    def _read_events(self) -> None:
        for step, kind, start, end in self._events:
            end.synchronize()
            self._rec[(step, kind)]["wait_s"] += start.elapsed_time(end) / 1000.0
        self._events.clear()

    def record(self, kind: str, op: str, elements: int, n: int, esize: int, blocking: bool = True) -> None:
        """Count one collective of ``elements`` elements per rank over ``n`` ranks; ``blocking=False`` for one
        started asynchronously (waited for later)."""
        if n <= 1:
            return
        if op == "all_gather":
            nbytes = allgather_bytes(elements, n, esize)
        elif op == "all_reduce":
            nbytes = allreduce_bytes(elements, n, esize)
        else:
            raise ValueError(f"unknown collective {op!r}")
        r = self._rec[(self.step, kind)]
        r["calls"] += 1
        r["elements"] += elements
        r["bytes"] += nbytes
        o = self._ops[(self.step, kind, op, n, blocking)]
        o["calls"] += 1
        o["bytes"] += nbytes

    def collectives(self, step: int) -> list[dict[str, Any]]:
        """Step ``step``'s collectives grouped by kind, operation, group size ``n`` and ``blocking``: a list of
        ``{"kind", "op", "n", "blocking", "calls", "bytes"}`` (bytes by the paper's convention, per rank)."""
        return [
            {"kind": k, "op": op, "n": n, "blocking": b, **v}
            for (s, k, op, n, b), v in sorted(self._ops.items())
            if s == step
        ]

    def per_step(self) -> dict[int, dict[str, dict[str, float]]]:
        self._read_events()
        out: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
        for (s, k), v in sorted(self._rec.items()):
            out[s][k] = dict(v)
        return dict(out)

    def summary(self, num_steps: int, skip_steps: int = 0) -> dict:
        """The ``comm`` record of a job.

        ``bytes_per_step`` averages the paper-convention bytes over the steady steps ``skip_steps ..
        num_steps - 1`` (the runner skips displaced patch's synchronous warm-up steps, ``warmup_steps + 1`` of
        them); when every step is skipped it averages over all.
        """
        self._read_events()
        steady = [s for s in range(num_steps) if s >= skip_steps] or list(range(num_steps))
        n = max(len(steady), 1)
        by_kind: dict[str, dict[str, float]] = {}
        for (s, k), v in self._rec.items():
            if s not in steady:
                continue
            d = by_kind.setdefault(k, {"calls": 0, "elements": 0, "bytes": 0.0, "wait_s": 0.0})
            for f in d:
                d[f] += v[f]
        by_kind = {
            k: {
                "calls_per_step": v["calls"] / n,
                "elements_per_step": v["elements"] / n,
                "bytes_per_step": v["bytes"] / n,
                "wait_s_per_step": v["wait_s"] / n,
            }
            for k, v in sorted(by_kind.items())
        }
        total_all = defaultdict(float)
        for (_, _k), v in self._rec.items():
            total_all["bytes"] += v["bytes"]
            total_all["wait_s"] += v["wait_s"]
        return {
            "convention": "paper (DistriFusion Table 2): all-gather s*(n-1)*esize, all-reduce s*(n-1)/n*2*esize; per rank",
            "bytes_per_step": sum(v["bytes_per_step"] for v in by_kind.values()),
            "wait_s_per_step": sum(v["wait_s_per_step"] for v in by_kind.values()),
            "steps_averaged": len(steady),
            "warmup_steps_excluded": num_steps - len(steady),
            "by_kind": by_kind,
            "total_bytes": total_all["bytes"],
            "total_wait_s": total_all["wait_s"],
        }
