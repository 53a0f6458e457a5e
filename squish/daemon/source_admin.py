"""The daemon's sources as the API sees them: status, sync now, webhooks.

``squish sources`` lists ``SourceAdmin.statuses()``; ``squish sync`` calls
``sync()``, which fetches every git source (or one) at once and then has the
reconciler act on the result without waiting for its next round.

Git servers announce pushes with webhooks. ``webhook_app`` is a tiny HTTP
app for them, served on its own TCP address (``--webhook-addr``), since the
API socket is local. A request is accepted only with a valid signature of
its body under the shared secret: ``X-Hub-Signature-256: sha256=<hex>``
(GitHub, Forgejo, Gitea and Gogs send this) or ``X-Gitea-Signature: <hex>``;
``X-Gitlab-Token: <secret>`` (GitLab sends the secret itself) is accepted
too. A valid one makes every git source fetch now; the body is not trusted
for anything else (the fetch finds out what changed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping, Sequence

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from squish.errors import NoSuchSource, SourceError, SquishError
from squish.sources import SourceStatus, StatusSource
from squish.sources.git import GitSource

log = logging.getLogger(__name__)

_MAX_HOOK_BODY = 1 << 20


class SourceAdmin:
    """The daemon's sources; ``trigger`` makes the reconciler run a round now."""

    def __init__(self, sources: Sequence[StatusSource], trigger: Callable[[], None]) -> None:
        self.sources = list(sources)
        self.trigger = trigger

    @property
    def git_sources(self) -> list[GitSource]:
        return [source for source in self.sources if isinstance(source, GitSource)]

    def statuses(self) -> list[SourceStatus]:
        return [source.status() for source in self.sources]

    async def sync(self, name: str | None = None) -> list[SourceStatus]:
        """Fetch the git sources (or the one named) now; their statuses after."""
        chosen = [source for source in self.git_sources if name in (None, source.name)]
        if name is not None and not chosen:
            known = ", ".join(source.name for source in self.git_sources) or "none"
            raise NoSuchSource(f"no git source named {name!r} (git sources: {known})")
        if not chosen:
            raise SourceError("this daemon has no git source to sync (squish daemon --git URL)")
        results: dict[str, SourceStatus] = {}

        async def one(source: GitSource) -> None:
            results[source.name] = await source.sync()

        async with anyio.create_task_group() as tg:
            for source in chosen:
                tg.start_soon(one, source)
        self.trigger()
        return [results[source.name] for source in chosen]

    def request_sync(self) -> list[str]:
        """Ask every git source to fetch soon (from the event loop); their names."""
        for source in self.git_sources:
            source.request_sync()
        return [source.name for source in self.git_sources]


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
                return _answer({"error": "the body is too large"}, 413)
        if not verified(secret, body, request.headers):
            log.warning("webhook from %s: refused, no valid signature", _peer(request))
            return _answer({"error": "no valid signature for this body"}, 401)
        syncing = admin.request_sync()
        log.info("webhook from %s: syncing %s", _peer(request), ", ".join(syncing) or "nothing")
        return _answer({"syncing": syncing}, 202)

    return Starlette(
        routes=[
            Route("/v1/webhook", hook, methods=["POST"]),
            Route("/v1/webhook/{rest:path}", hook, methods=["POST"]),
        ]
    )


def verified(secret: bytes, body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether the request's signature (or token) header matches ``secret``.

    ``headers`` is looked up with lowercase names (Starlette's are
    case-insensitive).
    """
    get = headers.get
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    signature = get("x-hub-signature-256")
    if isinstance(signature, str) and signature.startswith("sha256="):
        return hmac.compare_digest(signature.removeprefix("sha256=").lower(), expected)
    signature = get("x-gitea-signature")
    if isinstance(signature, str):
        return hmac.compare_digest(signature.lower(), expected)
    token = get("x-gitlab-token")
    if isinstance(token, str):
        return hmac.compare_digest(token.encode(), secret)
    return False


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def _answer(data: object, status: int) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json")
