"""The numbers every benchmark here reports: median and nearest-rank percentiles.

Imported by the benchmark scripts beside it (they run as ``python bench/X.py``,
so this directory is on ``sys.path``).
"""

from __future__ import annotations

import statistics


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median_p90(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), percentile(samples, 0.9)
