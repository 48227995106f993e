"""One job: load the pipeline, apply the strategy, warm up, time, generate, compare with the single device.

:func:`execute` runs in the launching process (``run.py``): it starts the workers (or runs in place under
``torchrun``) and returns rank 0's record. :func:`run_job` runs on every rank and never imports Hydra; it
receives the plain resolved config dict.

Protocol (per job):

1. every rank loads the same pipeline and applies the strategy to its UNet;
2. ``runner.warmup_runs`` untimed, then ``runner.timed_runs`` timed pipeline calls on prompt 0 (seed ``seed``),
   each a whole ``pipe(...)`` call with the device synchronised, ranks aligned by a barrier before each;
   per-step times come from a step callback of the last timed run; the ledger of the last timed run gives
   ``comm``;
3. one call per prompt ``i`` (seed ``seed + i``) for the images, saved by rank 0;
4. with ``metrics.compare_to_original`` and a parallel strategy, rank 0 removes the strategy and repeats 2-3
   with the stock UNet and the same thread count as one rank (the other ranks wait), which gives
   ``baseline_latency``, ``speedup`` and the reference images for ``metrics``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from distri.config import cfg_size, strategy_params

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def _sync_steps(cfg: dict[str, Any]) -> int:
    """Leading synchronous (warm-up) steps excluded from the steady-state communication average."""
    s, steps = cfg["strategy"], cfg["sampler"]["num_inference_steps"]
    if s["name"] == "displaced_patch" and s.get("mode") != "full_sync":
        return min(s.get("warmup_steps", 0) + 1, steps)
    return 0


def _timed_runs(env, cfg, pipe, call, barrier) -> dict[str, Any]:
    from distri.metrics.latency import StepTimer, describe_method, latency_stats, time_call

    r = cfg["runner"]
    for _ in range(r["warmup_runs"]):
        call(None)
    samples, steps = [], StepTimer(env.device)
    for i in range(r["timed_runs"]):
        barrier()
        last = i == r["timed_runs"] - 1
        cb = steps if last else None
        if last:
            steps.reset()
        _, dt = time_call(lambda cb=cb: call(cb), env.device)
        samples.append(dt)
    stats: dict[str, Any] = dict(latency_stats(samples, trim=r["trim"]))
    per_step = steps.step_times_s
    stats.update(
        samples_s=samples,
        warmup_runs=r["warmup_runs"],
        timed_runs=r["timed_runs"],
        per_step_s=per_step,
        per_step_mean_s=sum(per_step) / len(per_step) if per_step else None,
        method=describe_method(
            r["warmup_runs"], r["timed_runs"], trim=r["trim"], device=env.device, backend=env.backend
        )
        + f", {torch.get_num_threads()} CPU thread(s) per rank"
        + "; per-step times from a step callback of the last timed run (device synchronised each step)",
    )
    return stats


def ensure_model(env, model_cfg: dict[str, Any]) -> None:
    """Build a tiny model once before any rank loads it.

    transformers writes weights only on global rank 0 once ``torch.distributed`` is initialised, so rank 0
    builds while the others wait at a barrier (the launcher also builds in the parent process beforehand).
    """
    if model_cfg.get("source") != "tiny":
        return
    from distri.models.tiny import build_tiny

    if env.rank == 0:
        build_tiny(model_cfg["name"], model_cfg.get("cache_dir"))
    if env.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def run_job(env, cfg: dict[str, Any], job_dir: str) -> dict[str, Any] | None:
    """Run one job on this rank; rank 0 returns the result record (without ``status``/``env``)."""
    from diffusers.utils import logging as dlog

    from distri.generate import generate, save_png
    from distri.launch import locate
    from distri.models.loader import load_pipeline
    from distri.prompts import load_prompts
    from distri.samplers import make_scheduler

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    torch.manual_seed(cfg["seed"])
    ctx = env.context(cfg_size(cfg))
    dtype = DTYPES[cfg["dtype"]]
    ensure_model(env, cfg["model"])
    pipe = load_pipeline(cfg["model"], env.device, dtype)
    pipe.scheduler = make_scheduler(cfg["sampler"]["name"], pipe.scheduler.config)
    s = cfg["strategy"]
    target = s["_target_"]
    handle = locate(target)(pipe.unet, ctx, **strategy_params(s))
    prompts = load_prompts(cfg["prompts"])
    sm = cfg["sampler"]

    def call(prompt_i: int):
        def run(cb):
            handle.reset()
            return generate(
                pipe, prompts[prompt_i], cfg["seed"] + prompt_i, sm["num_inference_steps"],
                sm["guidance_scale"], cfg["height"], cfg["width"], callback=cb,
            )  # fmt: skip

        return run

    latency = _timed_runs(env, cfg, pipe, call(0), ctx.barrier)
    comm = ctx.ledger.summary(sm["num_inference_steps"], _sync_steps(cfg))
    comm["per_step"] = ctx.ledger.per_step()
    images = [call(i)(None) for i in range(len(prompts))]
    extra = handle.param_report() if hasattr(handle, "param_report") else None

    record: dict[str, Any] | None = None
    if env.rank == 0:
        out = Path(job_dir) / "images"
        paths = []
        if cfg["runner"]["save_images"]:
            paths = [str(save_png(img, out / f"{i:04d}.png")) for i, img in enumerate(images)]
        record = {
            "latency": latency,
            "comm": comm,
            "metrics": {},
            "images": paths,
            "prompts": prompts,
            "baseline_latency": None,
            "speedup": None,
            "exact_method": bool(getattr(handle, "exact", True)),
        }
        if extra is not None:
            record["memory"] = {"params_rank0": extra}
    if cfg["metrics"]["compare_to_original"] and (s["name"] != "none" or env.world_size > 1):
        handle.remove()
        if env.rank == 0:
            _baseline(env, cfg, pipe, prompts, images, record, job_dir)
        ctx.barrier()
    if record is not None:
        record["threads_per_rank"] = torch.get_num_threads()
    return record


def _baseline(env, cfg, pipe, prompts, images, record, job_dir) -> None:
    """Rank 0: the stock pipeline alone (same threads as one rank), for speedup and reference images."""
    from distri.generate import generate, save_png
    from distri.metrics.quality import compare_to_reference

    sm = cfg["sampler"]

    def call(i):
        return lambda cb: generate(
            pipe, prompts[i], cfg["seed"] + i, sm["num_inference_steps"], sm["guidance_scale"],
            cfg["height"], cfg["width"], callback=cb,
        )  # fmt: skip

    base = _timed_runs(env, cfg, pipe, call(0), lambda: None)
    base["method"] += "; single device (strategy removed) on rank 0 while the other ranks wait"
    refs = [call(i)(None) for i in range(len(prompts))]
    if cfg["runner"]["save_images"]:
        out = Path(job_dir) / "reference"
        record["reference_images"] = [str(save_png(r, out / f"{i:04d}.png")) for i, r in enumerate(refs)]
    record["baseline_latency"] = base
    record["speedup"] = base["mean_s"] / record["latency"]["mean_s"]
    record["metrics"].update(compare_to_reference(images, refs))


def execute(cfg: dict[str, Any], job_dir: str) -> dict[str, Any]:
    """Run a validated job: workers (or ``torchrun`` in place); returns rank 0's full record.

    Never raises for a failing job: the record then has ``status: failed`` with the error and traceback.
    Under ``torchrun`` the other ranks return ``{"status": "ok", "rank": r}`` records that callers ignore.
    """
    from distri.launch import WorkerError, WorkerPool, resolve_device, torchrun_env
    from distri.logging import collect_env, failed_record

    t0 = time.time()
    env_info: dict[str, Any] = {}
    try:
        device = resolve_device(cfg["device"])
        backend = "nccl" if device == "cuda" else "gloo"
        env_info = collect_env(device, backend if cfg["world_size"] > 1 else "none", cfg["world_size"])
        threads = cfg["runner"]["cpu_threads_per_rank"]
        tr = torchrun_env(cfg["device"], cfg["runner"]["timeout_s"])
        if tr is not None:
            if tr.world_size != cfg["world_size"]:
                raise RuntimeError(
                    f"torchrun started {tr.world_size} processes but world_size={cfg['world_size']}; "
                    f"pass world_size={tr.world_size}"
                )
            if threads:
                torch.set_num_threads(threads)
            env_info["launcher"] = "torchrun"
            rec = run_job(tr, cfg, job_dir)
            if tr.rank != 0:
                return {"status": "ok", "rank": tr.rank}
        else:
            env_info["launcher"] = "distri.launch.WorkerPool (spawn)"
            if cfg["model"]["source"] == "tiny":  # built here, outside torch.distributed (see ensure_model)
                from distri.models.tiny import build_tiny

                build_tiny(cfg["model"]["name"], cfg["model"].get("cache_dir"))
            with WorkerPool(cfg["world_size"], device, cfg["runner"]["timeout_s"], threads) as pool:
                rec = pool.run("distri.runner:run_job", cfg=cfg, job_dir=job_dir)[0]
    except (WorkerError, Exception) as e:  # noqa: BLE001 - the record carries the failure
        rec = failed_record(cfg, e, env_info)
        if isinstance(e, WorkerError) and e.worker_traceback:
            rec["traceback"] = e.worker_traceback
            last = e.worker_traceback.strip().splitlines()[-1]
            rec["error"] = f"rank {e.rank}: {last}"
        rec["wall_s"] = time.time() - t0
        rec["output_dir"] = job_dir
        return rec
    rec.update(status="ok", error=None, traceback=None, config=cfg, env=env_info)
    rec["wall_s"] = time.time() - t0
    rec["output_dir"] = job_dir
    rec["pid"] = os.getpid()
    return rec
