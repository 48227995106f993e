"""``python -m distri.predict key=value ...``: predicted latency per strategy and device count.

Keys: ``model`` (default sdxl), ``height``, ``width`` (default 1024), ``world_size`` (a comma list, default
1,2,4,8), ``device`` (a100 | h100 | h200 | cpu), ``link`` (nvlink | nvlink4 | pcie | pcie5 | infiniband |
gloo), ``steps`` (default 50), ``strategy`` (a comma list of names, each optionally with choices:
``displaced_patch/full_sync``; default: naive_patch, displaced_patch, displaced_patch/full_sync,
displaced_patch/no_sync, tensor),
``cfg_split``, ``dtype`` (default: the device's), ``batch`` (default 2, the CFG batch), ``json=true`` (print
JSON instead of the table); any other key is a strategy parameter (``warmup_steps=4``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from distri.predict.api import as_dicts, default_strategies, predict_table
from distri.predict.profiles import device_profile, link_profile

_INT = ("height", "width", "steps", "batch")


def parse_args(argv: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep:
            raise ValueError(f"arguments are key=value, got {a!r}")
        args[key.removeprefix("strategy.")] = value
    for key in _INT:
        if key in args:
            args[key] = int(args[key])
    for key in ("cfg_split", "json"):
        if key in args:
            args[key] = args[key].lower() in ("1", "true", "yes")
    args["world_size"] = [int(n) for n in str(args.get("world_size", "1,2,4,8")).split(",")]
    args["strategy"] = args["strategy"].split(",") if "strategy" in args else default_strategies()
    for key, value in list(args.items()):
        if isinstance(value, str) and value.replace(".", "", 1).isdigit():
            args[key] = float(value) if "." in value else int(value)
    return args


def format_table(rows: list[dict[str, Any]], args: dict[str, Any]) -> str:
    dev, link = device_profile(args.get("device", "a100")), link_profile(args.get("link", "nvlink"))
    first = next(r for r in rows if "error" not in r)["setting"]
    lines = [
        f"predicted: {first['model']} {first['height']}x{first['width']}, {first['steps']} steps, "
        f"{first['dtype']}, on {dev.description} over {link.description} ({link.bandwidth_gbs:g} GB/s, "
        f"{link.alpha_us:g} us per ring step)",
        f"  {'devices':>7}  {'strategy':<40} {'latency (s)':>11} {'speedup':>8} {'compute':>8} "
        f"{'exp. comm':>9} {'non-split':>9}",
    ]
    for r in rows:
        s = r["setting"]
        if "error" in r:
            lines.append(f"  {s['world_size']:>7}  {s['strategy']:<40} does not fit: {r['error']}")
            continue
        lines.append(
            f"  {s['world_size']:>7}  {s['label']:<40} {r['total_s']:>11.3f} {r['speedup']:>7.2f}x "
            f"{r['compute_s']:>8.3f} {r['exposed_comm_s']:>9.3f} {r['non_split_s']:>9.3f}"
        )
    ok = [r for r in rows if "error" not in r]
    lines.append("fastest: " + _fastest(ok))
    lines.append(
        "fastest exact (the single device's images): " + _fastest([r for r in ok if r["setting"]["exact"]])
    )
    lines.append(
        "compute: UNet steps; exp. comm: communication not hidden behind compute; non-split: VAE decoder, "
        "text encoders, scheduler (every rank runs them whole); seconds per pipeline call"
    )
    return "\n".join(lines)


def _fastest(rows: list[dict[str, Any]]) -> str:
    """The fastest of ``rows`` per device count, as one line."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        n = r["setting"]["world_size"]
        if n not in best or r["total_s"] < best[n]["total_s"]:
            best[n] = r
    return (
        "; ".join(
            f"{n} device(s): {r['setting']['label']} ({r['total_s']:.3f} s)" for n, r in sorted(best.items())
        )
        or "none"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        as_json = args.pop("json", False)
        world_sizes, strategies = args.pop("world_size"), args.pop("strategy")
        args.setdefault("height", 1024)
        args.setdefault("width", args["height"])
        rows = as_dicts(predict_table(world_sizes, strategies, **args))
        if all("error" in r for r in rows):
            raise ValueError("; ".join(r["error"] for r in rows))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if as_json else format_table(rows, args))
    return 0
