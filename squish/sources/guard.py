"""The prune guard: a new desired state that would stop too much is held back.

A git revision that deletes the whole manifest path, a directory that is
emptied or vanishes (an unmounted volume, a botched deploy script): applied,
each would stop every container. The daemon builds one ``PruneGuard`` and
gives it to every source: the git source asks it before applying a revision
(``GitSource(guard=...)``), and a directory source is wrapped in a
``GuardedSource``. A held state is reported loudly (a warning in the log,
``held`` in ``squish sources`` and ``squish ps -a``, the ``held`` sync
metric); the previous state stays in force, and each later sync or scan asks
again, so a fixed revision (or ``--allow-prune-all``) goes through.

The rule: hold a proposal when it would stop at least ``threshold`` of the
running containers (default 1.0: all of them) and more than one container.
Removing a single container is always let through: that is how one is
deleted on purpose (``squish delete``, ``git rm``), and a guard that blocked
it on a host running one container would make the guard the thing to
disable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.errors import SourceError
from squish.model.manifest import Manifest
from squish.sources import Changed, Source, SourceStatus, changed_names
from squish.sources.directory import DirectorySource

log = logging.getLogger(__name__)

Wanted = Callable[[Manifest], bool]
"""Whether a manifest is wanted on this node (placement); stopping is what counts."""


class Running:
    r"""The names of the containers running now, as the reconciler last counted them.

    Made before the sources and the reconciler: the reconciler ``update``\ s
    it after each round, the guard reads it (from any thread: ``names`` is
    replaced whole, never changed in place).
    """

    def __init__(self, names: frozenset[str] = frozenset()) -> None:
        self.names = names

    def update(self, names: frozenset[str]) -> None:
        self.names = names


class PruneGuard:
    """``guard(current, proposed)``: why ``proposed`` must not be applied, or None.

    ``running``: the containers running now; ``wanted`` filters manifests
    meant for other nodes.
    """

    def __init__(
        self,
        running: Running,
        *,
        threshold: float = 1.0,
        enabled: bool = True,
        wanted: Wanted | None = None,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.running = running
        self.threshold = threshold
        self.enabled = enabled
        self.wanted = wanted or (lambda manifest: True)

    def __call__(
        self, current: Mapping[str, Manifest], proposed: Mapping[str, Manifest]
    ) -> str | None:
        if not self.enabled:
            return None
        running = self.running.names
        if not running:
            return None
        # A name whose manifest is the same object in both stops nothing:
        # only the changed ones are matched (an event costs the same at any size).
        stopping = sorted(
            name
            for name in changed_names(current, proposed) & running
            if self._wanted(current.get(name)) and not self._wanted(proposed.get(name))
        )
        if len(stopping) < 2 or len(stopping) < self.threshold * len(running):
            return None
        shown = ", ".join(stopping[:5]) + (", ..." if len(stopping) > 5 else "")
        return (
            f"the prune guard holds it: it would stop {len(stopping)} of the "
            f"{len(running)} running containers ({shown}); fix the source, or restart "
            "the daemon with --allow-prune-all (or a higher --prune-guard) to apply it"
        )

    def _wanted(self, manifest: Manifest | None) -> bool:
        return manifest is not None and self.wanted(manifest)


class GuardedSource:
    """``inner`` (a directory source), whose snapshots pass the prune guard.

    While a snapshot is held, or the directory cannot be read (a
    ``SourceError``), the last one let through stays in force, and the reason
    is shown in ``status()`` (``held`` or ``error``) until it passes (the
    reconciler reports an ``error`` once, as an event). ``status()`` reports
    like a git source's, without revisions.
    """

    kind = "directory"

    def __init__(
        self,
        inner: Source,
        guard: Callable[[Mapping[str, Manifest], Mapping[str, Manifest]], str | None],
        *,
        name: str,
        url: str,
    ) -> None:
        self.inner = inner
        self.guard = guard
        self.name = name
        self._applied: Mapping[str, Manifest] = {}
        self._status = SourceStatus(name, self.kind, url, "", ".")

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        try:
            proposed = self.inner.snapshot(rescan=rescan)
        except SourceError as exc:
            # Logged once by the reconciler, as the source.failed event.
            self._status = replace(self._status, error=str(exc))
            return self._applied
        if self._status.error is not None:
            self._status = replace(self._status, error=None)
        if proposed is self._applied:
            return proposed  # nothing changed since it was let through
        reason = self.guard(self._applied, proposed)
        if reason is not None:
            if self._status.held != reason:
                log.warning("%s: %s", self._status.url, reason)
                self._status = replace(self._status, held=reason)
            return self._applied
        if self._status.held is not None:
            log.info("%s: applied again", self._status.url)
            self._status = replace(self._status, held=None)
        self._applied = proposed
        return proposed

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await self.inner.run(changed, task_status=task_status)

    def status(self) -> SourceStatus:
        if isinstance(self.inner, DirectorySource) and self.inner.warning != self._status.warning:
            self._status = replace(self._status, warning=self.inner.warning)
        return self._status
