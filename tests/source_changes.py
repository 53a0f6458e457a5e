"""Watching a source in a test: run it as the reconciler does, and wait for its changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskStatus

from squish.sources import Source


class Changes:
    """A running source's ``changed(names)`` calls, one at a time; ``ended`` once it returned."""

    def __init__(self) -> None:
        self._send, self._seen = anyio.create_memory_object_stream[frozenset[str] | None](1000)
        self.ended = anyio.Event()

    def changed(self, names: Collection[str] | None = None) -> None:
        self._send.send_nowait(None if names is None else frozenset(names))

    async def next(self, timeout: float = 10) -> frozenset[str] | None:
        """The names of the next change (None: any name); ``timeout`` seconds at most."""
        with anyio.fail_after(timeout):
            return await self._seen.receive()


@asynccontextmanager
async def watching(source: Source) -> AsyncIterator[Changes]:
    """Run ``source`` while the block runs, started as the reconciler starts it."""
    changes = Changes()

    async def run(*, task_status: TaskStatus[None]) -> None:
        await source.run(changes.changed, task_status=task_status)
        changes.ended.set()

    with changes._send, changes._seen:
        async with anyio.create_task_group() as tg:
            await tg.start(run)
            yield changes
            tg.cancel_scope.cancel()
