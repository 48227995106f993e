"""One job on every rank: load the pipeline, apply the strategy, time, generate, compare with the single device.

:func:`run_job` runs on every rank (started by :mod:`distri.job.execute` through a launcher) and never imports
Hydra; it receives the plain resolved config dict, and reports its progress (``env.progress``: the stage and
the denoising step) for the launcher's watchdog.

Protocol (per job, on every rank):

1. load the same pipeline and apply the strategy to its UNet (a fault injected with ``fault=...`` can make
   a rank fail before that or after a chosen denoising step, see :mod:`distri.faults`);
2. timing: ``runner.warmup_runs`` untimed, then ``runner.timed_runs`` timed calls of the whole pipeline on
   prompt 0 (seed ``seed``), ranks aligned by a barrier before each, the device synchronised before and
   after each call and nowhere inside it. ``runner.statistic`` of the timed calls is the headline; ``comm``
   is the ledger of the last timed call. Then one separate, untimed call with a per-step timer (the device
   synchronised at every step) gives ``per_step_s``;
3. images: one call per prompt ``i`` (seed ``seed + i``); rank 0 writes each as a PNG as soon as it is made;
4. with ``metrics.compare_to_original`` and a parallel strategy, every rank removes the strategy and
   (a) repeats 2 with the stock UNet, all ranks at once, each with the threads it had in the parallel run
   (rank 0's times are ``baseline_latency``; ``speedup`` divides the same statistic), then (b) takes the
   single-device originals from the originals cache (:mod:`distri.metrics.job`): the missing ones are made
   data-parallel, rank ``r`` making prompts ``r, r + N, ...``, each written to the cache as it is made;
5. rank 0 computes every image-quality metric (:func:`distri.metrics.compute.compute_metrics`: PSNR, LPIPS,
   FID and CLIP score against the originals, the G.T. folder and the prompts; and the originals' own scores
   against G.T. and the prompts) streaming from the PNGs, and draws the comparison grid.

So nothing holds more than one image, and no rank waits at a collective for much longer than one image takes.
Image metrics are computed on the 8-bit PNGs, as the paper's evaluation reads its images.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as dlog

from distri.config import cfg_size
from distri.devices import torch_dtype
from distri.models.loader import load_pipeline
from distri.parallel.strategy import strategy_from_config
from distri.prompts import load_prompts
from distri.samplers import make_scheduler
from distri.worker.env import Report

PER_STEP_METHOD = (
    "one separate untimed call after the timed runs, the device synchronised at the end of every step "
    "(not part of the timed statistics)"
)
BASELINE_METHOD = (
    "; single device: the stock pipeline (strategy removed) timed on every rank at once, each rank with the "
    "threads it had in the parallel run; rank 0's times"
)


def _threads_text(env) -> str:
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    here = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    text = f"{threads} CPU thread(s) per rank, {here} rank(s) on {cores} core(s)"
    if env.device.type == "cpu" and here * threads > cores:
        text += " (oversubscribed: ranks x threads > cores)"
    return text


def _time_runs(env, cfg: dict[str, Any], run: Callable[..., Any], barrier: Callable[[], None],
               progress: _Progress, label: str = "") -> dict:  # fmt: skip
    """Warm-up calls, then timed whole calls of ``run()``; their statistics and how they were measured."""
    from distri.metrics.latency import STATISTICS, describe_method, latency_stats, time_call

    r = cfg["runner"]
    for k in range(r["warmup_runs"]):
        progress.at(f"{label}warm-up run", k + 1, r["warmup_runs"])
        run()
    samples = []
    for k in range(r["timed_runs"]):
        progress.at(f"{label}timed run", k + 1, r["timed_runs"])
        barrier()
        samples.append(time_call(run, env.device)[1])
    statistic = STATISTICS[r["statistic"]]
    method = describe_method(
        r["warmup_runs"], r["timed_runs"], trim=r["trim"], device=env.device, backend=env.backend,
        statistic=statistic,
    )  # fmt: skip
    stats: dict[str, Any] = dict(latency_stats(samples, trim=r["trim"]))
    stats.update(
        samples_s=samples,
        warmup_runs=r["warmup_runs"],
        timed_runs=r["timed_runs"],
        statistic=statistic,
        method=f"{method}, ranks aligned by a barrier before each run, {_threads_text(env)}",
    )
    return stats


def _profile_steps(env, run: Callable[..., Any]) -> dict[str, Any]:
    """One untimed call of ``run(callback)`` with a per-step timer."""
    from distri.metrics.latency import StepTimer

    timer = StepTimer(env.device)
    timer.reset()
    run(timer)
    per_step = timer.step_times_s
    return {
        "per_step_s": per_step,
        "per_step_mean_s": sum(per_step) / len(per_step) if per_step else None,
        "per_step_method": PER_STEP_METHOD,
    }


def ensure_model(env, model_cfg: dict[str, Any]) -> None:
    """Build a tiny model once before any rank loads it.

    transformers writes weights only on global rank 0 once ``torch.distributed`` is initialised, so rank 0
    builds while the others wait at a barrier (the pool launcher also builds in the parent beforehand).
    """
    if model_cfg.get("source") != "tiny":
        return
    from distri.models.tiny import build_tiny

    if env.rank == 0:
        build_tiny(model_cfg["name"], model_cfg.get("cache_dir"))
    if env.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _setup(env, cfg: dict[str, Any], progress: _Progress):
    """Every rank: the pipeline with the strategy applied, its handle, context and prompts."""
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    torch.manual_seed(cfg["seed"])
    ctx = env.context(cfg_size(cfg))
    ensure_model(env, cfg["model"])
    progress.at("loading the pipeline")
    pipe = load_pipeline(cfg["model"], env.device, torch_dtype(cfg["dtype"]))
    pipe.scheduler = make_scheduler(cfg["sampler"]["name"], pipe.scheduler.config)
    progress.at("applying the strategy")
    handle = strategy_from_config(cfg["strategy"]).apply(pipe.unet, ctx)
    return pipe, handle, ctx, load_prompts(cfg["prompts"])


class _Progress:
    """Reports what the rank does (``env.progress``: a :class:`~distri.worker.env.Report`) and fires an
    injected fault: a forward hook on the denoiser counts its calls within each pipeline call (one per
    denoising step), so the pipeline's own step callback stays free (timed calls carry none) and nothing here
    synchronises the device."""

    def __init__(self, env, fault, steps: int) -> None:
        self.env, self.fault, self.steps = env, fault, steps
        self.report, self.step = Report(""), 0

    def at(self, phase: str, i: int | None = None, n: int | None = None, note: str = "") -> None:
        self.report = Report(phase, i, n, note=note)
        self.env.progress(self.report)

    def new_call(self) -> None:
        self.step = 0

    def after_step(self, module: Any, args: Any, output: Any) -> None:
        from distri.faults import maybe_fault

        note = ""
        if self.fault is not None and self.fault.fires(self.env.rank, f"step:{self.step}"):
            note = f"fault injection ({self.fault.kind})"
        self.env.progress(replace(self.report, step=self.step + 1, steps=self.steps, note=note))
        maybe_fault(self.fault, self.env.rank, f"step:{self.step}")
        self.step += 1


def run_job(env, cfg: dict[str, Any], job_dir: str) -> dict[str, Any] | None:
    """Run one job on this rank; rank 0 returns its measurements (the job layer makes the record)."""
    from distri.faults import fault_for, maybe_fault
    from distri.generate import generate  # looked up per job (tests wrap it)

    env.progress(
        Report("starting the job")
    )  # the heavy imports are done (module level): silence counts from here
    fault = fault_for(cfg.get("fault"))
    maybe_fault(fault, env.rank, "start")
    sm, steps = cfg["sampler"], cfg["sampler"]["num_inference_steps"]
    progress = _Progress(env, fault, steps)
    pipe, handle, ctx, prompts = _setup(env, cfg, progress)
    pipe.unet.register_forward_hook(progress.after_step)

    def call(i: int, callback=None, strategy: bool = True):
        if strategy:
            handle.reset()
        progress.new_call()
        return generate(
            pipe, prompts[i], cfg["seed"] + i, steps, sm["guidance_scale"], cfg["height"], cfg["width"],
            callback=callback,
        )  # fmt: skip

    latency = _time_runs(env, cfg, lambda: call(0), ctx.barrier, progress)
    spec = strategy_from_config(cfg["strategy"])
    sync = spec.sync_steps(steps)
    comm = {**ctx.ledger.summary(steps, sync or 0), "per_step": ctx.ledger.per_step(), "sync_steps": sync}
    progress.at("per-step profile")
    latency.update(_profile_steps(env, lambda cb: call(0, cb)))
    compare = cfg["metrics"]["compare_to_original"] and (not spec.identity or env.world_size > 1)
    out = Path(job_dir)
    paths = _make_images(call, len(prompts), out / "images" if env.rank == 0 else None, progress)
    record = _record(latency, comm, paths, prompts, handle) if env.rank == 0 else None
    originals = None
    if compare:
        handle.remove()
        plain = lambda i, cb=None: call(i, cb, strategy=False)  # noqa: E731
        _baseline(env, cfg, plain, ctx.barrier, record, progress)
        progress.at("single-device originals (cache)")
        originals = _originals(env, cfg, prompts, plain, ctx.barrier, record, out)
    if record is not None:
        with _ticking(progress, "image quality metrics (rank 0)"):
            _quality(env, cfg, record, originals, out, f"{spec.label()} x{env.world_size}")
        if not cfg["runner"]["save_images"]:
            _drop_files(record, "images")
    return record


def _make_images(
    call: Callable[[int], torch.Tensor], n: int, folder: Path | None, progress: _Progress
) -> list[str]:
    """Every rank takes part in each call; with a ``folder`` (rank 0) each image is written as a PNG at once."""
    from distri.generate import save_png

    paths = []
    for i in range(n):
        progress.at("image", i + 1, n)
        img = call(i)
        if folder is not None:
            paths.append(str(save_png(img, folder / f"{i:04d}.png")))
    return paths


def _record(latency: dict, comm: dict, paths: list[str], prompts: list[str], handle: Any) -> dict[str, Any]:
    record = {
        "latency": latency, "comm": comm, "metrics": {}, "images": paths, "prompts": prompts,
        "baseline_latency": None, "speedup": None, "speedup_statistic": None,
        "exact_method": bool(getattr(handle, "exact", True)), "threads_per_rank": torch.get_num_threads(),
    }  # fmt: skip
    if hasattr(handle, "param_report"):
        record["memory"] = {"params_rank0": handle.param_report()}
    return record


def _baseline(env, cfg, plain: Callable[..., Any], barrier, record: dict | None, progress: _Progress) -> None:
    """Step 4a above: the single-device latency, timed on every rank at once; ``speedup`` on rank 0."""
    from distri.metrics.latency import speedup

    base = _time_runs(env, cfg, lambda: plain(0), barrier, progress, label="single-device ")
    progress.at("single-device per-step profile")
    base.update(_profile_steps(env, lambda cb: plain(0, cb)))
    base["method"] += BASELINE_METHOD
    if record is not None:
        statistic = base["statistic"]
        record.update(baseline_latency=base, speedup=speedup(base, record["latency"], statistic),
                      speedup_statistic=statistic)  # fmt: skip


def _originals(env, cfg, prompts: list[str], plain, barrier, record: dict | None, out: Path) -> list[Path]:
    """Step 4b: the single-device images through the originals cache, the missing ones made data-parallel
    (rank ``r`` makes items ``r, r + N, ...``); every rank waits at a barrier for the others' shares, which
    differ from its own by at most one image."""
    from dataclasses import asdict

    from distri.metrics.job import fill_originals

    paths, stats = fill_originals(cfg, prompts, lambda i: plain(i), env.rank, env.world_size)
    every = _gather_to_rank0(env, asdict(stats))
    barrier()
    if record is not None:
        totals = {k: sum(s[k] for s in every) for k in ("generated", "reused", "waited")}
        record["originals"] = {"dir": str(paths[0].parent) if paths else None, **totals}
        record["reference_images"] = _link_references(paths, out) if cfg["runner"]["save_images"] else []
    return paths


def _link_references(paths: list[Path], out: Path) -> list[str]:
    """``<job>/reference/0000.png ...``: the originals, hard-linked (copied across file systems) beside
    ``<job>/images``, so that ``python -m distri.metrics <job>/images --ref <job>/reference`` pairs them."""
    import shutil

    folder = out / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    linked = []
    for i, src in enumerate(paths):
        dst = folder / f"{i:04d}.png"
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        linked.append(str(dst))
    return linked


def _quality(env, cfg, record: dict, originals: list[Path] | None, out: Path, label: str) -> None:
    """Rank 0: every image-quality metric of the job (and of the originals, against G.T. and the prompts),
    and the comparison grid."""
    from distri.metrics.job import job_quality

    device = str(env.device)
    grid_dir = out if cfg["runner"]["save_images"] else None  # save_images=false: no pictures are kept
    metrics, baseline, grid = job_quality(
        cfg, record["images"], originals, record["prompts"], grid_dir, label, device
    )
    record["metrics"].update(metrics)
    record["comparison_grid"] = grid
    if baseline is not None:
        record["baseline_metrics"] = baseline


@contextlib.contextmanager
def _ticking(progress: _Progress, stage: str, every_s: float = 10.0):
    """Report ``stage`` every ``every_s`` seconds while rank 0 works alone (no collective can hang here), so
    the watchdog's silence limit bounds the denoising steps, not the metrics over thousands of images."""
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(every_s):
            progress.at(stage, note=f"{time.monotonic() - start:.0f} s")

    progress.at(stage)
    t = threading.Thread(target=tick, daemon=True, name="distri-metrics-progress")
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def _gather_to_rank0(env, obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if env.world_size == 1:
        return [obj]
    import torch.distributed as dist

    got = [None] * env.world_size if env.rank == 0 else None
    dist.gather_object(obj, got, dst=0)
    return got


def _drop_files(record: dict[str, Any], key: str) -> None:
    """``runner.save_images=false``: remove the PNGs the comparison needed and list none."""
    for p in record[key]:
        Path(p).unlink(missing_ok=True)
    record[key] = []
