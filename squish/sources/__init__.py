"""Where desired state comes from.

A source knows a set of squishfiles. The reconciler asks it for a
``snapshot()`` (every manifest it has now, each parsed or with its error)
whenever it reconciles, and waits on ``changes()`` as one of its triggers.
Snapshots, not diffs: a missed change notification costs a little latency,
never correctness, because the next periodic resync reads everything again.

Shipping: ``directory.DirectorySource``, ``git.GitSource``,
``multi.MultiSource`` (the union the daemon hands the reconciler),
``guard.GuardedSource`` (the prune guard around a directory) and
``placement.PlacedSource`` (only what is meant for this node).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from squish.model.manifest import Manifest


class Source(Protocol):
    def snapshot(self) -> Mapping[str, Manifest]: ...

    def changes(self) -> AsyncIterator[None]: ...


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


class StatusSource(Source, Protocol):
    """A source that reports where it stands (``squish sources``)."""

    def status(self) -> SourceStatus: ...
