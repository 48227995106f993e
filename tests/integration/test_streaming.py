"""A 200-prompt job at the tiny model's resolution runs with flat memory (slow: about 300 pipeline calls).

Two ranks (naive patch, one step) make 200 images and the 200 single-device references. While the job runs,
a thread samples each rank's resident memory (``VmRSS``) with how many PNGs the job has written (its images,
then the originals in the job's own originals cache, which the ranks fill data-parallel before they are linked
into ``<job>/reference`` at once), so memory can be read against progress: in each phase the mean memory late in it (images or references 160-200) must be
that of early in it (20-60), up to noise, and no peak may stand far above it. Held images would show: 200
float images of 256^2 are 157 MB, and even their 8-bit contents 39 MB per set. The process-group timeout is
60 s, so no rank may wait at a collective for anything like a phase (the old single-device phase kept the
other ranks at a barrier while rank 0 made every reference). The metrics phase after both is not sampled
here: rank 0 then holds the metric backbones (about 150 MB with the stand-ins), which would hide a trend.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest

from distri.launch import WorkerPool
from distri.models.tiny import build_tiny
from tests.integration.test_job_protocol import config

N = 200
TREND_BOUND_MB = 12.0  # mean memory late in a phase minus early in it (images held: 24-94 MB)
PEAK_BOUND_MB = 64.0  # peak after the first 20 images over the memory then (measured: up to +29 MB)


def window(samples: list, rank: int, phase: int, lo: int, hi: int) -> list[float]:
    """Rank's memory while ``lo <= count < hi`` images (phase 0: parallel, no reference yet) or references
    (phase 1) had been written."""
    got = [s[2][rank] for s in samples if (s[1] == 0 if phase == 0 else s[0] == N) and lo <= s[phase] < hi]
    assert len(got) >= 3, f"too few samples in phase {phase} between {lo} and {hi} images"
    return got


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample(pool: WorkerPool, job: Path, stop: threading.Event, out: list) -> None:
    pids = [p.pid for p in pool._procs]
    while not stop.is_set():
        n_img = sum(1 for _ in (job / "images").glob("*.png")) if (job / "images").is_dir() else 0
        n_ref = sum(1 for p in (job / "originals").rglob("*.png") if not p.name.startswith("."))
        out.append((n_img, n_ref, [rss_mb(pid) for pid in pids]))
        time.sleep(0.25)


@pytest.mark.slow
def test_200_prompts_run_with_flat_memory(tmp_path):
    cfg = config(
        "world_size=2", "strategy=naive_patch", "height=256", "width=256", "sampler.num_inference_steps=1",
        "runner.warmup_runs=0", "runner.timed_runs=1",
    )  # fmt: skip
    cfg["prompts"]["prompts"] = [f"a photo of object number {i}" for i in range(N)]
    cfg["prompts"]["limit"] = None
    cfg["metrics"]["originals_dir"] = str(tmp_path / "originals")  # counted by `sample`, empty at the start
    build_tiny(cfg["model"]["name"], None)
    samples: list = []
    stop = threading.Event()
    with WorkerPool(2, "cpu", timeout_s=60, threads=1) as pool:
        t = threading.Thread(target=sample, args=(pool, tmp_path, stop, samples), daemon=True)
        t.start()
        try:
            rec = pool.run("distri.worker.job:run_job", cfg=cfg, job_dir=str(tmp_path))[0]
        finally:
            stop.set()
            t.join()
    assert rec["metrics"]["n_images_psnr_vs_orig"] == N and len(rec["reference_images"]) == N
    for rank in (0, 1):
        for phase, (early, late) in {0: ((20, 60), (160, N)), 1: ((20, 60), (160, N))}.items():
            a, b = window(samples, rank, phase, *early), window(samples, rank, phase, *late)
            growth = statistics.fmean(b) - statistics.fmean(a)
            print(f"rank {rank}, {('images', 'references')[phase]}: {growth:+.1f} MB from early to late")
            assert growth < TREND_BOUND_MB, f"rank {rank} memory grows with the prompts: {growth:.1f} MB"
        start = next(s for s in samples if s[0] >= 20)[2][rank]
        peak = max(s[2][rank] for s in samples if s[0] >= 20 and s[1] < N)
        assert peak - start < PEAK_BOUND_MB, (
            f"rank {rank}: {start:.0f} MB after 20 images, peak {peak:.0f} MB"
        )
