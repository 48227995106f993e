"""The worker pool: ``world_size`` processes started and watched by the launching process.

:class:`WorkerPool` starts ``world_size`` processes (``spawn``), each of which initialises
``torch.distributed`` once (gloo on CPU, NCCL with one GPU per rank on CUDA) on a local TCP port and then runs
tasks sent to it: a task is ``"module:function"`` plus keyword arguments, called on every rank as
``function(env, **kwargs)`` with a :class:`~distri.worker.env.WorkerEnv` (what a worker does:
:mod:`distri.worker.env`). The pool returns every rank's return value. Tests keep one pool alive across cases;
``run.py`` starts one per job. Under ``torchrun`` no pool is used (:mod:`distri.torchrun`).

Failures end the whole pool (every worker killed, none left behind) and raise :class:`WorkerError` naming the
rank and, where there is one, carrying its traceback:

* a task raising on any rank, or a worker dying: within about a second;
* a rank going silent (the watchdog): its heartbeat stopping for ``timeout_s`` (a frozen process), or no
  progress report from it for ``timeout_s`` once the task has made its first one (a hang: each denoising
  step, model load and group creation reports progress, so ``timeout_s`` bounds the longest single one of
  these, not the whole job);
* the rendezvous port taken between probe and bind: retried :data:`PORT_TRIES` times (a new free port each
  time, or the same configured ``port`` after a pause) before it counts as a failure.

On CUDA the launching process creates no CUDA context: it only counts GPUs (:mod:`distri.devices`).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from distri.devices import resolve_device
from distri.worker.env import WorkerEnv, init_group, locate, torchrun_env, worker_main

__all__ = ["WorkerEnv", "WorkerError", "WorkerPool", "free_port", "init_group", "locate", "torchrun_env"]
# WorkerEnv, init_group, locate and torchrun_env live in distri.worker.env (they run on every rank); they are
# named here too because scripts and tests that start pools use them together with the pool.

PORT_TRIES = 3


class WorkerError(RuntimeError):
    """A worker raised, died or went silent; ``rank`` and ``worker_traceback`` say where and why."""

    def __init__(self, message: str, rank: int | None = None, worker_traceback: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.worker_traceback = worker_traceback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PortClash(Exception):
    pass


class WorkerPool:
    """``world_size`` long-lived worker processes running tasks in lock-step.

    Use as a context manager. ``threads`` sets ``torch.set_num_threads`` in every worker (CPU: default
    ``max(1, cpu_count // world_size)`` so ranks do not oversubscribe the cores). ``timeout_s``: the watchdog's
    limit on silence (see the module doc); the process groups get it plus a grace period. ``port``: the
    rendezvous port (None: a free one). ``on_progress(rank, report)``: called in this process with every
    progress report (a :class:`~distri.worker.env.Report` or a text) as it arrives.
    """

    def __init__(
        self,
        world_size: int,
        device: str = "cpu",
        timeout_s: float = 600.0,
        threads: int | None = None,
        start_timeout_s: float = 300.0,
        port: int | None = None,
        on_progress: Callable[[int, Any], None] | None = None,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.device = resolve_device(device, world_size)  # cuda: one GPU per rank, or it raises
        self.threads = max(1, (os.cpu_count() or 1) // world_size) if threads is None else threads
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self._mp = mp.get_context("spawn")
        self._closed = True
        for attempt in range(PORT_TRIES):
            try:
                self._start(port or free_port(), start_timeout_s)
                return
            except _PortClash as clash:
                if attempt == PORT_TRIES - 1:
                    self._fail(
                        f"rendezvous port busy {PORT_TRIES} times (last: {clash}); set runner.port", 0, None
                    )
                time.sleep(1.0 if port else 0.0)

    def _start(self, port: int, start_timeout_s: float) -> None:
        ctx, n = self._mp, self.world_size
        self._result_q = ctx.Queue()
        self._task_qs = [ctx.Queue() for _ in range(n)]
        self._beats = ctx.RawArray("d", [time.monotonic()] * n)
        main = threading.current_thread() is threading.main_thread()  # PDEATHSIG follows the starting thread
        self._procs = [
            ctx.Process(
                target=worker_main,
                args=(
                    r,
                    n,
                    self.device,
                    port,
                    self.timeout_s,
                    self.threads,
                    self._task_qs[r],
                    self._result_q,
                    self._beats,
                    os.getpid(),
                    main,
                ),
                daemon=True,
                name=f"distri-rank{r}",
            )  # fmt: skip
            for r in range(n)
        ]
        self._closed = False
        self._phase = ["starting"] * n
        try:
            for p in self._procs:
                p.start()
            self._collect("ready", start_timeout_s)
        except KeyboardInterrupt:
            self._kill()
            raise
        except WorkerError as e:
            if "EADDRINUSE" in str(e) or "Address already in use" in str(e):
                raise _PortClash(f"port {port}") from None
            raise

    # -- public ----------------------------------------------------------------------------
    def run(self, target: str, timeout_s: float | None = None, **kwargs) -> list[Any]:
        """Run ``target(env, **kwargs)`` on every rank; returns the results in rank order.

        ``timeout_s``: an overall limit for this task (None: only the watchdog's limit on silence)."""
        if self._closed:
            raise WorkerError("the worker pool is closed (a worker failed earlier, or close() was called)")
        for q in self._task_qs:
            q.put((target, kwargs))
        return self._collect("ok", timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for q, p in zip(self._task_qs, self._procs):
            if p.is_alive():
                try:
                    q.put(None)
                except (ValueError, OSError):
                    pass
        deadline = time.monotonic() + 3
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        self._kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _kill(self) -> None:
        started = [p for p in self._procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 2
        for p in started:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()  # also ends a stopped (SIGSTOP) process
                p.join(2)
        for q in (*self._task_qs, self._result_q):  # release the queues' pipes and semaphores now
            q.cancel_join_thread()
            q.close()
        self._closed = True

    def _fail(self, msg: str, rank: int | None, tb: str | None) -> None:
        if not self._closed:
            self._kill()
        text = msg if tb is None else f"{msg}\n--- traceback of rank {rank} ---\n{tb}"
        raise WorkerError(text, rank=rank, worker_traceback=tb) from None

    def _stopped(self) -> list[int]:
        """Ranks whose process is stopped (SIGSTOP, a debugger): Linux ``/proc`` state ``T`` or ``t``."""
        out = []
        for r, p in enumerate(self._procs):
            try:
                with open(f"/proc/{p.pid}/stat", encoding="ascii") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state in ("T", "t"):
                out.append(r)
        return out

    def _watchdog(self, last: list[float]) -> None:
        """Fail when a rank's heartbeat or its progress has stopped for ``timeout_s``.

        A rank blocked in some C call that holds the GIL also stops beating, so the silent rank named is a
        stopped process if there is one, else the one whose heartbeat stopped first. A stopped process is
        named even when a peer's progress limit trips first (that peer is only waiting for it)."""
        now, limit, n = time.monotonic(), self.timeout_s, self.world_size
        quiet = min(range(n), key=lambda k: self._beats[k])
        slow = min(range(n), key=lambda k: last[k])
        if now - self._beats[quiet] <= limit and now - last[slow] <= limit:
            return
        silent = self._stopped() or ([quiet] if now - self._beats[quiet] > limit else [])
        if silent:
            r = silent[0]
            self._fail(
                f"rank {r} stopped responding: no heartbeat for {now - self._beats[r]:.0f} s "
                f"(runner.timeout_s={limit:g}; the process is frozen, stopped or starved) "
                f"while {self._phase[r]}", r, None,
            )  # fmt: skip
        where = "; ".join(f"rank {k}: {self._phase[k]}" for k in range(n))
        self._fail(
            f"rank {slow} made no progress for {now - last[slow]:.0f} s (> runner.timeout_s={limit:g}) "
            f"while {self._phase[slow]} [last reports: {where}]", slow, None,
        )  # fmt: skip

    def _error(self, rank: int, tb: str) -> None:
        """A rank raised. If another rank's process has just died, that death is the cause (a peer's
        collective fails once the connection closes): name the dead rank."""
        time.sleep(0.5)
        for r, p in enumerate(self._procs):
            if r != rank and p.exitcode not in (None, 0):
                self._fail(
                    f"worker rank {r} died (exit code {p.exitcode}) while {self._phase[r]}; "
                    f"rank {rank} then raised", r, None,
                )  # fmt: skip
        self._fail(f"worker rank {rank} raised", rank, tb)

    def _dead_rank(self, results: dict[int, Any]) -> tuple[int, Any] | None:
        for r, p in enumerate(self._procs):
            if not p.is_alive() and r not in results:
                return r, p
        return None

    def _collect(self, expect: str, timeout_s: float | None) -> list[Any]:
        results: dict[int, Any] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # A rank's silence counts from its first progress report in this task (importing the task's module
        # can take long on a busy machine); until then only its heartbeat and the task's deadline apply.
        last = [float("inf")] * self.world_size
        while len(results) < self.world_size:
            try:
                rank, status, payload = self._result_q.get(timeout=0.2)
            except queue.Empty:
                dead = self._dead_rank(results)
                if dead is None:
                    if deadline is not None and time.monotonic() > deadline:
                        self._fail(f"workers did not finish within {timeout_s:.0f} s", None, None)
                    if expect == "ok":  # start-up has its own deadline (imports can be slow)
                        self._watchdog(last)
                    continue
                try:  # give a dying worker's queued traceback a moment to arrive
                    rank, status, payload = self._result_q.get(timeout=1.0)
                except queue.Empty:
                    r, p = dead
                    self._fail(
                        f"worker rank {r} died (exit code {p.exitcode}) while {self._phase[r]}", r, None
                    )
            if status == "progress":
                self._phase[rank], last[rank] = str(payload), time.monotonic()
                if self.on_progress is not None:
                    self.on_progress(rank, payload)
                continue
            if status == "error":
                self._error(rank, payload)
            results[rank] = payload
            last[rank] = float("inf")  # done: waiting for the others is not its silence
        return [results[r] for r in range(self.world_size)]
