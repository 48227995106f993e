"""Process start-up and teardown: a pool of ``world_size`` workers, or this process under ``torchrun``.

:class:`WorkerPool` starts ``world_size`` processes (``spawn``), each of which initialises
``torch.distributed`` once (gloo on CPU, NCCL with one GPU per rank on CUDA) on a free local port and then runs
tasks sent to it: a task is ``"module:function"`` plus keyword arguments, called on every rank as
``function(env, **kwargs)`` with a :class:`WorkerEnv`. The pool returns every rank's return value.

A task that raises on any rank, or a worker that dies, tears the whole pool down within about a second
(no orphans) and raises :class:`WorkerError` carrying the failing rank's traceback. Tests keep one pool alive
across cases; ``run.py`` starts one per job.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` set), :func:`torchrun_env` gives a
:class:`WorkerEnv` for this process and the job runs in place, which is how multi-node jobs run.
"""

from __future__ import annotations

import datetime
import importlib
import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distri.parallel.context import ParallelContext, make_context


class WorkerError(RuntimeError):
    """A worker raised or died; ``rank`` and ``worker_traceback`` say where and why."""

    def __init__(self, message: str, rank: int | None = None, worker_traceback: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.worker_traceback = worker_traceback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device; use device=cpu or auto")
    return device


def locate(target: str):
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"`` (no Hydra in workers)."""
    if ":" in target:
        mod, _, attr = target.partition(":")
    else:
        mod, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import {target!r}: {e}") from e


@dataclass
class WorkerEnv:
    """What a task sees: its rank, the world, its device, and contexts built on demand (groups cached)."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    _contexts: dict[int, ParallelContext] = field(default_factory=dict, repr=False)

    def context(self, cfg_size: int = 1) -> ParallelContext:
        if cfg_size not in self._contexts:
            self._contexts[cfg_size] = make_context(
                self.rank, self.world_size, self.device, self.backend, cfg_size=cfg_size
            )
        ctx = self._contexts[cfg_size]
        ctx.ledger.reset()
        return ctx


def _init_env(rank: int, world_size: int, device: str, port: int | None, timeout_s: float) -> WorkerEnv:
    if device == "cuda":
        n = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_RANK", rank))
        if local >= n:
            raise RuntimeError(f"rank {rank} needs GPU {local} but only {n} CUDA devices are visible")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if world_size > 1 and not dist.is_initialized():
        kw: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if port is not None:
            kw["init_method"] = f"tcp://127.0.0.1:{port}"
            kw["rank"], kw["world_size"] = rank, world_size
        if backend == "nccl":
            kw["device_id"] = dev
        dist.init_process_group(backend, **kw)
    return WorkerEnv(rank, world_size, dev, backend if world_size > 1 else "none")


def torchrun_env(device: str = "auto", timeout_s: float = 600.0) -> WorkerEnv | None:
    """A :class:`WorkerEnv` for this process when started by ``torchrun``; ``None`` otherwise."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    if not all(k in os.environ for k in keys):
        return None
    return _init_env(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), resolve_device(device), None, timeout_s
    )


def _worker_main(rank, world_size, device, port, timeout_s, threads, task_q, result_q):
    """Worker loop: init once, then run tasks until ``None`` arrives."""
    try:
        if threads:
            torch.set_num_threads(threads)
        env = _init_env(rank, world_size, device, port, timeout_s)
        result_q.put((rank, "ready", None))
    except BaseException:
        result_q.put((rank, "error", traceback.format_exc()))
        return
    while True:
        task = task_q.get()
        if task is None:
            break
        target, kwargs = task
        try:
            out = locate(target)(env, **kwargs)
            result_q.put((rank, "ok", out))
        except BaseException:
            result_q.put((rank, "error", traceback.format_exc()))
            # The other ranks may be blocked in a collective with us: the pool kills everyone.
            return
    # Leave at once: a process-group teardown (or its destructor at exit) can wait on peers that are leaving.
    result_q.close()
    result_q.join_thread()
    os._exit(0)


class WorkerPool:
    """``world_size`` long-lived worker processes running tasks in lock-step.

    Use as a context manager. ``threads`` sets ``torch.set_num_threads`` in every worker (CPU: default
    ``max(1, cpu_count // world_size)`` so ranks do not oversubscribe the cores).
    """

    def __init__(
        self,
        world_size: int,
        device: str = "cpu",
        timeout_s: float = 600.0,
        threads: int | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.device = resolve_device(device)
        if self.device == "cuda" and torch.cuda.device_count() < world_size:
            raise RuntimeError(
                f"world_size={world_size} needs {world_size} GPUs (one per rank) but "
                f"{torch.cuda.device_count()} are visible; lower world_size or use device=cpu"
            )
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // world_size)
        self.threads = threads
        ctx = mp.get_context("spawn")
        self._result_q = ctx.Queue()
        self._task_qs = [ctx.Queue() for _ in range(world_size)]
        port = free_port()
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(r, world_size, self.device, port, timeout_s, threads, self._task_qs[r], self._result_q),
                daemon=True,
                name=f"distri-rank{r}",
            )
            for r in range(world_size)
        ]
        for p in self._procs:
            p.start()
        self._closed = False
        self._collect("ready", start_timeout_s)

    # -- public ----------------------------------------------------------------------------
    def run(self, target: str, timeout_s: float | None = None, **kwargs) -> list[Any]:
        """Run ``target(env, **kwargs)`` on every rank; returns the results in rank order."""
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
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 2
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1)
        for q in (*self._task_qs, self._result_q):  # release the queues' pipes and semaphores now
            q.cancel_join_thread()
            q.close()
        self._closed = True

    def _fail(self, msg: str, rank: int | None, tb: str | None) -> None:
        self._kill()
        text = msg if tb is None else f"{msg}\n--- traceback of rank {rank} ---\n{tb}"
        raise WorkerError(text, rank=rank, worker_traceback=tb) from None

    def _collect(self, expect: str, timeout_s: float | None) -> list[Any]:
        results: dict[int, Any] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(results) < self.world_size:
            try:
                rank, status, payload = self._result_q.get(timeout=0.2)
            except queue.Empty:
                for r, p in enumerate(self._procs):
                    if not p.is_alive() and r not in results:
                        # give a dying worker's queued traceback a moment to arrive
                        try:
                            rank, status, payload = self._result_q.get(timeout=1.0)
                        except queue.Empty:
                            self._fail(f"worker rank {r} died (exit code {p.exitcode})", r, None)
                        break
                else:
                    if deadline is not None and time.monotonic() > deadline:
                        self._fail(f"workers did not finish within {timeout_s:.0f} s", None, None)
                    continue
            if status == "error":
                self._fail(f"worker rank {rank} raised", rank, payload)
            results[rank] = payload
        return [results[r] for r in range(self.world_size)]
