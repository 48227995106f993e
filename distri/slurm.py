"""Ranks started by ``srun``: SLURM's environment turned into torchrun's, so the job runs in place.

In a SLURM job step with more than one task (``srun --ntasks=4 python run.py world_size=4``, or a job of
``hydra/launcher=submitit_slurm``) every task is one rank. :func:`adopt_srun_env` sets the variables that
``torchrun`` would set, from SLURM's, and the torchrun path (:mod:`distri.torchrun`) takes over:

* ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``),
  ``LOCAL_RANK`` = ``SLURM_LOCALID``, ``LOCAL_WORLD_SIZE`` = this node's share of
  ``SLURM_STEP_TASKS_PER_NODE``, ``GROUP_RANK`` = ``SLURM_NODEID``;
* ``MASTER_ADDR`` = the first host of ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``), where rank 0
  runs; ``MASTER_PORT`` = :func:`step_port` (the same on every rank, different for every step); an exported
  ``MASTER_ADDR`` or ``MASTER_PORT`` is kept.

torchrun's agent hosts a TCP store at ``MASTER_ADDR:MASTER_PORT`` through which a failing rank tells the
others (see :mod:`distri.torchrun`). Under ``srun`` there is no agent: rank 0 hosts that store itself
(multi-tenant, so ``torch.distributed``'s ``env://`` rendezvous on rank 0 shares it) and, when its process
ends, waits (at most :data:`LEAVE_TIMEOUT_S`) until every rank has said it is leaving, so that no rank loses
the store while it still reads it. A single-task step, and the batch script itself (no step), are left alone:
the job then starts its own workers as on a workstation.
"""

from __future__ import annotations

import atexit
import os
import re
import time
from datetime import timedelta
from typing import Any

LEAVE_TIMEOUT_S = 60.0
PORT_BASE, PORT_SPAN = 20000, 12000  # below Linux's ephemeral ports (32768-60999)
_STATE: dict[str, Any] = {}  # the adopted rank's store and rank (set once per process)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``; ``"a[1-2]-b[3-4]"`` ->
    ``"a1-b3"`` (each bracket's first value, zero padding kept)."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    host = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], nodelist[:end])
    if not host or "[" in host or "]" in host:
        raise ValueError(f"cannot read the first host of the SLURM node list {nodelist!r}")
    return host


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """This node's task count from SLURM's compressed form: ``"2(x3),1"`` -> node 0..2: 2, node 3: 1."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM's tasks per node {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node]


def step_port(job_id: str, step_id: str) -> int:
    """The rendezvous port of a job step: ``20000 + (8 * job id + step id) mod 12000``; every rank of the step
    computes the same one, and steps that run at the same time on a node get different ones."""
    step = int(step_id) if step_id.isdigit() else 0
    return PORT_BASE + (8 * int(job_id) + step) % PORT_SPAN


def srun_env(environ: dict[str, str] | os._Environ) -> dict[str, str] | None:
    """torchrun's variables for this task of a multi-task SLURM step; None outside one (or under torchrun)."""
    from distri.torchrun import TORCHRUN_VARS

    if all(k in environ for k in TORCHRUN_VARS) or "SLURM_STEP_ID" not in environ:
        return None
    world = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
    if world is None or int(world) < 2:
        return None
    node = int(environ.get("SLURM_NODEID", "0"))
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or world
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": world,
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": str(tasks_on_node(per_node, node)),
        "GROUP_RANK": str(node),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
        "MASTER_PORT": environ.get("MASTER_PORT")
        or str(step_port(environ["SLURM_JOB_ID"], environ["SLURM_STEP_ID"])),
    }


def adopt_srun_env() -> bool:
    """In a multi-task ``srun`` step, export torchrun's variables (once) and, on rank 0, host the store.

    Returns whether this process is such a rank. Idempotent; a no-op under torchrun or outside SLURM.
    """
    if _STATE:
        return True
    env = srun_env(os.environ)
    if env is None:
        return False
    os.environ.update(env)
    rank = int(env["RANK"])
    _STATE.update(rank=rank, world_size=int(env["WORLD_SIZE"]), store=_store(env, is_master=rank == 0))
    atexit.register(leave)
    return True


def in_srun_step() -> bool:
    """Whether this process adopted SLURM's environment as a rank of a multi-task ``srun`` step."""
    return bool(_STATE)


def under_submitit() -> bool:
    """True in a task that submitit started: it runs one job and returns, and submitit then saves the result
    (so a failed job must return, not end the process)."""
    return "SUBMITIT_EXECUTOR" in os.environ and "SUBMITIT_FOLDER" in os.environ


def _store(env: dict[str, str], is_master: bool):
    import torch.distributed as dist

    return dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=is_master, wait_for_workers=False,
        multi_tenant=True, timeout=timedelta(seconds=LEAVE_TIMEOUT_S),
    )  # fmt: skip


def leave() -> None:
    """Say this rank is leaving; on rank 0 (the store's host) wait until every rank has (bounded).

    Runs at exit (atexit); ``run.py`` also calls it before it ends a rank with ``os._exit``. Idempotent.
    """
    store = _STATE.pop("store", None)
    if store is None:
        return
    try:
        store.add("distri/left", 1)
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while _STATE["rank"] == 0 and time.monotonic() < deadline:
            if store.add("distri/left", 0) >= _STATE["world_size"]:
                break
            time.sleep(0.1)
    except RuntimeError:  # the store's host is gone already: nobody left to wait for
        pass
