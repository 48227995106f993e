"""``python -m distri.metrics GENERATED_DIR --ref REF_DIR [--gt GT_DIR] [--prompts FILE] [--json]``.

Quality metrics of folders that already exist (what the paper's ``scripts/compute_metrics.py`` is for), through
:func:`distri.metrics.compute.compute_metrics`: the same numbers and record keys as a job. ``--ref`` is the
single-device (original) images, ``--gt`` real images, ``--prompts`` the captions (one per generated image, in
the file order; any format :func:`distri.prompts.read_captions` reads). ``--json`` prints the record as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from distri.metrics.options import BACKBONE_MODES, DEFAULT_CLIP_MODEL, FID_IMPLS, LPIPS_NETS, QUALITY_METRICS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distri.metrics", description=__doc__.split("\n\n")[1])
    p.add_argument("generated", metavar="GENERATED_DIR", help="folder of generated images (sorted by name)")
    p.add_argument(
        "--ref", metavar="REF_DIR", help="folder of the single-device (original) images, same order"
    )
    p.add_argument("--gt", metavar="GT_DIR", help="folder of real images; the first N (sorted) are used")
    p.add_argument(
        "--prompts", metavar="FILE", help="captions file (.json, .jsonl or .txt), caption i = image i"
    )
    p.add_argument("--json", action="store_true", help="print the record as JSON (nothing else on stdout)")
    p.add_argument("--metrics", default=",".join(QUALITY_METRICS), help="comma-separated subset to compute")
    p.add_argument("--backbones", choices=BACKBONE_MODES, default="auto")
    p.add_argument("--lpips-net", choices=LPIPS_NETS, default="alex")
    p.add_argument("--fid-impl", choices=FID_IMPLS, default="clean-fid")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="hub id or local folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_record(record: dict[str, Any]) -> str:
    """The record as a small table: metric, value, images used, backbone; then skipped metrics and the method."""
    rows = [("metric", "value", "images", "backbone")]
    for key in ("psnr_vs_orig", "lpips_vs_orig", "lpips_vs_gt", "fid_vs_orig", "fid_vs_gt", "clip_score"):
        if key in record:
            value = _fmt(record[key])
            if key == "psnr_vs_orig" and record.get("psnr_vs_orig_n_identical"):
                value += f" ({record['psnr_vs_orig_n_identical']} identical)"
            rows.append((key, value, str(record[f"n_images_{key}"]), record.get(f"backbone_{key}", "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"skipped {k}: {why}" for k, why in record["skipped"].items()]
    lines.append(f"measured: {record['quality_method']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command; returns the record (also printed). Bad input exits with status 2 and the reason."""
    from distri.metrics.backbones import BackboneMissingError, resolve_backbones
    from distri.metrics.compute import compute_metrics
    from distri.metrics.options import metric_options
    from distri.prompts import read_captions

    args = _parser().parse_args(argv)
    try:
        options = metric_options(
            compute=[m.strip() for m in args.metrics.split(",") if m.strip()], backbones=args.backbones,
            lpips_net=args.lpips_net, fid_impl=args.fid_impl, clip_model=args.clip_model,
            batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress,
        )  # fmt: skip
        backbones = resolve_backbones(options)
        print(backbones.summary(), file=sys.stderr)
        prompts = read_captions(args.prompts) if args.prompts else None
        record = compute_metrics(
            args.generated, args.ref, args.gt, prompts, options, backbones=backbones, device=args.device
        )
    except (ValueError, FileNotFoundError, BackboneMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(record, indent=2, allow_nan=False) if args.json else format_record(record))
    return record


if __name__ == "__main__":
    main()
