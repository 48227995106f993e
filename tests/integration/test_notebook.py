"""A real tiny sweep through ``run.py -m``, then ``analysis/sweep.ipynb`` executed on it with nbclient, and the
``python -m analysis.tables`` / ``python -m analysis.plots`` commands on the same records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SWEEP = [
    "model=tiny_sdxl",
    "world_size=1,2",
    "strategy=displaced_patch",
    "strategy.warmup_steps=1",
    "sampler.num_inference_steps=3",
    "height=64",
    "width=64",
    "prompts.limit=1",
    "runner.warmup_runs=0",
    "runner.timed_runs=1",
    "runner.trim=0",
    "logger=none",
]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # two tiny jobs: ~30 s on 2 idle cores


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny jobs: DistriFusion on 1 rank (bit-identical to its original) and on 2 ranks."""
    root = tmp_path_factory.mktemp("nb")
    out = root / "sweep"
    p = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *SWEEP, f"hydra.sweep.dir={out}"],
        cwd=root, env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok"] * 2
    return out


def test_notebook_executes_on_the_sweep(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DISTRI_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(ROOT / "analysis" / "sweep.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in code for o in c.outputs
    )  # fmt: skip
    assert f"sweep: {sweep}" in text and "2 job(s), 0 not ok" in text
    assert "**Table 1: quality and latency**" in text and "| 3 | 1 | DistriFusion | inf |" in text
    assert "**Table 2: communication and latency**" in text and "64^2" in text
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images == 4  # speedup, latency split, quality vs latency, the worst image next to its original
    worst = code[-1].outputs[0]["data"]["text/plain"]  # the last cell's value: the worst image's row
    assert re.search(r"^method\s+DistriFusion$", worst, re.M) and re.search(r"^world_size\s+2$", worst, re.M)


def test_commands_print_tables_and_write_plots(sweep: Path, tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "analysis.tables", str(sweep), "--table", "1", "--format", "latex"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (
        r"\begin{tabular}" in p.stdout
        and "DistriFusion" in p.stdout
        and "2 job(s): 2 ok, 0 failed" in p.stdout
    )
    p = subprocess.run(
        [sys.executable, "-m", "analysis.plots", str(sweep), "--out", str(tmp_path / "figs")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    names = sorted(f.name for f in (tmp_path / "figs").iterdir())
    assert names == sorted(
        f"{n}.{e}" for n in ("speedup", "latency_split", "quality_latency") for e in ("png", "svg")
    )
