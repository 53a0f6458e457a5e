"""The reconciler on the fake runtime, with a real directory source on a temp dir."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from squish.daemon.metrics import Metrics
from squish.errors import ContainerNotFound, ManifestError, RuntimeFailure
from squish.layers import LayerStore
from squish.model.squishfile import Squishfile
from squish.reconcile.status import Phase
from squish.runtime import ContainerSpec, PortForward
from tests.control_plane import Plane, real_plane, resolve, running, squishfile

pytestmark = pytest.mark.anyio


def manifest(command: str = "/bin/app", port: int | None = None, restart: str = "always") -> str:
    text = f'[run]\ncommand = "{command}"\n[restart]\npolicy = "{restart}"\n'
    if port is not None:
        text += f"[[ports]]\ncontainer = 80\nhost = {port}\n"
    return text


World = Plane


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The reconciler with no resync in a test's time: every change must reach it as an event."""
    async with real_plane(tmp_path) as plane:
        yield plane


@pytest.fixture
async def resyncing(tmp_path: Path) -> AsyncIterator[World]:
    """The reconciler resyncing every 0.5 s: what only a resync sees (a file layer's change)."""
    async with real_plane(tmp_path, resync=0.5) as plane:
        yield plane


async def test_a_dropped_manifest_runs(world: World) -> None:
    world.write("web", manifest(port=8080))
    await until(lambda: "web" in world.ids())
    await until(lambda: world.phase("web") is Phase.RUNNING)
    (status,) = world.control.containers()
    assert status["id"] == world.ids()["web"]
    assert status["ports"] == [
        {"host": 8080, "container": 80, "protocol": "tcp", "host_ip": "127.0.0.1"}
    ]
    assert world.runtime.list()[0].ports == (PortForward(8080, 80),)


async def test_the_same_content_rewritten_changes_nothing(world: World) -> None:
    world.write("web", manifest())
    await until(lambda: "web" in world.ids())
    before = world.ids()["web"]
    world.write("web", manifest())
    await anyio.sleep(0.7)  # a watch event and a resync later
    assert world.ids()["web"] == before
    assert world.starts() == 1


async def test_only_ports_changed_updates_in_place(world: World) -> None:
    world.write("web", manifest(port=8080))
    await until(lambda: "web" in world.ids())
    before = world.ids()["web"]
    world.write("web", manifest(port=9090))
    await until(lambda: world.runtime.list()[0].ports == (PortForward(9090, 80),))
    assert world.ids()["web"] == before
    assert ("update_ports", before) in world.runtime.calls


async def test_anything_else_changed_replaces(world: World) -> None:
    world.write("web", manifest("/bin/one"))
    await until(lambda: "web" in world.ids())
    before = world.ids()["web"]
    world.write("web", manifest("/bin/two"))
    await until(lambda: world.ids().get("web", before) != before)
    assert world.runtime.list()[0].spec.command == "/bin/two"
    assert ("stop", before) in world.runtime.calls


async def test_a_replaced_archive_replaces_the_container(resyncing: World) -> None:
    world = resyncing
    tool = world.dir / "tool.tar.gz"
    tool.write_bytes(b"version one")
    world.write(
        "web", manifest() + '[layers]\ntool = { path = "./tool.tar.gz", target = "/sdk/t" }\n'
    )
    await until(lambda: "web" in world.ids())
    first = world.ids()["web"]
    await anyio.sleep(0.7)
    assert world.ids()["web"] == first  # nothing changed: nothing happens
    replacement = world.dir / ".tool.new"
    replacement.write_bytes(b"version two, longer")
    replacement.rename(tool)  # how a deploy drops a new build in place
    await until(lambda: world.ids().get("web", first) != first)
    assert world.starts() == 2


