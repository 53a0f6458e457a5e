"""The reconciler's work queue: a round reconciles the names that changed, a resync all.

On the fake runtime and the fake source, so that a test can count what a
round reads, lose an event on purpose, and see the resync repair it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from squish.layers import LayerStore
from squish.model.manifest import Manifest
from squish.model.squishfile import Port, Squishfile
from squish.reconcile import reconciler as reconciler_module
from squish.reconcile.plan import Action, Backoff, Record
from squish.reconcile.reconciler import Reconciler
from squish.reconcile.status import Phase
from squish.runtime import Container, ExitEvent
from squish.runtime.fake import FakeRuntime
from squish.sources.fake import FakeSource
from tests.control_plane import resolve

pytestmark = pytest.mark.anyio


def manifest(name: str, command: str = "/bin/app", port: int | None = None) -> Manifest:
    ports = () if port is None else (Port(80, port),)
    return Manifest(name, f"/m/{name}.toml", Squishfile(name=name, command=command, ports=ports))


class CountingSource(FakeSource):
    """A fake source that counts its snapshots with and without a rescan."""

    def __init__(self, *manifests: Manifest) -> None:
        super().__init__(*manifests)
        self.rescans = 0
        self.reads = 0

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        if rescan:
            self.rescans += 1
        else:
            self.reads += 1
        return super().snapshot(rescan=rescan)


class CountingRuntime(FakeRuntime):
    """The fake runtime, counting how often the whole list of containers is read."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(self) -> list[Container]:
        self.lists += 1
        return super().list()


