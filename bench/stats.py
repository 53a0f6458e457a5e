"""The numbers every benchmark here reports: median and nearest-rank percentiles.

Imported by the benchmark scripts beside it (they run as ``python bench/X.py``,
so this directory is on ``sys.path``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median_p90(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), percentile(samples, 0.9)


def rows_against(
    series: Mapping[str, list[float]], anchor: str, ratio: str
) -> list[dict[str, Any]]:
    """A row per series: n, median and p90 in ms, and its median over ``anchor``'s (``ratio``)."""
    base = statistics.median(series[anchor])
    rows = []
    for name, samples in series.items():
        median, p90 = median_p90(samples)
        rows.append(
            {
                "series": name,
                "n": len(samples),
                "median_ms": round(median * 1e3, 2),
                "p90_ms": round(p90 * 1e3, 2),
                ratio: round(median / base, 2),
            }
        )
    return rows
