"""
Sizes and durations as operators write them (``64GiB``, ``24h``), read
into bytes and seconds.  Small and dependency-free, so that the
configuration of every part (the registry, auth, the proxy, storage
drivers, garbage collection) can read its values without importing the
others.
"""

from __future__ import annotations

import math

DAY = 24 * 3600  # seconds


def parse_size(value) -> int:
    """Bytes from ``1048576``, ``512KiB``, ``4MiB``, ``64GiB`` (also k/M/G/T and KB/MB/GB/TB)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip()
    units = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    number = text.rstrip("BbIiKkMmGgTt ")
    unit = text[len(number) :].strip().lower().replace("ib", "").replace("b", "")
    try:
        size = float(number) * units[unit]
    except (KeyError, ValueError, OverflowError):
        size = math.nan
    if not math.isfinite(size) or size < 0:  # also inf, nan and 1e400, which int() cannot take
        raise ValueError(f"not a size: {value!r} (use e.g. 4194304, 4MiB, 64GiB)")
    return int(size)


def parse_duration(text) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    value = text
    units = {"s": 1, "m": 60, "h": 3600, "d": DAY}
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(value).strip()
            seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except (ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:  # nan would compare false with every deadline
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 24h, 7d)")
    return seconds
