"""``[depends_on]``: start order, as compose's conditions, and dependency cycles.

The pure parts as tables (cycles, the incremental graph, what ``plan``
does), then the real reconciler with the fake runtime; the e2e suite runs
it on a real daemon through the ``squish`` command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from squish.errors import ManifestError
from squish.model.dependencies import find_cycles
from squish.model.host import load_squishfile
from squish.model.manifest import Manifest
from squish.model.squishfile import Dependency, Health, Squishfile
from squish.reconcile.dependencies import DependencyGraph
from squish.reconcile.plan import Record, plan
from squish.runtime import ExecResult
from tests.control_plane import Plane, real_plane, running, squishfile, until

NOW = 1000.0


# -- the squishfile ------------------------------------------------------------------


def load(tmp_path: Path, text: str, name: str = "web") -> Squishfile:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_squishfile(path)


def test_depends_on_short_and_long_forms(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        squishfile()
        + '[depends_on]\ndb = "healthy"\n'
        + '[depends_on.cache]\ncondition = "completed"\nrestart = true\n'
        + "[depends_on.queue]\n",
    )
    assert loaded.depends_on == (
        Dependency("db", "healthy"),
        Dependency("cache", "completed", restart=True),
        Dependency("queue", "started"),
    )
    # Ordering starts is not what the container is: no replacement for it.
    assert loaded.spec_hash() == load(tmp_path, squishfile(), "web").spec_hash()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[depends_on]\ndb = "ready"\n', 'depends_on.db: must be "started", "healthy" or'),
        ("[depends_on]\ndb = 3\n", "depends_on.db: must be a condition"),
        ('[depends_on.db]\ncondition = "up"\n', "depends_on.db.condition: must be"),
        ("[depends_on.db]\nrestart = 1\n", "depends_on.db.restart: must be true or false"),
        ("[depends_on.db]\nwhen = 1\n", "unknown key 'when' (allowed: condition, restart)"),
        ('[depends_on]\n"-db" = "started"\n', "container names may contain only"),
        ('[depends_on]\nweb = "started"\n', "depends_on.web: a container cannot depend on itself"),
    ],
)
def test_depends_on_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, squishfile() + text)
    assert error in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'web.toml'}:")


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": ["b"], "b": []}, {}),
        ({"a": ["b"], "b": ["a"]}, {"a": ("a", "b", "a"), "b": ("b", "a", "b")}),
        (
            {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]},
            {"a": ("a", "b", "c", "a"), "b": ("b", "c", "a", "b"), "c": ("c", "a", "b", "c")},
        ),
        # Two cycles through b: each name gets its shortest.
        (
            {"a": ["b"], "b": ["a", "c"], "c": ["b"]},
            {"a": ("a", "b", "a"), "b": ("b", "a", "b"), "c": ("c", "b", "c")},
        ),
        ({"a": ["missing"]}, {}),
    ],
    ids=["none", "two", "three-and-a-tail", "two-through-one", "dangling"],
)
def test_cycles_name_the_whole_cycle(
    graph: dict[str, list[str]], cycles: dict[str, tuple[str, ...]]
) -> None:
    assert find_cycles(graph) == cycles


def test_a_long_chain_is_no_cycle_and_no_recursion() -> None:
    chain = {str(i): [str(i + 1)] for i in range(20000)}
    assert find_cycles(chain) == {}
    ring = {str(i): [str((i + 1) % 2000)] for i in range(2000)}
    cycles = find_cycles(ring)
    assert len(cycles) == 2000 and cycles["7"][:3] == ("7", "8", "9") and len(cycles["7"]) == 2001


def manifest(name: str, *depends: str, health: bool = False, restart: bool = False) -> Manifest:
    conditions = [d.split(":") if ":" in d else (d, "started") for d in depends]
    squish = Squishfile(
        name=name,
        command="/bin/app",
        depends_on=tuple(
            Dependency(dep, condition, restart)
            for dep, condition in conditions  # type: ignore[arg-type]
        ),
        health=Health(("/bin/check",)) if health else None,
    )
    return Manifest(name, f"/m/{name}.toml", squish)


def test_the_graph_finds_cycles_where_edges_change_and_forgets_them_when_broken() -> None:
    graph = DependencyGraph()
    desired = {"a": manifest("a", "b"), "b": manifest("b"), "c": manifest("c", "a")}
    assert graph.update(desired, None) == set()
    assert set(graph.dependents("a")) == {"c"} and set(graph.dependents("b")) == {"a"}
    assert graph.view(desired) is desired  # no cycle: nothing copied
    desired = {**desired, "b": manifest("b", "c")}
    assert graph.update(desired, {"b"}) == {"a", "b", "c"}
    view = graph.view(desired)
    error = view["a"].error
    assert view["a"].squishfile is None and error is not None
    assert str(error) == (
        "/m/a.toml: depends_on.b: dependency cycle: a -> b -> c -> a; none of them can start"
    )
    assert graph.view(desired) is view  # the same snapshot: the same view
    desired = {**desired, "c": manifest("c")}
    assert graph.update(desired, {"c"}) == {"a", "b", "c"}
    assert graph.cycles == {} and graph.view(desired) is desired
    assert set(graph.dependents("a")) == set()


# -- plan ------------------------------------------------------------------------------


def record_running(name: str, squish: Squishfile | None = None, **kw: Any) -> Record:
    return Record(name, container_id=f"id-{name}", applied=squish, running=True, **kw)


def planned(
    desired: dict[str, Manifest],
    records: dict[str, Record],
    health: dict[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    running = {r.container_id for r in records.values() if r.running and r.container_id}
    actions = plan(desired, records, running, NOW, health=(health or {}).get)
    return {action.name: (action.kind.value, action.reason) for action in actions}


def test_a_start_waits_for_its_dependency_and_says_why() -> None:
    web = manifest("web", "db:healthy")
    db = manifest("db", health=True)
    assert planned({"web": web}, {})["web"] == (
        "wait",
        "waiting for db to be healthy: no squishfile names it",
    )
    assert planned({"web": web, "db": db}, {})["web"][1].endswith(
        "db to be healthy: it is not running yet"
    )
    assert planned({"web": web, "db": db}, {})["db"] == ("start", "")
    db_runs = {"db": record_running("db", db.squishfile)}
    assert planned({"web": web, "db": db}, db_runs)["web"][1].endswith("it is starting")
    assert planned({"web": web, "db": db}, db_runs, {"db": "unhealthy"})["web"][1].endswith(
        "it is unhealthy"
    )
    assert planned({"web": web, "db": db}, db_runs, {"db": "healthy"}) == {"web": ("start", "")}
    stopped = {"db": Record("db", stopped_by_user=True)}
    assert "it is stopped" in planned({"web": web, "db": db}, stopped)["web"][1]


def test_healthy_on_a_container_without_checks_says_it_never_will() -> None:
    web, db = manifest("web", "db:healthy"), manifest("db")
    records = {"db": record_running("db", db.squishfile)}
    assert planned({"web": web, "db": db}, records)["web"][1].endswith(
        "it has no [health] check, so it never becomes healthy"
    )


def test_started_and_completed() -> None:
    web, db, job = manifest("web", "db", "job:completed"), manifest("db"), manifest("job")
    assert job.squishfile is not None
    desired = {"web": web, "db": db, "job": job}
    records = {
        "db": record_running("db", db.squishfile),
        "job": record_running("job", job.squishfile),
    }
    assert planned(desired, records)["web"][1] == (
        "waiting for job to be completed (exit 0): it is running"
    )
    spec = job.squishfile.spec_hash()
    records["job"] = Record("job", exit_code=3, exited_hash=spec)
    assert planned(desired, records)["web"][1].endswith("it exited with code 3")
    records["job"] = Record("job", exit_code=0, exited_hash=spec)
    assert planned(desired, records)["web"] == ("start", "")
    # An older version of it completed: this one has not run yet.
    records["job"] = Record("job", exit_code=0, exited_hash="older")
    assert planned(desired, records)["web"][0] == "wait"


def test_a_crashed_container_restarts_without_waiting() -> None:
    web, db = manifest("web", "db"), manifest("db")
    assert web.squishfile is not None
    crashed = Record("web", container_id="id-web", applied=web.squishfile, exit_code=1)
    crashed.exited_hash = web.squishfile.spec_hash()
    assert planned({"web": web, "db": db}, {"web": crashed, "db": Record("db")})["web"][0] == (
        "start"
    )


def test_a_running_dependent_keeps_running_unless_restart_is_asked() -> None:
    db = manifest("db")
    plain, tied = manifest("web", "db"), manifest("web", "db", restart=True)
    for web, expected in (
        (plain, {}),
        (tied, {"web": ("replace", "restarted with its dependency db")}),
    ):
        assert web.squishfile is not None
        records = {
            "web": record_running("web", web.squishfile, dependency_ids={"db": "id-db-old"}),
            "db": record_running("db", db.squishfile),
        }
        assert planned({"web": web, "db": db}, records) == expected
        # The same container as when it started: nothing.
        records["web"].dependency_ids = {"db": "id-db"}
        assert planned({"web": web, "db": db}, records) == {}
        # A new one that does not run (yet): it waits for it to be started again.
        records["web"].dependency_ids = {"db": "id-db-old"}
        records["db"].running = False
        assert planned({"web": web, "db": db}, records).get("web") is None


# -- the real reconciler ----------------------------------------------------------------

CHECKED = squishfile() + '[health]\ncommand = ["/bin/check"]\ninterval = "50ms"\nretries = 1\n'


def row(plane: Plane, name: str) -> dict[str, Any]:
    return next((dict(r) for r in plane.control.containers() if r["name"] == name), {})


@pytest.mark.anyio
async def test_a_dependent_waits_until_its_dependency_is_healthy(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.runtime.exec_results["db"] = ExecResult(1, "", 0.001)
        with plane.reconciler.subscribe() as events:
            plane.write("web", squishfile() + '[depends_on]\ndb = "healthy"\n')
            await until(lambda: row(plane, "web").get("phase") == "waiting")
            assert row(plane, "web")["reason"] == (
                "waiting for db to be healthy: no squishfile names it"
            )
            plane.write("db", CHECKED)
            await running(plane, "db")
            await until(lambda: row(plane, "db").get("health") == "unhealthy")
            await until(lambda: row(plane, "web")["reason"].endswith("it is unhealthy"))
            assert "web" not in plane.ids()
            plane.runtime.exec_results["db"] = ExecResult(0, "", 0.001)
            await running(plane, "web")
            waits = []
            while True:
                try:
                    event = events.receive_nowait()
                except anyio.WouldBlock:
                    break
                if event.kind == "container.waiting":
                    waits.append(event.message)
        # One event per reason, not one per round.
        assert waits == [
            "waiting for db to be healthy: no squishfile names it",
            "waiting for db to be healthy: it is not running yet",
            "waiting for db to be healthy: it is starting",
            "waiting for db to be healthy: it is unhealthy",
        ]
        # The gauges follow at the round after the start.
        await until(
            lambda: (
                'squish_container_state{container="web",state="running"} 1.0'
                in plane.metrics.exposition().decode()
            )
        )
        scrape = plane.metrics.exposition().decode()
        assert 'squish_container_state{container="web",state="waiting"} 0.0' in scrape


@pytest.mark.anyio
async def test_a_chain_starts_in_order(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("c", squishfile() + '[depends_on]\nb = "started"\n')
        plane.write("b", squishfile() + '[depends_on]\na = "started"\n')
        plane.write("a", squishfile())
        await running(plane, "a", "b", "c")
        starts = [call[1] for call in plane.runtime.calls if call[0] == "start"]
        assert starts == ["a", "b", "c"]


@pytest.mark.anyio
async def test_a_cycle_is_an_error_on_each_of_its_files_until_broken(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("a", squishfile() + '[depends_on]\nb = "started"\n')
        plane.write("b", squishfile())
        await running(plane, "b", "a")
        first = plane.ids()["a"]
        plane.write("b", squishfile() + '[depends_on]\na = "started"\n')
        await until(lambda: row(plane, "b").get("manifest_error"))
        await until(lambda: row(plane, "a").get("manifest_error"))
        assert (
            "dependency cycle: a -> b -> a; none of them can start"
            in (row(plane, "a")["manifest_error"])
        )
        assert "dependency cycle: b -> a -> b" in row(plane, "b")["manifest_error"]
        # As with any invalid edit: what ran keeps running.
        assert plane.ids()["a"] == first
        plane.write("b", squishfile())
        await until(lambda: not row(plane, "a").get("manifest_error"))
        assert not row(plane, "b").get("manifest_error")


@pytest.mark.anyio
async def test_restart_true_restarts_the_dependent_with_its_dependency(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("db", squishfile())
        plane.write("tied", squishfile() + "[depends_on.db]\nrestart = true\n")
        plane.write("loose", squishfile() + '[depends_on]\ndb = "started"\n')
        await running(plane, "db", "tied", "loose")
        before = plane.ids()
        plane.runtime.crash(before["db"])
        await until(lambda: plane.ids().get("db") not in (None, before["db"]))
        await until(lambda: plane.ids().get("tied") not in (None, before["tied"]))
        assert row(plane, "tied")["restarts"] == 1
        assert plane.ids()["loose"] == before["loose"]
        # And an edit that replaces it.
        middle = plane.ids()
        plane.write("db", squishfile(env="v2"))
        await until(lambda: plane.ids().get("db") not in (None, middle["db"]))
        await until(lambda: plane.ids().get("tied") not in (None, middle["tied"]))
        assert plane.ids()["loose"] == before["loose"]


@pytest.mark.anyio
async def test_completed_starts_after_a_job_exits_with_0(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("job", squishfile() + '[restart]\npolicy = "on-failure"\n')
        plane.write("app", squishfile() + '[depends_on]\njob = "completed"\n')
        await running(plane, "job")
        await until(lambda: row(plane, "app").get("phase") == "waiting")
        plane.runtime.crash(plane.ids()["job"], 0)
        await running(plane, "app")
        assert row(plane, "job")["phase"] == "exited"


@pytest.mark.anyio
async def test_create_accepts_a_waiting_container_and_refuses_a_cycle(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        created = await plane.control.create(
            "web", b'[run]\ncommand = "/bin/app"\n[depends_on]\ndb = "started"\n', timeout=5
        )
        assert created["phase"] == "waiting"
        assert created["reason"] == "waiting for db to be started: no squishfile names it"
        with pytest.raises(ManifestError, match="dependency cycle: db -> web -> db"):
            await plane.control.create(
                "db", b'[run]\ncommand = "/bin/app"\n[depends_on]\nweb = "started"\n', timeout=5
            )
        assert not (plane.manifests / "db.toml").exists()
        await plane.control.create("db", b'[run]\ncommand = "/bin/app"\n', timeout=5)
        await running(plane, "db", "web")


# -- validate, across files ---------------------------------------------------------------


def test_validate_reports_a_cycle_on_each_file_and_healthy_without_checks(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(squishfile() + '[depends_on]\nb = "healthy"\n')
    (tmp_path / "b.toml").write_text(squishfile() + '\n[depends_on]\na = "started"\n')
    (tmp_path / "c.toml").write_text(squishfile() + '[depends_on]\nd = "healthy"\n')
    (tmp_path / "d.toml").write_text(CHECKED)
    files = [str(tmp_path / f"{name}.toml") for name in "abcd"]
    done = subprocess.run(
        [sys.executable, "-m", "squish", "validate", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{files[0]}:4: depends_on.b: dependency cycle: a -> b -> a; none of them can start",
        f'{files[0]}:4: depends_on.b: waits for b to be "healthy", but {files[1]} has no '
        "[health] check: it never will",
        f"{files[1]}:5: depends_on.a: dependency cycle: b -> a -> b; none of them can start",
    ]
    assert done.stdout.splitlines() == [f"{files[2]}: ok", f"{files[3]}: ok"]
