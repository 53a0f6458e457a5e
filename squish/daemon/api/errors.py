"""How the API answers when something fails: one line of JSON and a status saying whose fault.

:mod:`squish.daemon.api.routes` wraps every endpoint in :func:`handled` and
answers unknown routes with :func:`http_error`; every module of the API that
answers in JSON (the routes, the webhook, the server refusing a foreign uid)
uses :func:`json_response` and :func:`error_response`. A
:class:`~squish.errors.SquishError` becomes ``{"error": "<one line>"}`` with:

    400  ManifestError, LayerError, a malformed request (BadRequest)
    404  ContainerNotFound (a container the daemon does not know), NoSuchSource,
         NetworkNotFound, VolumeNotFound, SecretNotFound, no such route
    409  RuntimeFailure, PortInUse (the request was fine; the host said no),
         AmbiguousName (with the candidates), SourceError (no git source to sync,
         a delete the prune guard holds)
    500  anything else (logged here with its traceback; the body has one line)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from squish.daemon.openapi import BadRequest
from squish.errors import (
    AmbiguousName,
    ContainerNotFound,
    LayerError,
    ManifestError,
    NetworkNotFound,
    NoSuchSource,
    RuntimeFailure,
    SecretNotFound,
    SourceError,
    SquishError,
    VolumeNotFound,
)

__all__ = ["Endpoint", "error_response", "handled", "http_error", "json_response", "one_line"]

# The API's one logger, whichever of its modules logs: users filter on it.
logger = logging.getLogger("squish.daemon.api")

Endpoint = Callable[[Request], Awaitable[Response]]


def _status_for(exc: Exception) -> int:
    # ContainerNotFound is a RuntimeFailure, so it is checked first.
    if isinstance(
        exc, ContainerNotFound | NoSuchSource | NetworkNotFound | VolumeNotFound | SecretNotFound
    ):
        return 404
    if isinstance(exc, SourceError):
        return 409
    if isinstance(exc, ManifestError | LayerError | BadRequest):
        return 400
    if isinstance(exc, RuntimeFailure):
        return 409
    return 500


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines too) made single spaces."""
    return " ".join(text.split()) or "unknown error"


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as an ``application/json`` answer."""
    # default=str: status dicts may hold paths or other plain values.
    body = json.dumps(data, default=str).encode()
    return Response(body, status_code=status, media_type="application/json")


def error_response(message: str, status: int, **more: Any) -> Response:
    """``{"error": "<message in one line>", **more}`` with ``status``."""
    return json_response({"error": one_line(message), **more}, status)


def handled(endpoint: Endpoint) -> Endpoint:
    """Turn every exception of ``endpoint`` into a one-line JSON error.

    Done here rather than with Starlette exception handlers: its handler for
    ``Exception`` re-raises after answering (so the server logs the error
    again and test transports raise it).
    """

    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPException:
            raise  # answered by http_error
        except AmbiguousName as exc:
            return error_response(str(exc), 409, candidates=exc.candidates)
        except SquishError as exc:
            status = _status_for(exc)
            if status == 500:
                logger.error("%s %s: %s", request.method, request.url.path, exc)
            return error_response(str(exc), status)
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(f"internal error in the daemon: {type(exc).__name__}: {exc}", 500)

    return wrapper


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer in JSON like everything else."""
    if isinstance(exc, HTTPException):
        return error_response(exc.detail or "request failed", exc.status_code)
    return error_response(f"internal error in the daemon: {type(exc).__name__}", 500)
