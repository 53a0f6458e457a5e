"""Moments as users write them on the command line (``squish logs --since/--until``).

Called by the CLI, which sends the daemon plain Unix seconds, so the daemon
never guesses at a client's clock or time zone. Pure: ``now`` is passed in.
What is accepted, as by podman's ``logs``:

- a timestamp: RFC 3339 (``2026-12-01T10:00:00Z``, ``2026-12-01T11:00:00+01:00``,
  with fractions of a second), or a date (``2026-12-01``) or a date and time
  without an offset, taken in local time (as docker does; podman takes UTC);
- a Unix time: ``1796119200`` or ``1796119200.25``;
- a duration, meaning that long before ``now``: ``10m``, ``1h30m``, ``45s``,
  ``500ms``, ``1.5h``, ``2d``. For ``--until`` too, as in docker (podman counts
  an ``--until`` duration forward from now).
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from squish.errors import SquishError
from squish.model.duration import parse_duration

__all__ = ["parse_moment"]

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIX = re.compile(_NUMBER)
# A date first: fromisoformat alone would also take "20261201", which is a
# Unix time here.
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ].+)?")


def parse_moment(text: str, *, now: float, what: str = "time") -> float:
    """``text`` as Unix seconds; a ``SquishError`` naming ``what`` if it is none of the forms."""
    value = text.strip()
    moment: float | None = None
    if _TIMESTAMP.fullmatch(value):
        try:
            # A naive datetime's timestamp() is taken in local time.
            moment = datetime.fromisoformat(value).timestamp()
        except ValueError:
            moment = None
    elif _UNIX.fullmatch(value):
        moment = float(value)
    elif (seconds := parse_duration(value)) is not None:
        moment = now - seconds
    if moment is None or not math.isfinite(moment):
        raise SquishError(
            f"{what}: expected a time (2026-12-01T10:00:00Z), a Unix time or a duration "
            f"(10m), got {text!r}"
        )
    return moment
