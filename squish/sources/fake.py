"""``FakeSource``: a source whose snapshot a test sets, for tests above the sources.

It satisfies ``squish.sources.Source`` as the real ones do: ``snapshot()``
answers at once, ``run(changed)`` is a service that calls ``changed()``
whenever the test changes the snapshot (``set``) or says it changed
(``touch``), until cancelled; ``finish()`` makes it return, as a source with
nothing left to watch does. The reconciler's, the multi-source's and the
placement's tests drive it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.model.manifest import Manifest
from squish.sources import Changed


class FakeSource:
    """A snapshot that a test sets; every ``run`` is told of each change."""

    def __init__(self, *manifests: Manifest) -> None:
        self.manifests: Mapping[str, Manifest] = {m.name: m for m in manifests}
        self._watchers: list[Changed] = []
        # Made in run(), in the event loop: a test may build the fake outside one.
        self._finished: anyio.Event | None = None
        self._finish = False

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        return self.manifests

    def set(self, *manifests: Manifest) -> None:
        """Replace the snapshot and tell whoever runs the source (of every name)."""
        self.manifests = {m.name: m for m in manifests}
        self.touch()

    def touch(self, names: Collection[str] | None = None) -> None:
        """Tell whoever runs the source that ``names`` changed (None: any name)."""
        for changed in list(self._watchers):
            changed(names)

    def finish(self) -> None:
        """Make ``run`` return: nothing left to watch."""
        self._finish = True
        if self._finished is not None:
            self._finished.set()

    @property
    def running(self) -> int:
        """How many ``run``\\ s are watching it now."""
        return len(self._watchers)

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        if self._finished is None:
            self._finished = anyio.Event()
        if self._finish:
            self._finished.set()
        self._watchers.append(changed)
        try:
            task_status.started()
            await self._finished.wait()
        finally:
            self._watchers.remove(changed)
