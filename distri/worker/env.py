"""What a rank is: its :class:`WorkerEnv`, its ``torch.distributed`` start-up, and the worker process's loop.

A pool worker (:func:`worker_main`, started by :class:`distri.launch.WorkerPool`) initialises
``torch.distributed`` once, then runs tasks until told to stop. Besides, a daemon thread in every worker

* writes a heartbeat (``time.monotonic()``) into a shared array every :data:`BEAT_S` seconds, which the
  pool's watchdog reads: a frozen (SIGSTOP-ed, swapped-out) process stops beating;
* watches the parent: when the process that started the pool is gone (SIGKILL, crash), the worker exits at
  once (on Linux, ``PR_SET_PDEATHSIG`` also asks the kernel to kill it, which reaches a stopped process too).

Workers ignore SIGINT: a Ctrl-C reaches the whole process group, and the parent alone decides (it records
the job as interrupted and stops its workers). Tasks report progress with :meth:`WorkerEnv.progress`.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from distri.devices import enable_tf32, resolve_device, visible_gpus
from distri.parallel.context import ParallelContext, make_context

BEAT_S = 0.5
PG_GRACE_S = 30.0
"""The process groups' timeout is the job's ``timeout_s`` plus this, so that the pool's watchdog (which
names the rank that went silent) fires before a collective's own timeout (which names a waiting rank)."""


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


@dataclass(frozen=True)
class Report:
    """What a rank is doing, as sent to the launcher: a ``phase`` (``timed run``), its count ``i`` of ``n``
    where it repeats (``timed run 2/5``), and within a pipeline call the denoising ``step`` of ``steps``.
    ``str()`` gives the text the watchdog quotes; the job layer draws its progress lines and bar from the fields."""

    phase: str
    i: int | None = None
    n: int | None = None
    step: int | None = None
    steps: int | None = None
    note: str = ""

    def __str__(self) -> str:
        text = self.phase if self.i is None else f"{self.phase} {self.i}/{self.n}"
        if self.step is not None:
            text += f", step {self.step}/{self.steps}"
        return f"{text}: {self.note}" if self.note else text


def _no_report(report: Report | str) -> None:
    return None


@dataclass
class WorkerEnv:
    """What a task sees: its rank, the world, its device, and contexts built on demand (groups cached).

    ``progress(report)`` (a :class:`Report`, or a phase as text) tells the launcher what the rank is doing (the
    pool's watchdog names it when the job goes silent, the job layer shows rank 0's); a no-op where nothing
    listens (direct calls)."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    timeout_s: float = 600.0
    progress: Callable[[Report | str], None] = field(default=_no_report, repr=False)
    _contexts: dict[int, ParallelContext] = field(default_factory=dict, repr=False)

    def context(self, cfg_size: int = 1) -> ParallelContext:
        if cfg_size not in self._contexts:
            self.progress(Report("creating process groups"))
            self._contexts[cfg_size] = make_context(
                self.rank, self.world_size, self.device, self.backend, cfg_size=cfg_size,
                timeout=datetime.timedelta(seconds=self.timeout_s + PG_GRACE_S),
            )  # fmt: skip
        ctx = self._contexts[cfg_size]
        ctx.ledger.reset()
        return ctx


def init_env(rank: int, world_size: int, device: str, port: int | None, timeout_s: float) -> WorkerEnv:
    """This rank's device (CUDA: its own GPU) and, for ``world_size > 1``, its ``torch.distributed``."""
    if device == "cuda":
        n = visible_gpus()
        local = int(os.environ.get("LOCAL_RANK", rank))
        if local >= n:
            raise RuntimeError(f"rank {rank} needs GPU {local} but only {n} CUDA devices are visible")
        torch.cuda.set_device(local)  # this worker's CUDA context: on its own GPU, the only one there
        enable_tf32()
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if world_size > 1 and not dist.is_initialized():
        init_group(rank, world_size, dev, port, timeout_s + PG_GRACE_S)
    return WorkerEnv(rank, world_size, dev, backend if world_size > 1 else "none", timeout_s)


def init_group(rank: int, world_size: int, dev: torch.device, port: int | None, timeout_s: float) -> None:
    """``torch.distributed`` for this rank: NCCL bound to ``dev`` on CUDA (eager init), gloo on the CPU.

    ``port``: a local TCP rendezvous; None: torchrun's environment (``MASTER_ADDR``/``MASTER_PORT``).
    """
    kw: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if port is not None:
        kw["init_method"] = f"tcp://127.0.0.1:{port}"
        kw["rank"], kw["world_size"] = rank, world_size
    if dev.type == "cuda":
        kw["device_id"] = dev
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kw)


def torchrun_env(device: str = "auto", timeout_s: float = 600.0) -> WorkerEnv | None:
    """A :class:`WorkerEnv` for this process when started by ``torchrun``; ``None`` otherwise."""
    from distri.torchrun import torchrun_rank

    if torchrun_rank() is None:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    return init_env(int(os.environ["RANK"]), world_size, resolve_device(device, world_size), None, timeout_s)


def _die_with_parent(parent: int, pdeathsig: bool) -> None:
    """Ask the kernel for SIGKILL when the parent goes (Linux), and poll for it anyway."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _watch(rank: int, parent: int, beats: Any) -> None:
    while True:
        beats[rank] = time.monotonic()
        if os.getppid() != parent:
            os._exit(1)  # orphaned: the job is gone, nothing here can be recorded
        time.sleep(BEAT_S)


def _thread_lock_for_tqdm() -> None:
    """tqdm's default lock is a multiprocessing semaphore registered with the resource tracker; a worker
    leaves with ``os._exit`` (or is killed), which would leave it behind and make the tracker warn about a
    "leaked semaphore" after every run. Progress bars are off in workers, so a thread lock does."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def worker_main(
    rank, world_size, device, port, timeout_s, threads, task_q, result_q, beats, parent, pdeathsig
):
    """Worker loop: init once, then run tasks until ``None`` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent, pdeathsig)
    _thread_lock_for_tqdm()
    threading.Thread(target=_watch, args=(rank, parent, beats), daemon=True, name="distri-heartbeat").start()
    try:
        if threads:
            torch.set_num_threads(threads)
        env = init_env(rank, world_size, device, port, timeout_s)
        env.progress = lambda report: result_q.put((rank, "progress", report))
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