async def test_writes_to_file_layers_replace_only_when_the_file_is_new(resyncing: World) -> None:
    world = resyncing
    scratch, conf = world.dir / "scratch", world.dir / "app.conf"
    scratch.write_text("")
    conf.write_text("one\n")
    world.write(
        "web",
        manifest()
        + '[layers]\nscratch = { path = "./scratch", target = "/data/s", rw = true }\n'
        + 'conf = { path = "./app.conf", target = "/etc/app.conf" }\n',
    )
    await until(lambda: "web" in world.ids())
    first = world.ids()["web"]
    for _ in range(15):  # three resyncs of writes: the container's and in place
        with scratch.open("a") as file:
            file.write("tick\n")
        with conf.open("a") as file:
            file.write("edited in place\n")
        await anyio.sleep(0.1)
    assert world.ids()["web"] == first
    assert world.starts() == 1
    replacement = world.dir / ".app.conf.new"
    replacement.write_text("a new file\n")
    replacement.rename(conf)
    await until(lambda: world.ids().get("web", first) != first)
    assert world.starts() == 2


async def test_a_removed_manifest_stops_its_container(world: World) -> None:
    world.write("web", manifest())
    await until(lambda: "web" in world.ids())
    (world.dir / "web.toml").unlink()
    await until(lambda: not world.runtime.list())
    await until(lambda: not world.control.containers())


async def test_editor_debris_is_ignored(world: World) -> None:
    for name in (".web.toml.swp", "web.toml~", "#web.toml#", "notes.txt", ".hidden.toml"):
        (world.dir / name).write_text(manifest())
    await anyio.sleep(0.7)
    assert world.runtime.list() == []
    assert world.control.containers() == []


async def test_an_invalid_edit_keeps_the_last_good_version_until_fixed(world: World) -> None:
    with world.reconciler.subscribe() as events:
        world.write("web", manifest("/bin/one"))
        await until(lambda: "web" in world.ids())
        first = world.ids()["web"]
        world.write("web", '[run]\ncommand = ""\n')
        await until(lambda: world.control.containers()[0]["manifest_error"] is not None)
        (status,) = world.control.containers()
        assert status["phase"] == Phase.RUNNING and status["id"] == first
        assert "run.command" in (status["manifest_error"] or "")
        await anyio.sleep(0.7)
        assert world.ids()["web"] == first
        world.write("web", manifest("/bin/fixed"))
        await until(lambda: world.ids().get("web", first) != first)
        await anyio.sleep(0.7)
        assert world.starts() == 2  # the fix is applied once
        kinds = []
        while True:
            try:
                kinds.append(events.receive_nowait().kind)
            except anyio.WouldBlock:
                break
    assert "manifest.invalid" in kinds and "manifest.valid" in kinds


async def test_a_crash_restarts_at_once_then_backs_off(world: World) -> None:
    world.write("web", manifest())
    await until(lambda: "web" in world.ids())
    world.runtime.crash(world.ids()["web"])
    await until(lambda: "web" in world.ids())  # the first restart is immediate
    assert world.control.containers()[0]["restarts"] == 1
    world.runtime.crash(world.ids()["web"])
    await until(lambda: world.phase("web") is Phase.BACKOFF)
    await until(lambda: world.phase("web") is Phase.RUNNING, timeout=3)
    assert world.control.containers()[0]["restarts"] == 2
    restarts = _sample(world.metrics, "squish_container_restarts_total", container="web")
    assert restarts == 2


async def test_restart_policy_never_leaves_it_exited(world: World) -> None:
    world.write("job", manifest(restart="never"))
    await until(lambda: "job" in world.ids())
    world.runtime.crash(world.ids()["job"], exit_code=0)
    await until(lambda: world.phase("job") is Phase.EXITED)
    await anyio.sleep(0.7)
    assert world.runtime.list() == []
    assert world.starts() == 1


async def test_a_port_claimed_twice_is_a_conflict_naming_both_files(world: World) -> None:
    world.write("web", manifest(port=8080))
    await until(lambda: "web" in world.ids())
    world.write("api", manifest(port=8080))
    await until(lambda: world.phase("api") is Phase.FAILED)
    reason = next(s["reason"] for s in world.control.containers() if s["name"] == "api")
    assert "api.toml" in reason and "web.toml" in reason
    assert set(world.ids()) == {"web"}


async def test_create_waits_until_running(world: World) -> None:
    status = await world.control.create("web", manifest().encode(), timeout=5)
    assert status["phase"] == Phase.RUNNING
    assert status["id"] == world.ids()["web"]
    assert (world.dir / "web.toml").read_text() == manifest()


async def test_create_of_a_bad_manifest_stores_nothing(world: World) -> None:
    with pytest.raises(ManifestError, match=r"run\.command"):
        await world.control.create("web", b'[run]\ncommand = ""\n', timeout=5)
    assert not (world.dir / "web.toml").exists()


