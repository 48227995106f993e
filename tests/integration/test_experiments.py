"""The experiments (``experiments/*/conf/experiment/``): every job of each paper-scale sweep composes and passes
validation with the paper's rows, and each ``tiny_*`` variant runs as a user runs it (``python run.py -m
+experiment=tiny_<name>``) and its table builds from the records (``python -m analysis.tables``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from analysis.frame import method_label
from distri.config import register_configs, validate

ROOT = Path(__file__).resolve().parents[2]
PAPER_RES = (1024, 2048, 3840)


def sweep_jobs(name: str, *overrides: str) -> list[dict[str, Any]]:
    """The resolved config of every job of ``+experiment=name``'s sweep, expanded by Hydra's own sweeper."""
    register_configs(ConfigStore.instance())
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        base = [f"+experiment={name}", *overrides]
        hydra_cfg = compose("config", overrides=base, return_hydra_config=True).hydra
        params = [f"{k}={v}" for k, v in hydra_cfg.sweeper.params.items()]
        combos = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)[0]
        return [OmegaConf.to_container(compose("config", overrides=base + c), resolve=True) for c in combos]


def _row(cfg: dict[str, Any], *keys: str) -> tuple:
    s = cfg["strategy"]
    label = method_label(s["name"], s.get("mode"), s.get("cfg_split"))
    return (label, cfg["world_size"], *(OmegaConf.select(OmegaConf.create(cfg), k) for k in keys))


def _product(rows: list[tuple], values: tuple) -> set[tuple]:
    return {(*r, v) for r in rows for v in values}


# The paper's rows (shared/reference/distrifusion.md): method, devices, and the swept setting.
PAPER = {
    "distrifusion_table1": (
        "sampler.num_inference_steps",
        _product([("Original", 1)] + [(m, n) for m in ("Naive patch", "DistriFusion") for n in (2, 4, 8)], (50, 25)),
    ),
    "distrifusion_table2": (
        "height",
        _product([("Original", 1)] + [(m, 8) for m in ("Sync. TP", "Sync. PP", "DistriFusion", "No Comm.")], PAPER_RES),
    ),
    "distrifusion_fig6": (
        "height",
        _product([("Original", 1)] + [("DistriFusion", n) for n in (2, 4, 8)]
                 + [("DistriFusion + CFG split", n) for n in (4, 8)], PAPER_RES),
    ),
    "distrifusion_gn_ablation": (
        "sampler.num_inference_steps",
        {(m, 8, 50) for m in ("DistriFusion", "DistriFusion (separate GN)", "DistriFusion (stale GN)",
                              "DistriFusion (sync GN)")},
    ),
    "distrifusion_warmup_ablation": ("strategy.warmup_steps", {("DistriFusion", 8, w) for w in (0, 1, 2)}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweep_has_the_papers_rows_and_validates(name: str, tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n")
    jobs = sweep_jobs(name, f"++prompts.path={captions}")
    key, expected = PAPER[name]
    assert sorted(_row(j, key) for j in jobs) == sorted(expected)  # each job once, nothing else
    for job in jobs:
        assert (job["model"]["name"], job["device"], job["dtype"], job["width"]) == (
            "sdxl", "cuda", "float16", job["height"]
        )  # fmt: skip
        assert job["runner"]["warmup_runs"] == 3 and job["runner"]["timed_runs"] == 10  # the paper's protocol
        validate(job)  # raises ConfigError naming every problem
    if name == "distrifusion_warmup_ablation":
        assert {(j["sampler"]["name"], j["sampler"]["num_inference_steps"]) for j in jobs} == {("dpmpp", 10)}


ABLATION = ["devices", "LPIPS (Orig)", "latency", "speedup"]
# tiny experiment -> (--table, jobs, table columns, the identifying columns of each row in order, the columns
# filled in every row, the columns filled in every row of more than one device)
TINY = {
    "tiny_distrifusion_table1": ("1", 6,
        ["steps", "devices", "method", "PSNR (Orig)", "LPIPS G.T. / Orig", "FID G.T. / Orig", "MACs (T)", "latency",
         "speedup"],
        [(s, d, m) for s in ("8", "6") for d, m in (("1", "Original"), ("2", "Naive patch"), ("2", "DistriFusion"))],
        ["latency"], ["PSNR (Orig)", "speedup"]),
    "tiny_distrifusion_table2": ("2", 5, ["devices", "method", "64^2"],
        [("1", "Original"), ("2", "Sync. TP"), ("2", "Sync. PP"), ("2", "DistriFusion"), ("2", "No Comm.")],
        ["64^2"], []),
    "tiny_distrifusion_fig6": ("fig6", 4, ["resolution", "method", "1 device", "2 devices"],
        [("64^2", "DistriFusion"), ("128^2", "DistriFusion")], ["1 device", "2 devices"], []),
    "tiny_distrifusion_gn_ablation": ("gn", 4, [*ABLATION[:1], "GroupNorm", *ABLATION[1:]],
        [("1", "Original (in-job, mean of 4)")]
        + [("2", m) for m in ("corrected_async_gn", "separate_gn", "stale_gn", "sync_gn")],
        ["latency"], ["LPIPS (Orig)", "speedup"]),
    "tiny_distrifusion_warmup_ablation": ("warmup", 3, [*ABLATION[:1], "warm-up steps", *ABLATION[1:]],
        [("1", "Original (in-job, mean of 3)"), ("2", "0"), ("2", "1"), ("2", "2")],
        ["latency"], ["LPIPS (Orig)", "speedup"]),
}  # fmt: skip


def _markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_experiment_runs_and_its_table_builds(name: str, tmp_path: Path) -> None:
    table, n_jobs, columns, keys, filled, filled_parallel = TINY[name]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    sweep = tmp_path / "sweep"
    p = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", f"+experiment={name}", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=880,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    records = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * n_jobs, [r.get("error") for r in records]

    p = subprocess.run(
        [sys.executable, "-m", "analysis.tables", str(sweep), "--table", table],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    header, rows = _markdown_rows(p.stdout)
    assert header == columns
    assert [tuple(r[: len(keys[0])]) for r in rows] == keys
    for row in rows:
        cells = dict(zip(header, row))
        must = filled + ([] if cells.get("devices") == "1" else filled_parallel)
        assert all(cells[c] != "-" for c in must), (must, row)
    assert f"{n_jobs} job(s): {n_jobs} ok, 0 failed" in p.stdout
