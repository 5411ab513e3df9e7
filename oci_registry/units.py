"""
Sizes and durations as operators write them (``64GiB``, ``24h``), read
into bytes and seconds.  Small and dependency-free, so that the
configuration of every part (the registry, auth, the proxy, storage
drivers, garbage collection) can read its values without importing the
others.
"""

from __future__ import annotations

DAY = 24 * 3600  # seconds


def parse_size(value) -> int:
    """Bytes from ``1048576``, ``512KiB``, ``4MiB``, ``64GiB`` (also k/M/G/T and KB/MB/GB/TB)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    units = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    number = text.rstrip("BbIiKkMmGgTt ")
    unit = text[len(number) :].strip().lower().replace("ib", "").replace("b", "")
    try:
        return int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise ValueError(f"not a size: {value!r} (use e.g. 4194304, 4MiB, 64GiB)") from None


def parse_duration(text) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    if isinstance(text, int | float):
        return float(text)
    text = str(text).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": DAY}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 24h, 7d)") from None
