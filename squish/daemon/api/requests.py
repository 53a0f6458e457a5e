"""What a request says, checked: its JSON body, its query parameters, names and digests in it.

The endpoints of :mod:`squish.daemon.api.routes` call these; each refuses
what it cannot use with :class:`~squish.daemon.openapi.BadRequest` (a 400,
see :mod:`squish.daemon.api.errors`) naming the field. Bodies are capped at
4 MiB and validated strictly against their :mod:`squish.api_schema` shape.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import TypeVar

from starlette.requests import Request

from squish import api_schema as schema
from squish.daemon.openapi import BadRequest, validate

__all__ = [
    "query_count",
    "query_flag",
    "query_moment",
    "read_body",
    "read_json",
    "valid_name",
    "valid_sha256",
    "valid_timeout",
]

T = TypeVar("T")

# The same rule the manifest applies to file names: the name becomes a file,
# a hostname and a metrics label.
_NAME = re.compile(schema.NAME_PATTERN)
_DIGEST = re.compile(r"[0-9a-f]{64}")
_DEFAULT_TIMEOUT = 30.0
_MAX_TIMEOUT = 3600.0
_MAX_BODY = 4 * 1024 * 1024
_LATEST = 95_617_584_000  # 5000-01-01, in Unix seconds


def valid_name(value: object, what: str = "name") -> str:
    """``value`` if it is a name squish accepts (of a container, layer, version, source)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadRequest(
            f"{what} must be letters, digits, '_', '.' and '-', starting with a letter or "
            f"digit, at most 128 of them, got {value!r:.80}"
        )
    return value


def valid_timeout(value: object) -> float:
    """A request's timeout in seconds; None (not given) is the default, 30."""
    if value is None:
        value = _DEFAULT_TIMEOUT
    # bool is an int to Python, never a timeout.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"timeout must be a number of seconds, got {value!r}")
    if not 0 < value <= _MAX_TIMEOUT:
        raise BadRequest(f"timeout must be between 0 and {_MAX_TIMEOUT:g} seconds, got {value}")
    return float(value)


def valid_sha256(value: object) -> str | None:
    """``value`` as 64 lowercase hex digits; None stays None (no digest expected)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _DIGEST.fullmatch(value.lower()):
        raise BadRequest(f"sha256 must be 64 hex digits, got {value!r:.80}")
    return value.lower()


async def read_json(request: Request, *, optional: bool = False) -> object:
    """The request's JSON body (``{}`` when ``optional`` and empty), size-capped."""
    size = request.headers.get("content-length", "0")
    if size.isdigit() and int(size) > _MAX_BODY:
        raise BadRequest(f"the request body is larger than {_MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            raise BadRequest(f"the request body is larger than {_MAX_BODY} bytes")
    if not raw.strip() and optional:
        return {}
    try:
        data: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadRequest(f"the request body is not usable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


async def read_body(request: Request, shape: type[T], *, optional: bool = False) -> T:
    """The request's JSON body, validated as ``shape``."""
    return validate(shape, await read_json(request, optional=optional))


def query_flag(request: Request, key: str) -> bool:
    """A yes/no query parameter (``1``, ``true``, ``yes``, ``on`` or their opposites)."""
    value = request.query_params.get(key, "0").lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"query parameter {key} must be 1 or 0, got {value!r}")


def query_count(request: Request, key: str) -> int | None:
    """A whole-number query parameter; None when absent or empty."""
    value = request.query_params.get(key)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest(f"query parameter {key} must be a whole number, got {value!r}")
    return int(value)


def query_moment(request: Request, key: str) -> int | None:
    """A query parameter in Unix seconds, as ms (a line timed in that ms matches)."""
    value = request.query_params.get(key)
    if value is None or value == "":
        return None
    # Decimal, not float: 1796119200.123 s is exactly ms 1796119200123, where
    # a float product may fall just below it and miss the line of that ms.
    # Bounded too: the year 5000 is far enough, and 1e999999999 s would make
    # a billion-digit integer.
    try:
        seconds = decimal.Decimal(value)
        usable = seconds.is_finite() and abs(seconds) <= _LATEST
    except decimal.DecimalException:
        usable = False
    if not usable:
        raise BadRequest(f"query parameter {key} must be a Unix time in seconds, got {value!r}")
    return math.floor(seconds * 1000)
