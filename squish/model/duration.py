"""Durations as users write them: ``500ms``, ``10s``, ``1m30s``, ``1.5h``, ``2d``.

Pure. Used by the squishfile (``[health]`` intervals and timeouts) and by
the CLI (``squish logs --since 10m``), so both read a duration alike, as Go
and podman write them.
"""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d))+")


def parse_duration(text: str) -> float | None:
    """``text`` (units required, several summed: ``1m30s``) in seconds; None if it is not one."""
    value = text.strip()
    if not _DURATION.fullmatch(value):
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(value))
