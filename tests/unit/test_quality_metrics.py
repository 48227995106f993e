"""Quality metrics (distri.metrics.compute) against independent computations: numpy for PSNR, direct calls of
clean-fid, lpips and transformers' CLIP for FID, LPIPS and CLIP score, with the same (stand-in) backbones."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distri.metrics.compute import NO_GT, NO_PROMPTS, compute_metrics
from distri.metrics.images import batches, list_images
from distri.metrics.options import metric_options, metric_problems

N, SIDE = 24, 48
OPTS = {"backbones": "stand-in", "progress": False, "batch_size": 5}
PROMPTS = [f"a photo of a cat number {i} on a red table" for i in range(N)]


def _pattern(i: int, side: int) -> np.ndarray:
    """A smooth, varied float image in [0, 255] (different frequencies, phases and colours per index)."""
    r = np.random.default_rng(i)
    yy, xx = np.mgrid[0:side, 0:side] / side
    a = r.uniform(0, 1, 6)
    chans = [
        np.sin(2 * np.pi * (3 * a[0] * xx + 2 * a[1] * yy) + 6 * a[2]),
        a[4] * np.cos(2 * np.pi * 2 * a[3] * xx),
        2 * (a[5] * xx + (1 - a[5]) * yy) - 1,
    ]
    return (np.stack(chans, -1) + 1) * 127.5


def _write_set(folder: Path, noise: float = 0.0, n: int = N, side: int = SIDE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = _pattern(i, side) + np.random.default_rng(1000 + i).normal(0, noise, (side, side, 3))
        Image.fromarray(img.clip(0, 255).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quality")
    out = {"base": _write_set(root / "base")}
    for sigma in (8, 24, 64):
        out[f"noise{sigma}"] = _write_set(root / f"noise{sigma}", noise=sigma)
    gt = root / "gt"  # real images: other sizes and modes, resized to SIDE x SIDE for LPIPS
    gt.mkdir()
    for i in range(N + 3):  # more G.T. images than generated ones: the first N (sorted) are used
        img = Image.fromarray(_pattern(50 + i, 64)[:40].round().astype(np.uint8))  # 64 wide, 40 high
        (img.convert("L") if i % 4 == 0 else img).save(gt / f"COCO_val2014_{i:012d}.jpg", quality=95)
    out["gt"] = gt
    return out


def _load(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


# ---------------------------------------------------------------------------------------------------- PSNR


def test_psnr_against_numpy(sets) -> None:
    rec = compute_metrics(sets["base"], sets["noise24"], options={**OPTS, "compute": ["psnr"]})
    per = [
        10 * np.log10(1.0 / np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
        for a, b in zip(_load(sets["base"]), _load(sets["noise24"]))
    ]
    assert rec["psnr_vs_orig"] == pytest.approx(float(np.mean(per)), rel=1e-12)
    assert rec["n_images_psnr_vs_orig"] == N and rec["psnr_vs_orig_n_identical"] == 0
    diffs = [np.abs(a.astype(np.float64) - b.astype(np.float64)) / 255
             for a, b in zip(_load(sets["base"]), _load(sets["noise24"]))]  # fmt: skip
    assert rec["max_abs_err_vs_orig"] == pytest.approx(max(float(d.max()) for d in diffs), rel=1e-12)
    assert rec["mean_abs_err_vs_orig"] == pytest.approx(float(np.mean([d.mean() for d in diffs])), rel=1e-12)


def test_psnr_identical_pairs_are_counted_and_json_safe(sets, tmp_path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, p in enumerate(sorted(sets["noise8"].glob("*.png"))):  # first 5 identical to base, the rest noisy
        src = sets["base"] / p.name if i < 5 else p
        (mixed / p.name).write_bytes(src.read_bytes())
    rec = compute_metrics(sets["base"], mixed, options={**OPTS, "compute": ["psnr"]})
    assert rec["psnr_vs_orig_n_identical"] == 5
    noisy = compute_metrics(list_images(sets["base"])[5:], list_images(sets["noise8"])[5:],
                            options={**OPTS, "compute": ["psnr"]})  # fmt: skip
    assert rec["psnr_vs_orig"] == pytest.approx(
        noisy["psnr_vs_orig"], rel=1e-12
    )  # mean of the differing pairs

    same = compute_metrics(sets["base"], sets["base"], options={**OPTS, "compute": ["psnr"]})
    assert same["psnr_vs_orig"] is None and same["psnr_vs_orig_n_identical"] == N
    json.dumps(same, allow_nan=False)  # strict JSON: no inf, no NaN, and no number stored as a string


# ---------------------------------------------------------------------------------------------------- FID


def _fid(gen: Path, ref: Path, **kw) -> float:
    return compute_metrics(gen, ref, options={**OPTS, "compute": ["fid"], **kw})["fid_vs_orig"]


def test_fid_is_zero_on_itself_and_grows_with_noise(sets) -> None:
    fids = [_fid(sets["base"], sets[f"noise{s}"]) for s in (8, 24, 64)]
    assert fids[0] < fids[1] < fids[2], fids
    assert abs(_fid(sets["base"], sets["base"])) < 1e-3 * fids[0]


def test_fid_equals_a_direct_clean_fid_call(sets) -> None:
    from cleanfid import fid

    from distri.metrics.standins import StandInFeatures

    net = StandInFeatures()

    def extractor(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    direct = fid.compute_fid(
        str(sets["base"]), str(sets["noise24"]), mode="clean", custom_feat_extractor=extractor,
        device=torch.device("cpu"), num_workers=0, batch_size=7, verbose=False,
    )  # fmt: skip
    assert _fid(sets["base"], sets["noise24"]) == pytest.approx(direct, rel=1e-6)


def test_fid_torchmetrics_implementation_agrees_with_clean_fid(sets) -> None:
    clean = _fid(sets["base"], sets["noise24"])
    tm = _fid(sets["base"], sets["noise24"], fid_impl="torchmetrics")
    assert tm == pytest.approx(clean, rel=2e-3)


# ---------------------------------------------------------------------------------------------------- LPIPS


def _direct_lpips(gen: list[np.ndarray], ref: list[torch.Tensor]) -> float:
    """lpips called directly on a network built as documented (random AlexNet trunk under seed 1)."""
    import lpips

    torch.manual_seed(1)
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in gen]).float() / 255
    y = torch.stack(ref).float() / 255
    with torch.no_grad():
        return float(net(x, y, normalize=True).mean())


def test_lpips_zero_symmetric_and_equal_to_a_direct_call(sets) -> None:
    opts = {**OPTS, "compute": ["lpips"]}
    assert compute_metrics(sets["base"], sets["base"], options=opts)["lpips_vs_orig"] == 0.0
    ab = compute_metrics(sets["base"], sets["noise24"], options=opts)
    ba = compute_metrics(sets["noise24"], sets["base"], options=opts)
    assert ab["lpips_vs_orig"] > 0 and ab["lpips_vs_orig"] == pytest.approx(ba["lpips_vs_orig"], rel=1e-5)
    noisy = [torch.from_numpy(a).permute(2, 0, 1) for a in _load(sets["noise24"])]
    assert ab["lpips_vs_orig"] == pytest.approx(_direct_lpips(_load(sets["base"]), noisy), rel=1e-5)
    assert ab["backbone_lpips_vs_orig"] == "stand-in" and ab["n_images_lpips_vs_orig"] == N


def test_lpips_vs_gt_resizes_as_the_papers_code(sets) -> None:
    from torchvision.transforms import Resize

    rec = compute_metrics(sets["base"], ref_gt=sets["gt"], options={**OPTS, "compute": ["lpips"]})
    gt_files = sorted(sets["gt"].iterdir())[:N]
    # scripts/compute_metrics.py: grey images repeated to 3 channels, then Resize((H, W)) on the uint8 tensor.
    refs = []
    for p in gt_files:
        a = np.asarray(Image.open(p))
        a = np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a
        refs.append(Resize((SIDE, SIDE))(torch.from_numpy(a.copy()).permute(2, 0, 1)))
    assert rec["n_images_lpips_vs_gt"] == N
    assert rec["lpips_vs_gt"] == pytest.approx(_direct_lpips(_load(sets["base"]), refs), rel=1e-5)


# ---------------------------------------------------------------------------------------------------- CLIP


def test_clip_score_equals_the_formula_with_the_same_tiny_clip(sets) -> None:
    from transformers import CLIPModel, CLIPProcessor

    from distri.metrics.standins import build_standin_clip

    rec = compute_metrics(sets["base"], prompts=PROMPTS, options={**OPTS, "compute": ["clip_score"]})
    folder = build_standin_clip()
    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    images = [torch.from_numpy(a).permute(2, 0, 1) for a in _load(sets["base"])]
    with torch.no_grad():
        inputs = proc(text=PROMPTS, images=images, return_tensors="pt", padding=True)
        out = model(**inputs)
    img, txt = out.image_embeds, out.text_embeds
    cos = (img / img.norm(dim=-1, keepdim=True) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1)
    expected = max(100 * float(cos.mean()), 0.0)
    assert rec["clip_score"] == pytest.approx(expected, rel=1e-4)
    assert rec["backbone_clip_score"] == "stand-in" and rec["n_images_clip_score"] == N


# ---------------------------------------------------------------------------------------------------- record


def test_absent_references_are_skipped_with_reasons_never_zero(sets) -> None:
    rec = compute_metrics(sets["base"], sets["noise8"], options={**OPTS, "compute": ["psnr", "lpips"]})
    assert rec["skipped"] == {
        "lpips_vs_gt": NO_GT,
        "fid_vs_orig": "not in metrics.compute",
        "fid_vs_gt": "not in metrics.compute",
        "clip_score": "not in metrics.compute",
    }
    for key in rec["skipped"]:
        assert key not in rec
    rec = compute_metrics(sets["base"], options={**OPTS, "compute": ["clip_score"]})
    assert rec["skipped"]["clip_score"] == NO_PROMPTS and "psnr_vs_orig" in rec["skipped"]
    assert "stand-in" in rec["quality_method"]


def test_a_degenerate_fid_is_skipped_with_the_librarys_reason(sets, monkeypatch) -> None:
    import distri.metrics.compute as compute

    def degenerate(f1, f2):
        raise ValueError("Imaginary component 0.5")

    monkeypatch.setattr(compute, "fid_from_features", degenerate)
    rec = compute_metrics(sets["base"], sets["noise8"], options={**OPTS, "compute": ["fid"]})
    assert "fid_vs_orig" not in rec and "Imaginary component 0.5" in rec["skipped"]["fid_vs_orig"]


def test_fid_from_fewer_images_than_features_is_noted_not_warned(sets) -> None:
    """2 images (scipy then warns of a singular matrix) and 24, for 64 stand-in features: singular covariances.
    The value stays clean-fid's, with a note; 2 images must not warn."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes scipy's deprecated `disp`
        two = compute_metrics(list_images(sets["base"])[:2], list_images(sets["noise24"])[:2],
                              options={**OPTS, "compute": ["fid"]})  # fmt: skip
    assert two["notes"]["fid_vs_orig"].startswith("singular covariance: 2 images for 64 features")
    rec = compute_metrics(sets["base"], sets["noise24"], options={**OPTS, "compute": ["fid"]})
    assert rec["fid_vs_orig"] == pytest.approx(_fid(sets["base"], sets["noise24"]))
    assert "singular covariance: 24 images for 64 features" in rec["notes"]["fid_vs_orig"]


