"""The sizes and durations configuration takes: parsed from text, and shown as text."""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = [
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
            "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
            "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
            "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str) -> int:
    """Bytes in ``"512KiB"``, ``"32MiB"``, ``"1GB"``, ``"4096"``; ValueError otherwise."""
    m = _SIZE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _FACTORS:
        raise ValueError(f"{text!r} is not a size; write e.g. 4096, 512KiB, 32MiB or 1GiB")
    # Decimal, not float: "4.1MB" is 4100000 bytes, not 4099999.
    return int(Decimal(m.group(1)) * _FACTORS[(m.group(2) or "").lower()])


def parse_duration(text: str) -> float:
    """Seconds in ``"50ms"``, ``"2s"``, ``"1.5"``, ``"5m"``; ValueError otherwise."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration; write e.g. 50ms, 2s, 1.5 or 5m")
    return float(m.group(1)) * _SECONDS[(m.group(2) or "").lower()]


def format_size(size: int) -> str:
    """``32MiB`` for 33554432: the largest binary unit that divides it, as people write it."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_duration(seconds: float) -> str:
    """``50ms``, ``2s``, ``5m``: a duration as people write it (``parse_duration`` reads it)."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    for unit, factor in (("h", 3_600_000), ("m", 60_000)):
        if ms >= 2 * factor and ms % factor == 0:  # 60s, not 1m: as people write it
            return f"{ms // factor}{unit}"
    return f"{ms // 1000}s"
