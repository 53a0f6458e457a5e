"""Several sources as one: the union of their snapshots and of their changes.

The daemon uses it when desired state comes from more than one place (its
directory of squishfiles and a git repository, or two repositories) and gives
it to the reconciler as its one ``Source``.

A container name belongs to one source. When two define it, the name gets an
error manifest naming both files instead of either definition: the container
keeps running as it was (an invalid manifest never stops one) and cannot
flap between two specs as the sources change in turn. Removing one of the
two definitions resolves it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from squish.errors import ManifestError
from squish.model.manifest import Manifest
from squish.sources import Source


class MultiSource:
    """The union of ``sources``; earlier sources name a conflict first."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)

    def snapshot(self) -> Mapping[str, Manifest]:
        found: dict[str, list[Manifest]] = {}
        for source in self.sources:
            for name, manifest in source.snapshot().items():
                found.setdefault(name, []).append(manifest)
        return {
            name: manifests[0] if len(manifests) == 1 else _conflict(name, manifests)
            for name, manifests in found.items()
        }

    async def changes(self) -> AsyncGenerator[None, None]:
        """Yields whenever any source's ``changes()`` does; ends when all have ended.

        Notifications arriving while one is pending are merged into it: the
        reconciler re-reads everything anyway. Consume it to the end or until
        cancelled (as the reconciler does), or close it with ``aclosing``.
        """
        send, receive = anyio.create_memory_object_stream[None](1)
        async with receive, anyio.create_task_group() as tg:
            async with send:
                for source in self.sources:
                    tg.start_soon(_forward, source, send.clone())
            async for _ in receive:
                try:
                    yield
                except GeneratorExit:
                    # Closed by the consumer (``aclose``, or collected while
                    # suspended here). Stop the forwarders now, in this task,
                    # so the task group ends normally rather than with a
                    # GeneratorExit inside an exception group.
                    tg.cancel_scope.cancel()
                    return


async def _forward(source: Source, send: MemoryObjectSendStream[None]) -> None:
    async with send:
        async for _ in source.changes():
            # One pending notification is enough; never block a source on a
            # busy reconciler.
            with contextlib.suppress(anyio.WouldBlock):
                send.send_nowait(None)


def _conflict(name: str, manifests: list[Manifest]) -> Manifest:
    first, others = manifests[0], [m.file for m in manifests[1:]]
    error = ManifestError(
        first.file,
        f"container {name!r} is also defined in {' and '.join(others)}; a container may be "
        "defined in one source only: rename or remove one of the files",
    )
    return Manifest(name, first.file, None, error)