async def test_create_that_cannot_start_fails_fast_and_restores(world: World) -> None:
    world.write("web", manifest("/bin/old"))
    await until(lambda: "web" in world.ids())
    old = world.ids()["web"]
    world.runtime.fail_next_start("web", RuntimeFailure("host port 8080/tcp: in use"))
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="in use"):
        await world.control.create("web", manifest("/bin/new").encode(), timeout=30)
    assert time.monotonic() - started < 2  # no waiting through retries
    assert (world.dir / "web.toml").read_text() == manifest("/bin/old")
    await until(lambda: world.ids().get("web") not in (None, old))
    assert world.runtime.list()[0].spec.command == "/bin/old"


async def test_stop_keeps_it_stopped_and_start_brings_it_back(world: World) -> None:
    world.write("web", manifest())
    await until(lambda: "web" in world.ids())
    first = world.ids()["web"]
    stopped = await world.control.stop(first[:7])
    assert stopped["phase"] == Phase.STOPPED
    await anyio.sleep(0.7)
    assert world.runtime.list() == []
    started = await world.control.start("web", timeout=5)
    assert started["phase"] == Phase.RUNNING and started["id"] not in (None, first)


async def test_stop_of_an_unknown_prefix_is_not_found(world: World) -> None:
    with pytest.raises(ContainerNotFound):
        await world.control.stop("nope")


async def test_create_after_stop_runs_again_under_a_new_id(world: World) -> None:
    first = await world.control.create("web", manifest().encode(), timeout=5)
    await world.control.stop("web")
    second = await world.control.create("web", manifest().encode(), timeout=5)
    assert second["phase"] == Phase.RUNNING and second["id"] != first["id"]


async def test_delete_removes_the_manifest_and_the_container(world: World) -> None:
    await world.control.create("web", manifest().encode(), timeout=5)
    await world.control.delete("web")
    assert not (world.dir / "web.toml").exists()
    assert world.runtime.list() == []


