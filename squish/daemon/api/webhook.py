"""The webhook: a tiny HTTP app that git servers call on a push, so the git sources fetch now.

The daemon (:mod:`squish.daemon.main`) builds it with :func:`webhook_app`
when given ``--webhook-addr`` and serves it with
:func:`~squish.daemon.api.server.serve_tcp` on that address, since the API
socket is local. ``POST /v1/webhook`` (any path under it works too) is
accepted only with a valid signature of its body under the shared secret;
which headers count is :func:`~squish.daemon.source_admin.verified`'s to
say. A valid one makes every git source fetch now
(:meth:`~squish.daemon.source_admin.SourceAdmin.request_sync`) and answers
202 with their names; the body is not trusted for anything else (the fetch
finds out what changed).
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from squish.daemon.api.errors import json_response
from squish.daemon.source_admin import SourceAdmin, verified
from squish.errors import SquishError

__all__ = ["webhook_app"]

# The webhook's records keep the logger they had in squish.daemon.source_admin:
# users filter on it.
log = logging.getLogger("squish.daemon.source_admin")

_MAX_HOOK_BODY = 1 << 20


def webhook_app(admin: SourceAdmin, secret: bytes) -> Starlette:
    """The webhook endpoint: ``POST /v1/webhook`` (any path under it works too)."""
    if not secret:
        raise SquishError(
            "a webhook needs a secret (--webhook-secret-file or $SQUISH_WEBHOOK_SECRET)"
        )

    async def hook(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_HOOK_BODY:
                return json_response({"error": "the body is too large"}, 413)
        if not verified(secret, body, request.headers):
            log.warning("webhook from %s: refused, no valid signature", _peer(request))
            return json_response({"error": "no valid signature for this body"}, 401)
        syncing = admin.request_sync()
        log.info("webhook from %s: syncing %s", _peer(request), ", ".join(syncing) or "nothing")
        return json_response({"syncing": syncing}, 202)

    return Starlette(
        routes=[
            Route("/v1/webhook", hook, methods=["POST"]),
            Route("/v1/webhook/{rest:path}", hook, methods=["POST"]),
        ]
    )


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"