def test_pairing_errors_are_clear(sets, tmp_path) -> None:
    few = list_images(sets["noise8"])[:3]
    with pytest.raises(ValueError, match="24 generated images but 3 originals"):
        compute_metrics(sets["base"], few, options=OPTS)
    with pytest.raises(ValueError, match="only 3 prompts"):
        compute_metrics(sets["base"], prompts=PROMPTS[:3], options=OPTS)
    big = _write_set(tmp_path / "big", n=N, side=SIDE + 8)
    with pytest.raises(ValueError, match=r"is \(56, 56\) but its pair"):
        compute_metrics(sets["base"], big, options={**OPTS, "compute": ["psnr"]})


def test_options_are_validated_with_the_key_to_change(tmp_path) -> None:
    problems = metric_problems(
        {"compute": ["psnr", "ssim"], "backbones": "fake", "gt_dir": str(tmp_path / "x")}
    )
    assert any("metrics.compute='ssim'" in p for p in problems)
    assert any("metrics.backbones='fake'" in p for p in problems)
    assert any("metrics.gt_dir=" in p for p in problems)
    with pytest.raises(ValueError, match="metrics.batch_size"):
        metric_options({"batch_size": 0})
    assert metric_problems({"compare_to_original": True, "originals_dir": None}) == []


