"""The dry run's tables: per-device figures by strategy, and ours next to the DistriFusion paper's Table 2."""

from __future__ import annotations

from typing import Any

from distri.units import format_bytes


def _table_rows(kinds: list[str]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        (
            "GMACs / step / device",
            lambda r: "-" if r["gmacs_per_step"] is None else f"{r['gmacs_per_step']:,.1f}",
        ),
        ("comm bytes / step / device", lambda r: format_bytes(r["bytes_per_step"])),
    ]
    rows += [(f"  {k}", lambda r, k=k: format_bytes(r["by_kind"].get(k, {}).get("bytes"))) for k in kinds]
    rows.append(("collectives / step", lambda r: f"{sum(v['calls'] for v in r['by_kind'].values()):g}"))
    rows.append(("warm-up bytes / step", lambda r: format_bytes(r["warmup_bytes_per_step"])))
    return rows


def format_table(results: dict[str, dict[str, Any] | str]) -> str:
    """A plain-text table, one column per strategy, of the per-device figures of :func:`dryrun` results.

    A strategy whose value is a string (why it could not run) shows ``n/a`` and its reason below the table.
    """
    cols = list(results)
    kinds = sorted({k for r in results.values() if isinstance(r, dict) for k in r["by_kind"]})
    rows = [
        (name, [f(results[c]) if isinstance(results[c], dict) else "n/a" for c in cols])
        for name, f in _table_rows(kinds)
    ]
    w0 = max(len(name) for name, _ in rows)
    ws = [max(len(c), *(len(vals[i]) for _, vals in rows)) for i, c in enumerate(cols)]
    lines = [" | ".join([" " * w0, *(c.rjust(w) for c, w in zip(cols, ws))])]
    lines.append("-+-".join(["-" * w0, *("-" * w for w in ws)]))
    lines += [" | ".join([name.ljust(w0), *(v.rjust(w) for v, w in zip(vals, ws))]) for name, vals in rows]
    first = next((r for r in results.values() if isinstance(r, dict)), None)
    if first is not None:
        head = f"{first['model']} {first['height']}x{first['width']}, world_size={first['world_size']}, "
        head += (
            f"batch={first['batch']}, cfg_split={first['cfg_split']}, {first['dtype']}; {first['convention']}"
        )
        lines.insert(0, head)
    return "\n".join(lines + [f"{c}: {r}" for c, r in results.items() if isinstance(r, str)])
