"""The daemon's sources as the API sees them: status, sync now, and who may ask for a sync.

``squish sources`` lists ``SourceAdmin.statuses()``; ``squish sync`` calls
``sync()``, which fetches every git source (or one) at once and then has the
reconciler act on the result without waiting for its next round. The routes
of :mod:`squish.daemon.api.routes` serve both.

Git servers announce pushes with webhooks, served by
:mod:`squish.daemon.api.webhook`, which calls ``request_sync()`` for each
request that :func:`verified` accepts: one with a valid signature of its
body under the shared secret, ``X-Hub-Signature-256: sha256=<hex>``
(GitHub, Forgejo, Gitea and Gogs send this) or ``X-Gitea-Signature: <hex>``;
``X-Gitlab-Token: <secret>`` (GitLab sends the secret itself) is accepted
too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence

import anyio

from squish.errors import NoSuchSource, SourceError
from squish.sources import SourceStatus, StatusSource
from squish.sources.git import GitSource


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