async def test_metrics_count_manifests_containers_and_rounds(world: World) -> None:
    world.write("web", manifest())
    world.write("bad", '[run]\ncommand = ""\n')
    await until(lambda: "web" in world.ids())
    await until(lambda: _sample(world.metrics, "squish_manifests", state="invalid") == 1)
    assert _sample(world.metrics, "squish_manifests", state="valid") == 1
    await until(lambda: _sample(world.metrics, "squish_containers", state="running") == 1)
    assert _sample(world.metrics, "squish_reconciles_total", result="success") >= 1


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_a_users_stop_outlives_a_daemon_restart(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("web", squishfile())
        plane.write("db", squishfile("/bin/db"))
        await running(plane, "web", "db")
        await plane.control.stop("web")
    saved = json.loads((tmp_path / "state" / "stopped.json").read_text())
    assert list(saved["stopped"]) == ["web"]
    async with real_plane(tmp_path) as plane:
        await running(plane, "db")
        await anyio.sleep(1.2)  # two resyncs
        assert set(plane.ids()) == {"db"}
        assert plane.phase("web") == "stopped"
        await plane.control.start("web", timeout=5)
        await running(plane, "web")
    assert json.loads((tmp_path / "state" / "stopped.json").read_text()) == {"stopped": {}}
    async with real_plane(tmp_path) as plane:
        await running(plane, "web", "db")


async def test_an_edit_starts_a_container_stopped_before_a_restart(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("web", squishfile())
        await running(plane, "web")
        await plane.control.stop("web")
    (tmp_path / "manifests" / "web.toml").write_text(squishfile(env="edited"))
    async with real_plane(tmp_path) as plane:
        await running(plane, "web")


async def test_a_garbled_stop_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "stopped.json").write_text("{half")
    async with real_plane(tmp_path) as plane:
        plane.write("web", squishfile())
        await running(plane, "web")
    assert "ignoring" in caplog.text and "stopped.json" in caplog.text


def _by_container(metrics: Metrics, name: str) -> dict[str, float]:
    """Every sample of ``name`` as container -> value; a missing series is absent."""
    text = metrics.exposition().decode()
    return {
        sample.labels["container"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _state(metrics: Metrics, container: str) -> str | None:
    """The state squish_container_state marks 1 for ``container``; all others must be 0."""
    text = metrics.exposition().decode()
    states = {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "squish_container_state" and sample.labels["container"] == container
    }
    if not states:
        return None
    assert set(states) == {phase.value for phase in Phase}
    (current,) = (state for state, value in states.items() if value == 1.0)
    assert sum(states.values()) == 1.0
    return current


async def test_a_started_container_counts_restarts_from_zero(world: World) -> None:
    world.write("web", manifest())
    await until(lambda: "web" in world.ids())
    assert _by_container(world.metrics, "squish_container_restarts_total") == {"web": 0.0}
    assert _by_container(world.metrics, "squish_container_start_failures_total") == {"web": 0.0}
    world.runtime.crash(world.ids()["web"])
    await until(lambda: world.control.containers()[0]["restarts"] == 1)
    assert _by_container(world.metrics, "squish_container_restarts_total") == {"web": 1.0}


async def test_a_first_start_that_fails_still_has_a_restart_counter(world: World) -> None:
    world.runtime.fail_next_start("web", RuntimeFailure("host port 8080/tcp: in use"))
    world.write("web", manifest())
    await until(lambda: world.phase("web") is Phase.BACKOFF)
    assert _by_container(world.metrics, "squish_container_start_failures_total") == {"web": 1.0}
    assert _by_container(world.metrics, "squish_container_restarts_total") == {"web": 0.0}


async def test_container_state_follows_the_phase(world: World) -> None:
    world.write("web", manifest())
    world.write("job", manifest(restart="never"))
    world.write("bad", '[run]\ncommand = ""\n')
    await until(lambda: _state(world.metrics, "web") == "running")
    await until(lambda: _state(world.metrics, "job") == "running")
    assert _state(world.metrics, "bad") == "invalid"
    world.runtime.crash(world.ids()["job"], exit_code=0)
    await until(lambda: _state(world.metrics, "job") == "exited")
    await world.control.stop("web")
    await until(lambda: _state(world.metrics, "web") == "stopped")
    assert _state(world.metrics, "job") == "exited"


async def test_container_state_of_a_crashed_container_is_backoff(world: World) -> None:
    world.write("web", manifest())
    await until(lambda: "web" in world.ids())
    world.runtime.crash(world.ids()["web"])
    await until(lambda: "web" in world.ids())  # the first restart is immediate
    world.runtime.crash(world.ids()["web"])
    await until(lambda: _state(world.metrics, "web") == "backoff")
    await until(lambda: _state(world.metrics, "web") == "running", timeout=3)


async def test_a_removed_manifest_drops_its_container_series(world: World) -> None:
    world.write("web", manifest())
    world.write("db", manifest())
    world.write("bad", '[run]\ncommand = ""\n')
    await until(lambda: _state(world.metrics, "web") == "running")
    await until(lambda: _state(world.metrics, "db") == "running")
    assert _state(world.metrics, "bad") == "invalid"
    (world.dir / "web.toml").unlink()
    (world.dir / "bad.toml").unlink()
    await until(lambda: set(world.ids()) == {"db"})
    await until(lambda: _state(world.metrics, "web") is None)
    await until(lambda: _state(world.metrics, "bad") is None)
    assert _state(world.metrics, "db") == "running"
    for name in ("squish_container_restarts_total", "squish_container_start_failures_total"):
        assert set(_by_container(world.metrics, name)) == {"db"}


async def test_a_stop_during_a_start_in_flight_wins(tmp_path: Path) -> None:
    def slow(squishfile: Squishfile, store: LayerStore) -> ContainerSpec:
        time.sleep(0.5)  # resolving layers (a download, an unpack) takes a while
        return resolve(squishfile, store)

    async with real_plane(tmp_path, resolve=slow) as plane:
        plane.write("web", squishfile())
        await until(lambda: plane.reconciler.records.get("web") is not None)
        record = plane.reconciler.records["web"]
        await until(lambda: record.in_flight)
        stopped = await plane.control.stop("web")  # while the start is in flight
        assert stopped["phase"] == "stopped"
        assert plane.ids() == {}
        await anyio.sleep(1.2)  # two resyncs: nothing starts it again
        assert plane.ids() == {}
        assert plane.phase("web") == "stopped"
