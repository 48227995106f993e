"""``compute_metrics``: every quality metric of a generated image set against its references, as a record.

References, as in the paper: ``orig``, the single-device output of the same model, sampler, steps, guidance,
resolution, dtype, prompt and seed (paired by position with the generated images); ``gt``, real images (the first
``n`` of the folder in sorted name order, paired by position; COCO val2014 file names sort by image id, as the
``coco`` prompt set does). Record keys (every value a number, ``None`` or a plain string label, never a number
stored as a string):

* ``psnr_vs_orig`` (dB; ``None`` when every pair is bit-identical) and ``psnr_vs_orig_n_identical``;
  ``max_abs_err_vs_orig`` (largest absolute pixel difference over all pairs) and ``mean_abs_err_vs_orig`` (mean
  over pairs of each pair's mean absolute difference), in ``[0, 1]`` units of the 8-bit images;
* ``lpips_vs_orig``, ``lpips_vs_gt``, ``fid_vs_orig``, ``fid_vs_gt``, ``clip_score``;
* shapes models only (options ``domain="shapes"``, with prompts): ``shape_accuracy`` and its parts
  ``shape_accuracy_<object|size|relation|background>``, ``n_attributes_shape_accuracy``, with originals
  ``shape_agreement_vs_orig``, and ``backbone_shape_accuracy`` (see :mod:`distri.metrics.shapes`);
* ``n_images_<metric>`` for each metric computed, ``backbone_<metric>`` (``real`` or ``stand-in``) for each
  metric with a backbone, ``backbone_names`` (what each backbone is), ``quality_method`` (how it was measured);
* ``skipped``: ``{metric: reason}`` for every metric not computed (reference absent, disabled, too few images
  or degenerate FID statistics);
* ``notes``: ``{metric: text}`` for a metric computed with a caveat (FID from no more images than feature
  dimensions: the covariances are singular, so the value is biased and only a smoke test).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.linalg import LinAlgWarning

from distri.metrics.backbones import (
    Backbones,
    clip_loader,
    load_fid_features,
    load_lpips,
    resolve_backbones,
)
from distri.metrics.images import ImageSource, list_images
from distri.metrics.options import MetricOptions, metric_options
from distri.metrics.scores import (
    clean_fid_features,
    clip_score,
    fid_from_features,
    mean_psnr,
    paired_scores,
    torchmetrics_fid,
)

NO_ORIG = (
    "no originals: the single-device images were not given (ref_orig / --ref; in a job: "
    "metrics.compare_to_original=false)"
)
NO_GT = "no G.T. folder: set metrics.gt_dir (--gt) to a folder of real images, e.g. COCO val2014"
NO_PROMPTS = "no prompts given (prompts / --prompts FILE)"
DISABLED = "not in metrics.compute"
ALL_METRICS = ("psnr_vs_orig", "lpips_vs_orig", "lpips_vs_gt", "fid_vs_orig", "fid_vs_gt", "clip_score")


def _refs(generated: ImageSource, ref_orig, ref_gt, prompts) -> tuple[list[Path], Any, Any, Any]:
    gen = list_images(generated)
    n = len(gen)
    orig = list_images(ref_orig) if ref_orig is not None else None
    if orig is not None and len(orig) != n:
        raise ValueError(f"{n} generated images but {len(orig)} originals; they are paired by position")
    gt = list_images(ref_gt) if ref_gt is not None else None
    if gt is not None and len(gt) < n:
        raise ValueError(f"{n} generated images but only {len(gt)} G.T. images in {ref_gt}")
    if prompts is not None and len(prompts) < n:
        raise ValueError(f"{n} generated images but only {len(prompts)} prompts")
    return gen, orig, gt[:n] if gt else gt, list(prompts[:n]) if prompts is not None else None


class MetricSession:
    """What several ``compute_metrics`` calls with the same options can share: the backbones, each loaded once,
    and the clean-fid features of each image set, computed once (a job's images against its originals and G.T.,
    then the originals themselves against G.T.: the originals' and G.T.'s features serve both calls)."""

    def __init__(
        self,
        options: Mapping[str, Any] | MetricOptions | None = None,
        backbones: Backbones | None = None,
        device: str | None = None,
    ) -> None:
        self.o = metric_options(options)
        self.bb = backbones or resolve_backbones(self.o)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.kw = {
            "device": self.device,
            "batch_size": self.o.batch_size,
            "num_workers": self.o.num_workers,
            "progress": self.o.progress,
        }
        self._lpips: Any = None
        self._fid: Any = None
        self._clip: Any = None
        self._features: dict[tuple[str, ...], np.ndarray] = {}

    def lpips(self) -> Any:
        if self._lpips is None:
            self._lpips = load_lpips(self.bb.items["lpips"], self.o.lpips_net, self.device)
        return self._lpips

    def fid_extractor(self) -> Any:
        if self._fid is None:
            self._fid = load_fid_features(self.bb.items["fid"], self.device, self.o.domain)
        return self._fid

    def clip(self) -> Callable[[], tuple[Any, Any]]:
        """torchmetrics' CLIP loader, loading the model and processor on its first call only."""
        if self._clip is None:
            self._clip = functools.cache(clip_loader(self.bb.items["clip_score"], self.o.clip_model))
        return self._clip

    def fid_features(self, paths: Sequence[Path], desc: str) -> np.ndarray:
        key = tuple(str(p) for p in paths)
        if key not in self._features:
            self._features[key] = clean_fid_features(paths, self.fid_extractor(), desc=desc, **self.kw)
        return self._features[key]


