"""MultiSource: the union of several sources' snapshots and change streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from squish.errors import ManifestError
from squish.model.manifest import Manifest
from squish.model.squishfile import Squishfile
from squish.sources.directory import DirectorySource
from squish.sources.multi import MultiSource


def manifest(name: str, file: str, command: str = "/app/server") -> Manifest:
    return Manifest(name, file, Squishfile(name=name, command=command))


class FakeSource:
    """A source whose snapshot is a dict and whose changes are pushed by the test."""

    def __init__(self, *manifests: Manifest) -> None:
        self.manifests = {m.name: m for m in manifests}
        self._send: MemoryObjectSendStream[None] | None = None
        self._receive: MemoryObjectReceiveStream[None] | None = None

    def snapshot(self) -> Mapping[str, Manifest]:
        return self.manifests

    def stream(self) -> MemoryObjectSendStream[None]:
        self._send, self._receive = anyio.create_memory_object_stream[None](10)
        return self._send

    async def changes(self) -> AsyncIterator[None]:
        assert self._receive is not None, "call stream() first"
        async with self._receive:
            async for _ in self._receive:
                yield


def test_the_snapshot_is_the_union_of_the_sources() -> None:
    web, db = manifest("web", "/etc/squish/web.toml"), manifest("db", "apps/db.toml@1a2b3c4d5e6f")
    multi = MultiSource([FakeSource(web), FakeSource(db), FakeSource()])

    assert dict(multi.snapshot()) == {"web": web, "db": db}


def test_a_name_defined_twice_is_an_error_naming_both_files() -> None:
    here = manifest("web", "/etc/squish/web.toml")
    there = manifest("web", "apps/web.toml@1a2b3c4d5e6f", command="/other")
    db = manifest("db", "apps/db.toml@1a2b3c4d5e6f")
    multi = MultiSource([FakeSource(here), FakeSource(there, db)])

    snapshot = multi.snapshot()

    assert snapshot["db"] is db
    web = snapshot["web"]
    assert web.squishfile is None and isinstance(web.error, ManifestError)
    assert web.file == "/etc/squish/web.toml"
    message = str(web.error)
    assert "/etc/squish/web.toml" in message and "apps/web.toml@1a2b3c4d5e6f" in message
    assert "\n" not in message
    # The same answer every time: no flapping between the two definitions.
    assert str(multi.snapshot()["web"].error) == message


def test_an_invalid_duplicate_still_conflicts() -> None:
    broken = Manifest("web", "apps/web.toml@1a2b3c4d5e6f", None, ManifestError("x", "bad"))
    multi = MultiSource([FakeSource(manifest("web", "/etc/web.toml")), FakeSource(broken)])

    assert multi.snapshot()["web"].squishfile is None


def test_a_directory_source_takes_part(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text('[run]\ncommand = "/app/server"\n')
    other = manifest("db", "apps/db.toml@1a2b3c4d5e6f")
    multi = MultiSource([DirectorySource(tmp_path), FakeSource(other)])

    assert set(multi.snapshot()) == {"web", "db"}


class Consumer:
    """Iterates ``changes()`` the way the reconciler does: ``async for`` in a task
    of its own with no scopes around it; the test waits on what it saw."""

    def __init__(self, multi: MultiSource) -> None:
        self.multi = multi
        self.ended = anyio.Event()
        self._send, self._seen = anyio.create_memory_object_stream[None](100)

    async def run(self) -> None:
        with self._send, self._seen:
            async for _ in self.multi.changes():
                self._send.send_nowait(None)
            self.ended.set()

    async def wait_change(self) -> None:
        with anyio.fail_after(5):
            await self._seen.receive()


@pytest.mark.anyio
async def test_changes_merges_every_sources_stream() -> None:
    one, two = FakeSource(), FakeSource()
    first, second = one.stream(), two.stream()
    consumer = Consumer(MultiSource([one, two]))

    async with first, second, anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        for send in (first, second, first):
            await send.send(None)
            await consumer.wait_change()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_changes_ends_when_every_source_has_ended() -> None:
    one, two = FakeSource(), FakeSource()
    first, second = one.stream(), two.stream()
    consumer = Consumer(MultiSource([one, two]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await first.aclose()
        await second.send(None)
        await consumer.wait_change()
        await second.aclose()
        with anyio.fail_after(5):
            await consumer.ended.wait()