@dataclass
class Queue:
    source: CountingSource
    runtime: CountingRuntime
    reconciler: Reconciler
    planned: list[frozenset[str] | None]
    """The names each round planned (None: every name)."""

    def ids(self) -> dict[str, str]:
        return {c.name: c.id for c in FakeRuntime.list(self.runtime)}  # not counted

    async def until(self, check: Callable[[], object], timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while not check():
                await anyio.sleep(0.01)

    async def settle(self, timeout: float = 5.0) -> None:
        """Until nothing is in flight and no round has run for 0.1 s.

        The end of a start queues its name once more after the start is no
        longer in flight: a round counted from "nothing in flight" may still see it.
        """
        with anyio.fail_after(timeout):
            while True:
                rounds = len(self.planned)
                await anyio.sleep(0.1)
                busy = any(r.in_flight for r in self.reconciler.records.values())
                if not busy and len(self.planned) == rounds:
                    return


@contextlib.asynccontextmanager
async def queue(
    tmp_path: Path, *manifests: Manifest, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> AsyncIterator[Queue]:
    planned: list[frozenset[str] | None] = []
    real_plan = reconciler_module.plan

    def spy(
        desired: Mapping[str, Manifest],
        records: Mapping[str, Record],
        running: Collection[str],
        now: float,
        *,
        names: Collection[str] | None = None,
        **options: Any,
    ) -> list[Action]:
        planned.append(None if names is None else frozenset(names))
        return real_plan(desired, records, running, now, names=names, **options)

    monkeypatch.setattr(reconciler_module, "plan", spy)
    source = CountingSource(*manifests)
    async with CountingRuntime() as runtime:
        reconciler = Reconciler(
            source=source,
            runtime=runtime,
            store=LayerStore(tmp_path / "state"),
            manifests_dir=tmp_path,
            log_dir=tmp_path / "logs",
            backoff=options.pop("backoff", Backoff(initial=0.2, maximum=0.2)),
            resync=options.pop("resync", 3600.0),
            resolve=resolve,
            **options,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(reconciler.run)
            try:
                yield Queue(source, runtime, reconciler, planned)
            finally:
                reconciler.close()
                tg.cancel_scope.cancel()


HELD = 50


async def test_an_exit_is_reconciled_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = [manifest(f"c-{index:02d}") for index in range(HELD)]
    async with queue(tmp_path, *held, monkeypatch=monkeypatch) as q:
        await q.until(lambda: len(q.ids()) == HELD)
        await q.settle()
        rescans, lists, rounds = q.source.rescans, q.runtime.lists, len(q.planned)
        first = q.ids()["c-07"]

        q.runtime.crash(first)
        await q.until(lambda: q.ids().get("c-07", first) != first)

        # Only c-07 was planned; no round read everything or listed every container.
        assert set(q.planned[rounds:]) == {frozenset({"c-07"})}
        assert (q.source.rescans, q.runtime.lists) == (rescans, lists)
        assert q.reconciler.phase("c-07").phase is Phase.RUNNING
        assert q.reconciler.records["c-07"].restarts == 1


async def test_a_source_reporting_a_name_gets_a_round_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [manifest(f"c-{index:02d}") for index in range(HELD)]
    async with queue(tmp_path, *held, monkeypatch=monkeypatch) as q:
        await q.until(lambda: len(q.ids()) == HELD)
        rescans = q.source.rescans
        q.source.manifests = {**q.source.manifests, "new": manifest("new")}
        q.source.touch({"new"})
        await q.until(lambda: "new" in q.ids())
        assert frozenset({"new"}) in q.planned
        assert q.source.rescans == rescans


async def test_a_lost_manifest_event_is_repaired_by_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with queue(tmp_path, manifest("web"), monkeypatch=monkeypatch, resync=0.3) as q:
        await q.until(lambda: "web" in q.ids())
        first = q.ids()["web"]
        # The manifest changes and the source never says so: only a resync sees it.
        q.source.manifests = {"web": manifest("web", "/bin/other"), "db": manifest("db")}
        await q.until(lambda: {"web", "db"} <= set(q.ids()) and q.ids()["web"] != first)
        assert None in q.planned[1:]


async def test_a_lost_exit_event_is_repaired_by_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with queue(tmp_path, manifest("web"), monkeypatch=monkeypatch, resync=0.3) as q:
        await q.until(lambda: "web" in q.ids())
        first = q.ids()["web"]
        q.runtime.vanish(first)  # gone, and no exit event says so
        await q.until(lambda: q.ids().get("web", first) != first)
        assert q.reconciler.records["web"].restarts == 1  # found dead: a restart


async def test_an_exit_that_comes_after_its_container_was_found_gone_only_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found gone by the resync (a crash, counted once); the late exit adds its reason."""
    async with queue(tmp_path, manifest("web"), monkeypatch=monkeypatch, resync=0.3) as q:
        await q.until(lambda: "web" in q.ids())
        first = q.ids()["web"]
        q.runtime.vanish(first)
        await q.until(lambda: q.ids().get("web", first) != first)
        record = q.reconciler.records["web"]
        assert (record.restarts, record.crashes) == (1, 1)
        assert "found gone" in record.exit_reason
        with q.reconciler.subscribe() as events:
            q.runtime._exits.publish(ExitEvent(first, "web", 143, 0.0, False, "its helper died"))
            with anyio.fail_after(5):
                event = await events.receive()
        assert (event.kind, event.message) == (
            "container.exited",
            "exited with code 143: its helper died",
        )
        assert (record.restarts, record.crashes) == (1, 1)  # not a second crash
        assert q.reconciler.phase("web").phase is Phase.RUNNING


async def test_without_a_resync_a_lost_event_stays_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counterpart of the two above: what repairs them is the resync.
    async with queue(tmp_path, manifest("web"), monkeypatch=monkeypatch) as q:
        await q.until(lambda: "web" in q.ids())
        first = q.ids()["web"]
        q.source.manifests = {"web": manifest("web", "/bin/other")}
        await anyio.sleep(0.5)
        assert q.ids()["web"] == first
        q.source.touch({"web"})
        await q.until(lambda: q.ids().get("web", first) != first)


async def test_a_back_off_that_ends_requeues_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with queue(tmp_path, manifest("web"), monkeypatch=monkeypatch) as q:
        await q.until(lambda: "web" in q.ids())
        for restarts in (1, 2):  # the first restart is at once, the second after 0.2 s
            current = q.ids()["web"]
            q.runtime.crash(current)
            await q.until(lambda c=current: q.ids().get("web", c) != c)  # type: ignore[misc]
            assert q.reconciler.records["web"].restarts == restarts
        assert q.source.rescans == 1  # the first round only


async def test_a_port_let_go_starts_the_name_refused_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with queue(tmp_path, manifest("a", port=8080), monkeypatch=monkeypatch) as q:
        await q.until(lambda: "a" in q.ids())
        q.source.manifests = {**q.source.manifests, "b": manifest("b", port=8080)}
        q.source.touch({"b"})
        await q.until(lambda: q.reconciler.phase("b").phase is Phase.FAILED)
        assert "already used by /m/a.toml" in q.reconciler.phase("b").reason

        # a moves to another port: b gets 8080 without waiting for a resync.
        q.source.manifests = {**q.source.manifests, "a": manifest("a", port=9090)}
        q.source.touch({"a"})
        await q.until(lambda: "b" in q.ids())
        assert q.source.rescans == 1


async def test_a_name_has_one_action_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with queue(tmp_path, monkeypatch=monkeypatch) as q:
        q.runtime.hang_next_start("web")
        q.source.set(manifest("web"))
        await q.until(lambda: "web" in q.reconciler.records)
        for _ in range(20):  # a storm of reports while its start hangs
            q.source.touch({"web"})
            await anyio.sleep(0.01)
        starts = [call for call in q.runtime.calls if call == ("start", "web")]
        assert len(starts) == 1


async def test_rounds_write_the_users_stops_only_when_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    held = (manifest("web"), manifest("db"))
    async with queue(tmp_path, *held, monkeypatch=monkeypatch, state_dir=state) as q:
        await q.until(lambda: len(q.ids()) == 2)
        q.reconciler.mark_stopped("web")
        q.reconciler.trigger({"web"})
        await q.until(lambda: "web" not in q.ids())
        stops = state / "stopped.json"
        written = stops.stat().st_ino  # each save renames a new file into place

        for _ in range(3):
            q.reconciler.reconcile_once()
            q.reconciler.reconcile_names({"db"})
        assert stops.stat().st_ino == written

        q.reconciler.wanted_again("web")
        q.reconciler.trigger({"web"})
        await q.until(lambda: "web" in q.ids())
        assert stops.stat().st_ino != written
        assert json.loads(stops.read_text()) == {"stopped": {}}
