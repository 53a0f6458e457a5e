"""Watching a source in a test: run it as the reconciler does, and wait for its changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskStatus

from squish.sources import Source


class Changes:
    """The ``changed()`` calls of a running source, one at a time; ``ended`` once it returned."""

    def __init__(self) -> None:
        self._send, self._seen = anyio.create_memory_object_stream[None](1000)
        self.ended = anyio.Event()

    def changed(self) -> None:
        self._send.send_nowait(None)

    async def next(self, timeout: float = 10) -> None:
        """Wait for the next change (``timeout`` seconds at most)."""
        with anyio.fail_after(timeout):
            await self._seen.receive()


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
