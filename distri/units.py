"""How distri prints a number of bytes: decimal units (1 GB = 1e9 bytes), the paper's "G" for communication.

One convention everywhere (the run summary, the dry run, the sweep tables), so the same amount never shows as
"1.7 MB" in one place and "1.62 MiB" in another.
"""

from __future__ import annotations

_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def format_bytes(b: float | None, digits: int = 4) -> str:
    """``b`` bytes in decimal units with ``digits`` significant digits (``2.666 GB``, ``424.5 MB``); ``-`` for None."""
    if b is None:
        return "-"
    for unit, scale in _UNITS:
        if abs(b) >= scale:
            return f"{b / scale:.{digits}g} {unit}"
    return f"{b:.0f} B"