class _Run:
    """One ``compute_metrics`` call: its session (options, backbones, device) and the record being filled."""

    def __init__(self, session: MetricSession) -> None:
        self.session, self.o, self.bb, self.kw = session, session.o, session.bb, session.kw
        self.record: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def put(self, metric: str, value: float | None, n: int, backbone: str | None = None) -> None:
        self.record[metric] = value
        self.record[f"n_images_{metric}"] = n
        if backbone is not None:
            self.record[f"backbone_{metric}"] = self.bb.kind(backbone)

    def wanted(self, metric: str, family: str, reference: Any, reason: str) -> bool:
        if not self.o.wants(family):
            self.skipped[metric] = DISABLED
        elif reference is None:
            self.skipped[metric] = reason
        return metric not in self.skipped

    def paired(self, gen: list[Path], ref: list[Path], name: str) -> None:
        want_psnr = name == "orig" and self.o.wants("psnr")
        lp = self.session.lpips() if self.o.wants("lpips") else None
        s = paired_scores(gen, ref, lpips_model=lp, psnr=want_psnr, resize_refs=name == "gt",
                          desc=f"PSNR/LPIPS vs {name}", **self.kw)  # fmt: skip
        if want_psnr:
            mean, n_identical = mean_psnr(s["psnr"])
            self.put("psnr_vs_orig", mean, len(s["psnr"]))
            self.record["psnr_vs_orig_n_identical"] = n_identical
            self.record["max_abs_err_vs_orig"] = max(s["max_abs"], default=None)
            self.record["mean_abs_err_vs_orig"] = sum(s["mean_abs"]) / len(s["mean_abs"])
        if lp is not None:
            self.put(f"lpips_vs_{name}", sum(s["lpips"]) / len(s["lpips"]), len(s["lpips"]), "lpips")

    def fid(self, gen: list[Path], refs: dict[str, list[Path]]) -> None:
        if len(gen) < 2:
            for name in refs:
                self.skipped[f"fid_vs_{name}"] = f"FID needs at least 2 images per set, got {len(gen)}"
            return
        if self.o.fid_impl == "torchmetrics":
            values = torchmetrics_fid(gen, refs, self.session.fid_extractor(), **self.kw)
        else:
            values = self._clean_fid(gen, refs)
        for name, value in values.items():
            self.put(f"fid_vs_{name}", value, len(gen), "fid")

    def _clean_fid(self, gen: list[Path], refs: dict[str, list[Path]]) -> dict[str, float]:
        g, values = self.session.fid_features(gen, "FID generated"), {}
        for name, paths in refs.items():
            r = self.session.fid_features(paths, f"FID {name}")
            # clean-fid raises "Imaginary component" for degenerate covariances (few images): skip, say why.
            # With no more images than features the covariances are singular (rank <= n - 1): scipy may warn
            # of it; the record's note says it instead, for every such set
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LinAlgWarning)
                try:
                    values[name] = fid_from_features(g, r)
                except ValueError as e:
                    self.skipped[f"fid_vs_{name}"] = (
                        f"FID undefined for these {len(gen)} images (clean-fid: {e})"
                    )
            if name in values and min(len(g), len(r)) <= g.shape[1]:
                self.notes[f"fid_vs_{name}"] = (
                    f"singular covariance: {min(len(g), len(r))} images for {g.shape[1]} features, so this FID "
                    "is biased (a smoke test; the paper uses 5,000 images)"
                )
        return values

    def clip(self, gen: list[Path], prompts: list[str]) -> None:
        self.put(
            "clip_score", clip_score(gen, prompts, self.session.clip(), **self.kw), len(gen), "clip_score"
        )


