"""The dry run's command line (``python -m distri.dryrun key=value ...``; see :mod:`distri.dryrun`)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from distri.dryrun.report import format_table
from distri.dryrun.simulate import dryrun, dryrun_all, unet_config

_INT_KEYS = ("height", "width", "world_size", "steps", "batch", "warmup_steps")


def _value(key: str, text: str) -> Any:
    if key in _INT_KEYS:
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(text)
    return text


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` words into a dict of typed values; Hydra-style ``+`` and ``strategy.`` prefixes are dropped
    (``strategy.mode=stale_gn`` is the strategy parameter ``mode``)."""
    args: dict[str, Any] = {}
    for word in argv:
        key, sep, text = word.partition("=")
        key = key.lstrip("+").removeprefix("strategy.")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        args[key] = _value(key, text)
    if not isinstance(args.get("cfg_split", False), bool):
        raise ValueError(f"cfg_split must be true or false, got {args['cfg_split']!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the table (and the JSON with ``json=true``)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        import distri.dryrun

        print(distri.dryrun.__doc__)
        return 0
    try:
        args = parse_args(argv)
        as_json = bool(args.pop("json", False))
        model = args.pop("model", "sdxl")
        height = args.pop("height", None)
        width = args.pop("width", None)
        if height is None or width is None:
            side = unet_config(model)["sample_size"] * 8
            height, width = height or side, width or side
        world_size = args.pop("world_size", 8)
        strategy = args.pop("strategy", "all")
        if strategy == "all":
            results = dryrun_all(model, height, width, world_size, **args)
        else:
            results = {strategy: dryrun(model, height, width, world_size, strategy, **args)}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    if as_json:
        slim = {
            k: ({f: v for f, v in r.items() if f != "per_step"} if isinstance(r, dict) else r)
            for k, r in results.items()
        }
        print(json.dumps(slim, indent=2, default=str))
    return 0
