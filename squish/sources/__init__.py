"""Where desired state comes from.

A source knows a set of squishfiles. It is a service: the reconciler runs
it in its own task group (``await tg.start(source.run, changed)``) and it
watches (a directory) or syncs (a git repository) until cancelled, calling
``changed(names)`` with the names whose manifests may differ (``changed()``:
any of them). The reconciler asks it for a ``snapshot()`` (every manifest
it has now, each parsed or with its error) whenever it reconciles: between
resyncs with ``rescan=False``, when the source may answer from what it has
read before plus what its watcher reported; at each periodic resync with a
rescan of everything. Snapshots, not diffs: a missed change notification
costs a little latency, never correctness, because the resync reads
everything again.

Shipping: ``directory.DirectorySource``, ``git.GitSource``,
``multi.MultiSource`` (the union the daemon hands the reconciler),
``guard.GuardedSource`` (the prune guard around a directory),
``placed.PlacedSource`` (only what is meant for this node) and
``fake.FakeSource`` (a snapshot a test sets, for tests above the sources).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.model.manifest import Manifest


class Changed(Protocol):
    """What a source calls after a change: ``names`` may differ (None: any name)."""

    def __call__(self, names: Collection[str] | None = None, /) -> None: ...


class Source(Protocol):
    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        """Every manifest the source has now (read at once, never waiting on I/O).

        ``rescan=False``: the source may answer with what it read before,
        re-reading only what it has reported changed since (the rounds
        between resyncs). The same mapping object, if nothing changed.
        """
        ...

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Watch for changes until cancelled, calling ``changed(names)`` after each.

        ``task_status.started()`` once watching. Returns only if the source
        has nothing (left) to watch; a source that cannot watch says so in
        its status and leaves the periodic resync to see its changes.
        """
        ...


@dataclass(frozen=True)
class SourceStatus:
    """Where a source stands, in the words of Flux's GitRepository status.

    A sync fetches ``ref`` and resolves it to a commit, the *attempted*
    revision; if the snapshot for it is built (and not held), that commit
    becomes the *applied* revision. A failed fetch leaves ``attempted_revision``
    as it was; ``error`` is the last sync's failure (``None`` once one
    succeeds), ``held`` why the attempted revision was built but not applied
    (see ``Guard``). ``warning`` is something that works, worse than it
    should (a directory seen only at the periodic resync). Times are Unix
    seconds.
    """

    name: str
    kind: str
    url: str
    ref: str
    path: str
    applied_revision: str | None = None
    attempted_revision: str | None = None
    last_sync: float | None = None
    """When a sync last succeeded (the applied revision is the remote's)."""
    last_attempt: float | None = None
    error: str | None = None
    held: str | None = None
    warning: str | None = None

    @property
    def ready(self) -> bool:
        """Whether the applied revision is what the remote has now."""
        return self.error is None and self.held is None


def changed_names(before: Mapping[str, Manifest], after: Mapping[str, Manifest]) -> set[str]:
    """The names whose manifest is not the same object in both snapshots (added and removed too).

    Sources hand on the manifests they did not read again as the same
    objects, so this is what a source changed, found at the cost of a
    lookup per name rather than of looking into each manifest.
    """
    changed = {name for name, manifest in after.items() if before.get(name) is not manifest}
    changed.update(before.keys() - after.keys())
    return changed


class StatusSource(Source, Protocol):
    """A source that reports where it stands (``squish sources``)."""

    def status(self) -> SourceStatus: ...