def compute_metrics(
    generated: ImageSource,
    ref_orig: ImageSource | None = None,
    ref_gt: ImageSource | None = None,
    prompts: Sequence[str] | None = None,
    options: Mapping[str, Any] | MetricOptions | None = None,
    *,
    backbones: Backbones | None = None,
    device: str | None = None,
    session: MetricSession | None = None,
) -> dict[str, Any]:
    """Quality metrics of ``generated`` (a folder or image paths) against its references, as record keys.

    ``ref_orig``: the single-device images, paired by position; ``ref_gt``: real images (default
    ``options.gt_dir``), the first ``len(generated)`` paired by position and resized to the generated size;
    ``prompts``: caption ``i`` of image ``i`` (CLIP score); ``options``: the ``metrics`` config (see
    :class:`~distri.metrics.options.MetricOptions`); ``backbones``: from :func:`resolve_backbones` at job start
    (resolved here when ``None``); ``device``: default CUDA when available; ``session``: a
    :class:`MetricSession` shared with other calls, in place of ``options``, ``backbones`` and ``device``.
    Images stream from disk in batches of ``options.batch_size``. The keys are described in this module's
    docstring.
    """
    if session is not None and (options, backbones, device) != (None, None, None):
        raise ValueError("compute_metrics: give either a session or options/backbones/device, not both")
    run = _Run(session or MetricSession(options, backbones, device))
    o = run.o
    gen, orig, gt, prompts = _refs(generated, ref_orig, ref_gt if ref_gt is not None else o.gt_dir, prompts)
    # `|`, not `or`: both calls record their skip reasons.
    if run.wanted("psnr_vs_orig", "psnr", orig, NO_ORIG) | run.wanted(
        "lpips_vs_orig", "lpips", orig, NO_ORIG
    ):
        run.paired(gen, orig, "orig")
    if run.wanted("lpips_vs_gt", "lpips", gt, NO_GT):
        run.paired(gen, gt, "gt")
    fid_refs = {k: r for k, r in (("orig", orig), ("gt", gt)) if run.wanted(f"fid_vs_{k}", "fid", r, _why(k))}
    if fid_refs:
        run.fid(gen, fid_refs)
    if run.wanted("clip_score", "clip_score", prompts, NO_PROMPTS):
        run.clip(gen, prompts)
    if o.domain == "shapes" and prompts is not None:
        from distri.metrics.shapes import CLASSIFIER, shape_scores

        run.record.update(shape_scores(gen, prompts, orig))
        run.record["backbone_shape_accuracy"] = CLASSIFIER
    run.record["skipped"] = {m: run.skipped[m] for m in ALL_METRICS if m in run.skipped}
    run.record["notes"] = dict(run.notes)
    run.record["backbone_names"] = {m: b.label() for m, b in run.bb.items.items()}
    run.record["quality_method"] = describe_quality(o, run.bb, run.record)
    return run.record


def _why(ref: str) -> str:
    return NO_ORIG if ref == "orig" else NO_GT


def describe_quality(o: MetricOptions, bb: Backbones, record: Mapping[str, Any]) -> str:
    """How each computed metric was measured, in one string (for the record and every printed table)."""
    parts = []
    if "psnr_vs_orig" in record:
        parts.append(
            "PSNR: per image, data range [0, 1], mean over pairs (bit-identical pairs counted apart)"
        )
    if any(k in record for k in ("lpips_vs_orig", "lpips_vs_gt")):
        parts.append(f"LPIPS: lpips package, inputs [0, 1] (normalize=True), mean over pairs, backbone "
                     f"{bb.items['lpips'].label()}")  # fmt: skip
    if "lpips_vs_gt" in record:
        parts.append("G.T. images resized to the generated size (torchvision bilinear, antialias) for LPIPS")
    if any(k in record for k in ("fid_vs_orig", "fid_vs_gt")):
        impl = (
            "clean-fid clean mode" if o.fid_impl == "clean-fid" else "torchmetrics FrechetInceptionDistance"
        )
        parts.append(f"FID: {impl} (PIL bicubic resize to 299x299), backbone {bb.items['fid'].label()}")
    if "clip_score" in record:
        parts.append(f"CLIP score: torchmetrics CLIPScore, max(100 * mean cosine, 0), backbone "
                     f"{bb.items['clip_score'].label()}")  # fmt: skip
    if "shape_accuracy" in record:
        parts.append("shape accuracy: fraction of the captions' attributes (objects, sizes, relations, "
                     f"backgrounds) the {record['backbone_shape_accuracy']} finds")  # fmt: skip
    if any(b.kind == "stand-in" for b in bb.items.values()):
        parts.append("numbers with backbone_*=stand-in are not comparable with published ones")
    return "; ".join(parts)
