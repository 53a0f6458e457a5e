"""``[limits]``: the resource limits (rlimits) of a container's processes.

Parsed with the squishfile (``squish.model.squishfile``), applied by the
runtime to the sandbox before its command starts and to every ``exec``.
As ``ulimit`` and docker's ``--ulimit`` name them:

    [limits]
    nofile = 4096                        # soft and hard
    core = 0
    as = "512M"                          # bytes, or with K, M, G, T (powers of 1024)
    stack = { soft = "8M", hard = "unlimited" }

Memory and CPU limits are cgroup controllers, which need cgroup v2
delegated to the daemon's user; ``memory`` and ``cpus`` are refused, saying
so, rather than taken and not enforced.
"""

from __future__ import annotations

import re
import resource
from typing import Any

UNLIMITED = resource.RLIM_INFINITY

# name -> (the rlimit, whether it is a size in bytes)
LIMITS: dict[str, tuple[int, bool]] = {
    "nofile": (resource.RLIMIT_NOFILE, False),
    "nproc": (resource.RLIMIT_NPROC, False),
    "core": (resource.RLIMIT_CORE, True),
    "stack": (resource.RLIMIT_STACK, True),
    "memlock": (resource.RLIMIT_MEMLOCK, True),
    "cpu": (resource.RLIMIT_CPU, False),  # seconds of CPU
    "as": (resource.RLIMIT_AS, True),
    "data": (resource.RLIMIT_DATA, True),
}
NOT_YET = {
    "memory": "memory limits are not supported yet (they need cgroup v2 controllers "
    'delegated to the daemon\'s user); "as" or "data" limit a process\'s address space',
    "cpus": "CPU limits are not supported yet (they need cgroup v2 controllers "
    "delegated to the daemon's user); \"cpu\" limits a process's seconds of CPU",
}
_SIZE = re.compile(r"(\d+)([KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MAX = (1 << 63) - 1


def parse_limits(raw: dict[str, Any]) -> tuple[tuple[str, int, int], ...]:
    """``(name, soft, hard)`` of each limit of a ``[limits]`` table, by name.

    Raises ``LimitError`` (its ``key`` the offending one) on the first problem.
    """
    found = []
    for name, value in raw.items():
        if name in NOT_YET:
            raise LimitError(name, NOT_YET[name])
        if name not in LIMITS:
            allowed = ", ".join(LIMITS)
            raise LimitError(name, f"unknown limit {name!r} (allowed: {allowed})")
        found.append((name, *_pair(name, value)))
    return tuple(sorted(found))


class LimitError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _pair(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, dict):
        unknown = set(value) - {"soft", "hard"}
        if unknown or not value:
            raise LimitError(name, 'must be a value or a table of "soft" and "hard"')
        hard = _one(name, value.get("hard", value.get("soft")))
        soft = _one(name, value.get("soft", hard))
        if _above(soft, hard):
            raise LimitError(
                name, f"soft limit {_shown(soft)} is above the hard one {_shown(hard)}"
            )
        return soft, hard
    one = _one(name, value)
    return one, one


def _one(name: str, value: object) -> int:
    sized = LIMITS[name][1]
    if type(value) is int and 0 <= value <= _MAX:
        return value
    if isinstance(value, str):
        if value == "unlimited":
            return UNLIMITED
        if sized and (match := _SIZE.fullmatch(value)):
            amount = int(match[1]) * _UNITS[match[2].upper()]
            if amount <= _MAX:
                return amount
    kind = 'bytes (such as 4096 or "512M")' if sized else "an integer"
    raise LimitError(name, f'must be {kind} or "unlimited", got {value!r}')


def _above(soft: int, hard: int) -> bool:
    if hard == UNLIMITED:
        return False
    return soft == UNLIMITED or soft > hard


def _shown(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)