def test_images_stream_in_batches(sets) -> None:
    files = list_images(sets["base"])
    seen = [b[0].shape[0] for b in batches(files, files, batch_size=5, progress=False)]
    assert seen == [5, 5, 5, 5, 4]  # never more than one batch of images at a time


# ---------------------------------------------------------------------------------------------------- command


def test_folder_command_gives_the_library_numbers(sets, tmp_path) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))  # the paper's prompts.json layout: a JSON list of captions
    args = [
        str(sets["base"]),
        "--ref",
        str(sets["noise24"]),
        "--gt",
        str(sets["gt"]),
        "--prompts",
        str(prompts),
    ]
    args += ["--backbones", "stand-in", "--batch-size", "5", "--json", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "distri.metrics", *args], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    lib = compute_metrics(sets["base"], sets["noise24"], sets["gt"], PROMPTS, options=OPTS)
    assert cli.keys() == lib.keys() and cli["skipped"] == {}
    for key, value in lib.items():
        if isinstance(value, float):
            assert math.isfinite(cli[key]) and cli[key] == pytest.approx(value, rel=1e-5), key
        else:
            assert cli[key] == value, key


def test_a_session_computes_each_sets_fid_features_once_and_changes_no_value(sets, monkeypatch):
    """A job's metrics then its originals' baseline metrics, as ``job_quality`` computes them: with one session
    the originals' and G.T.'s features are extracted once (3 extractions, not 5), and every value equals that
    of separate calls."""
    import distri.metrics.compute as compute

    separate = [
        compute_metrics(sets["base"], sets["noise24"], sets["gt"], PROMPTS, options=OPTS),
        compute_metrics(sets["noise24"], None, sets["gt"], PROMPTS, options=OPTS),
    ]
    extracted = []
    real = compute.clean_fid_features
    monkeypatch.setattr(
        compute,
        "clean_fid_features",
        lambda paths, *a, **k: extracted.append(len(paths)) or real(paths, *a, **k),
    )
    session = compute.MetricSession(OPTS)
    shared = [
        compute_metrics(sets["base"], sets["noise24"], sets["gt"], PROMPTS, session=session),
        compute_metrics(sets["noise24"], None, sets["gt"], PROMPTS, session=session),
    ]
    assert extracted == [N, N, N]
    assert shared == separate
    with pytest.raises(ValueError, match="either a session or options"):
        compute_metrics(sets["base"], options=OPTS, session=session)
