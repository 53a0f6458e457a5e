"""A source filtered to what is meant for this node (``[placement]``).

With one repository driving a fleet, every daemon reads every squishfile and
runs only those whose placement matches its :class:`~squish.model.placement.Node`.
The daemon wraps the source it hands the reconciler in a ``PlacedSource``;
wrapping the union (``MultiSource``) rather than each source keeps a name
defined twice a conflict on every node, wherever either file is placed.

To the reconciler, a manifest placed elsewhere is a removed one: a container
running here from it is stopped, which is what moving a container off a node
means. ``excluded()`` names those manifests so status output can say
"placed elsewhere" rather than just "removed".

A manifest that does not parse (``squishfile`` None) is always kept: its
placement is unknown, and keeping it is what lets the reconciler keep the
last good version running and report the error, on every node that reads
it. Dropping it would stop a container because of a typo.

``status()`` is not passed through: the daemon reports the status of the
sources it built (they are its ``inner`` ones), and the union it wraps has
none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.model.manifest import Manifest
from squish.model.placement import Node
from squish.sources import Changed, Source, changed_names


def wanted_on(node: Node) -> Callable[[Manifest], bool]:
    """``wanted(manifest)``: whether ``node`` runs it (an invalid one: yes).

    The predicate ``PlacedSource`` filters with, for others that must agree
    with it (the prune guard counts only containers wanted here).
    """

    def wanted(manifest: Manifest) -> bool:
        return manifest.squishfile is None or manifest.squishfile.placement.matches(node)

    return wanted


class PlacedSource:
    """``inner``'s manifests that ``node`` runs."""

    def __init__(self, inner: Source, node: Node) -> None:
        self.inner = inner
        self.node = node
        self.wanted = wanted_on(node)
        # Replaced whole by each snapshot, so a reader on another thread sees
        # one snapshot's names or the next one's, never a mix.
        self._excluded: tuple[str, ...] = ()
        # The inner snapshot last filtered, and what it gave.
        self._seen: Mapping[str, Manifest] | None = None
        self._placed: Mapping[str, Manifest] = {}

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        found = self.inner.snapshot(rescan=rescan)
        if found is self._seen:
            return self._placed
        if self._seen is None:
            excluded = {name for name, m in found.items() if not self.wanted(m)}
        else:
            # Only the names that changed are matched again: an event costs
            # the same whatever the number of manifests.
            excluded = set(self._excluded)
            for name in changed_names(self._seen, found):
                manifest = found.get(name)
                if manifest is not None and not self.wanted(manifest):
                    excluded.add(name)
                else:
                    excluded.discard(name)
        self._excluded = tuple(sorted(excluded))
        placed = found
        if excluded:
            placed = {name: m for name, m in found.items() if name not in excluded}
        self._seen, self._placed = found, placed
        return placed

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await self.inner.run(changed, task_status=task_status)

    def excluded(self) -> list[str]:
        """Names the last ``snapshot()`` left out: placed on other nodes."""
        return list(self._excluded)
