"""Health checks: what one more check result makes of a container's health.

The reconciler (``squish.reconcile.reconciler``) runs a container's
``[health]`` command through the runtime's ``exec``, one check at a time,
every ``interval``, and feeds each result to ``HealthState.record``; this
module is the pure part, table-tested (tests/test_health.py), with compose's
and podman's semantics:

- ``starting`` until the first success, then ``healthy``;
- ``retries`` consecutive failures make it ``unhealthy``; a success makes it
  ``healthy`` again and ends the streak;
- during ``start_period`` (from the container's start) a failure does not
  count, unless it is already healthy; a success there counts at once.

A check that timed out is a failure. The last five results are kept, each
with the first lines of what the command wrote.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from squish.model.squishfile import Health

HealthStatus = Literal["starting", "healthy", "unhealthy"]
HEALTH_STATUSES: tuple[HealthStatus, ...] = ("starting", "healthy", "unhealthy")
KEPT_RESULTS = 5
KEPT_OUTPUT = 4096  # bytes of a check's output kept, from its start


@dataclass(frozen=True)
class CheckResult:
    """One check: when it ran (Unix seconds), its exit status, what it said."""

    start: float
    end: float
    exit_code: int
    output: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


@dataclass
class HealthState:
    """The health of one container (one id): its status, streak and last results."""

    container_id: str
    health: Health
    started_at: float
    status: HealthStatus = "starting"
    failing_streak: int = 0
    log: deque[CheckResult] = field(default_factory=lambda: deque(maxlen=KEPT_RESULTS))

    def record(self, result: CheckResult) -> bool:
        """Take one more result in; whether the status changed."""
        before = self.status
        self.log.append(result)
        if result.passed:
            self.failing_streak = 0
            self.status = "healthy"
        elif self.status == "healthy" or result.start >= self.started_at + self.health.start_period:
            self.failing_streak += 1
            if self.failing_streak >= self.health.retries:
                self.status = "unhealthy"
        return self.status != before


def first_lines(output: str, lines: int = 5) -> str:
    """What is kept of a check's output: its first lines, at most ``KEPT_OUTPUT`` bytes."""
    kept = "\n".join(output.splitlines()[:lines])
    return kept.encode()[:KEPT_OUTPUT].decode(errors="ignore")
