"""plan(desired, records, running, now) as tables: every rule of reconciling."""

from __future__ import annotations

from pathlib import Path

import pytest

from squish.errors import ManifestError
from squish.model.manifest import Manifest
from squish.model.squishfile import Port, Squishfile
from squish.reconcile.plan import Action, Backoff, Kind, Record, plan

NOW = 1000.0


def sf(name: str, command: str = "/bin/app", *ports: int, restart: str = "always") -> Squishfile:
    return Squishfile(
        name=name,
        command=command,
        ports=tuple(Port(container=80, host=port) for port in ports),
        restart=restart,  # type: ignore[arg-type]
    )


def ok(squishfile: Squishfile) -> Manifest:
    return Manifest(squishfile.name, f"/m/{squishfile.name}.toml", squishfile)


def bad(name: str) -> Manifest:
    error = ManifestError(f"/m/{name}.toml", "run.command: must not be empty", field="run.command")
    return Manifest(name, f"/m/{name}.toml", None, error)


def running(name: str, squishfile: Squishfile, **kw: object) -> Record:
    return Record(name, container_id=f"id-{name}", applied=squishfile, running=True, **kw)  # type: ignore[arg-type]


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(action.kind.value, action.name) for action in actions]


WEB = sf("web", "/bin/httpd", 8080)

CASES = [
    pytest.param({"web": ok(WEB)}, {}, set(), [("start", "web")], id="new manifest -> start"),
    pytest.param(
        {"web": ok(WEB)},
        {"web": running("web", WEB, stopped_by_user=True, stopped_hash=WEB.spec_hash())},
        {"id-web"},
        [("halt", "web")],
        id="stopped by the user, still running (a start was in flight) -> halt",
    ),
    pytest.param(
        {"web": bad("web")},
        {"web": running("web", WEB, stopped_by_user=True, stopped_hash=WEB.spec_hash())},
        {"id-web"},
        [("halt", "web")],
        id="stopped by the user, manifest gone invalid, still running -> halt",
    ),
    pytest.param(
        {"web": ok(sf("web", "/bin/edited", 8080))},
        {"web": running("web", WEB, stopped_by_user=True, stopped_hash=WEB.spec_hash())},
        {"id-web"},
        [("replace", "web")],
        id="stopped by the user, then edited -> the edit wins",
    ),
    pytest.param(
        {"web": ok(WEB)},
        {"web": Record("web", stopped_by_user=True, stopped_hash=WEB.spec_hash())},
        set(),
        [],
        id="stopped by the user, not running -> nothing",
    ),
    pytest.param(
        {"web": ok(WEB)}, {"web": running("web", WEB)}, {"id-web"}, [], id="same spec -> nothing"
    ),
    pytest.param(
        {"web": ok(sf("web", "/bin/httpd", 9090))},
        {"web": running("web", WEB)},
        {"id-web"},
        [("update-ports", "web")],
        id="only ports changed -> update in place",
    ),
    pytest.param(
        {"web": ok(sf("web", "/bin/other", 8080))},
        {"web": running("web", WEB)},
        {"id-web"},
        [("replace", "web")],
        id="command changed -> replace",
    ),
    pytest.param(
        {}, {"web": running("web", WEB)}, {"id-web"}, [("stop", "web")], id="removed -> stop"
    ),
    pytest.param(
        {}, {"web": Record("web")}, set(), [("forget", "web")], id="removed, not running -> forget"
    ),
    pytest.param(
        {"web": bad("web")},
        {"web": running("web", WEB)},
        {"id-web"},
        [],
        id="invalid -> last good keeps running",
    ),
    pytest.param({"web": bad("web")}, {}, set(), [], id="invalid and never ran -> nothing"),
    pytest.param(
        {"web": ok(WEB)},
        {"web": running("web", WEB)},
        set(),
        [("start", "web")],
        id="killed behind our back -> started again",
    ),
    pytest.param(
        {"web": ok(WEB)},
        {"web": Record("web", stopped_by_user=True, stopped_hash=WEB.spec_hash())},
        set(),
        [],
        id="stopped by the user -> stays stopped",
    ),
    pytest.param(
        {"web": ok(sf("web", "/bin/new", 8080))},
        {"web": Record("web", stopped_by_user=True, stopped_hash=WEB.spec_hash())},
        set(),
        [("start", "web")],
        id="stopped, then the manifest changed -> started",
    ),
    pytest.param(
        {"web": ok(WEB)},
        {
            "web": Record(
                "web", applied=WEB, exit_code=1, exited_hash=WEB.spec_hash(), backoff_until=NOW + 5
            )
        },
        set(),
        [],
        id="crashed, in back-off -> wait",
    ),
    pytest.param(
        {"web": ok(WEB)},
        {
            "web": Record(
                "web", applied=WEB, exit_code=1, exited_hash=WEB.spec_hash(), backoff_until=NOW - 1
            )
        },
        set(),
        [("start", "web")],
        id="crashed, back-off over -> restart",
    ),
    pytest.param(
        {"job": ok(sf("job", restart="on-failure"))},
        {
            "job": Record(
                "job", exit_code=0, exited_hash=sf("job", restart="on-failure").spec_hash()
            )
        },
        set(),
        [],
        id="on-failure, exit 0 -> done",
    ),
    pytest.param(
        {"job": ok(sf("job", restart="on-failure"))},
        {
            "job": Record(
                "job", exit_code=3, exited_hash=sf("job", restart="on-failure").spec_hash()
            )
        },
        set(),
        [("start", "job")],
        id="on-failure, exit 3 -> restart",
    ),
    pytest.param(
        {"job": ok(sf("job", restart="never"))},
        {"job": Record("job", exit_code=3, exited_hash=sf("job", restart="never").spec_hash())},
        set(),
        [],
        id="never -> done, whatever the code",
    ),
    pytest.param(
        {"job": ok(sf("job", "/bin/fixed", restart="never"))},
        {"job": Record("job", exit_code=3, exited_hash=sf("job", restart="never").spec_hash())},
        set(),
        [("start", "job")],
        id="never, but the manifest changed -> start the new one",
    ),
    pytest.param(
        {"web": ok(WEB)},
        {
            "web": Record(
                "web", failure="port in use", failed_hash=WEB.spec_hash(), backoff_until=NOW + 9
            )
        },
        set(),
        [],
        id="failed start in back-off -> wait",
    ),
    pytest.param(
        {"web": ok(WEB)},
        {"web": Record("web", in_flight=True)},
        set(),
        [],
        id="an action in flight -> leave it alone",
    ),
]


@pytest.mark.parametrize(("desired", "records", "live", "expected"), CASES)
def test_plan(
    desired: dict[str, Manifest],
    records: dict[str, Record],
    live: set[str],
    expected: list[tuple[str, str]],
) -> None:
    assert kinds(plan(desired, records, live, NOW)) == expected


@pytest.mark.parametrize(("desired", "records", "live", "expected"), CASES)
def test_a_round_of_each_name_alone_plans_as_a_round_of_all(
    desired: dict[str, Manifest],
    records: dict[str, Record],
    live: set[str],
    expected: list[tuple[str, str]],
) -> None:
    # The work queue plans the names that changed; for each name, what it
    # decides must be what a full round decides for it.
    alone = [
        action
        for name in sorted(set(desired) | set(records))
        for action in plan(desired, records, live, NOW, names={name})
    ]
    assert kinds(alone) == expected


def test_a_round_plans_only_its_names() -> None:
    db = sf("db", "/bin/db")
    desired = {"web": ok(WEB), "db": ok(db)}
    records = {"gone": running("gone", sf("gone"))}
    live = {"id-gone"}
    assert kinds(plan(desired, records, live, NOW, names={"db"})) == [("start", "db")]
    assert kinds(plan(desired, records, live, NOW, names={"gone"})) == [("stop", "gone")]
    assert plan(desired, records, live, NOW, names=set()) == []
    # A name neither wanted nor known (a file reported twice, removed) has nothing to do.
    assert plan(desired, records, live, NOW, names={"never"}) == []


def test_a_round_of_one_name_sees_the_ports_every_running_container_holds() -> None:
    api = sf("api", "/bin/api", 8080)
    records = {"web": running("web", WEB)}
    actions = plan({"web": ok(WEB), "api": ok(api)}, records, {"id-web"}, NOW, names={"api"})
    assert kinds(actions) == [("conflict", "api")]
    # A running container planned earlier in the round that lets its port
    # go frees it for the names after it (a later one: at its next round).
    zeta = sf("zeta", "/bin/api", 8080)
    moved = sf("web", "/bin/httpd", 9090)
    both = plan({"web": ok(moved), "zeta": ok(zeta)}, records, {"id-web"}, NOW)
    assert kinds(both) == [("update-ports", "web"), ("start", "zeta")]
    both = plan({"web": ok(moved), "api": ok(api)}, records, {"id-web"}, NOW)
    assert kinds(both) == [("conflict", "api"), ("update-ports", "web")]


def test_a_changed_file_layer_replaces_the_container() -> None:
    changed = Manifest("web", "/m/web.toml", WEB, layer_key="tool:12:2048:999")
    record = running("web", WEB, applied_key="tool:12:1024:998")
    (action,) = plan({"web": changed}, {"web": record}, {"id-web"}, NOW)
    assert action.kind is Kind.REPLACE
    assert action.layer_key == "tool:12:2048:999"
    same = Manifest("web", "/m/web.toml", WEB, layer_key="tool:12:1024:998")
    assert plan({"web": same}, {"web": record}, {"id-web"}, NOW) == []


def test_the_running_container_keeps_its_port_and_the_newcomer_gets_a_conflict() -> None:
    other = sf("api", "/bin/api", 8080)
    actions = plan(
        {"web": ok(WEB), "api": ok(other)}, {"web": running("web", WEB)}, {"id-web"}, NOW
    )
    assert kinds(actions) == [("conflict", "api")]
    assert actions[0].reason == ("host port 8080/tcp of /m/api.toml is already used by /m/web.toml")


def test_two_newcomers_on_one_port_first_name_wins() -> None:
    actions = plan({"b": ok(sf("b", "/x", 80)), "a": ok(sf("a", "/x", 80))}, {}, set(), NOW)
    assert kinds(actions) == [("start", "a"), ("conflict", "b")]


def test_ports_on_different_addresses_or_protocols_do_not_clash() -> None:
    udp = Squishfile(name="dns", command="/x", ports=(Port(53, 8053, "udp"),))
    tcp = Squishfile(name="web", command="/x", ports=(Port(80, 8053, "tcp"),))
    lan = Squishfile(name="lan", command="/x", ports=(Port(80, 8053, "tcp", "10.1.1.1"),))
    loop = Squishfile(name="loop", command="/x", ports=(Port(80, 8053, "tcp", "127.0.0.1"),))
    desired = {s.name: ok(s) for s in (udp, tcp, lan)}
    assert kinds(plan(desired, {}, set(), NOW)) == [
        ("start", "dns"),
        ("start", "lan"),
        # No host_ip means the runtime's default address, which the plan
        # does not know: it clashes with any address, to be safe.
        ("conflict", "web"),
    ]
    assert kinds(plan({s.name: ok(s) for s in (lan, loop)}, {}, set(), NOW)) == [
        ("start", "lan"),
        ("start", "loop"),
    ]


def test_a_start_that_restarts_a_crash_says_so() -> None:
    record = Record("web", applied=WEB, exit_code=1, exited_hash=WEB.spec_hash())
    (action,) = plan({"web": ok(WEB)}, {"web": record}, set(), NOW)
    assert action.kind is Kind.START and action.restart


@pytest.mark.parametrize(
    ("crashes", "delay"), [(1, 0), (2, 10), (3, 20), (4, 40), (6, 160), (7, 300), (30, 300)]
)
def test_backoff_is_immediate_then_doubles_to_the_cap(crashes: int, delay: float) -> None:
    assert Backoff(initial=10, maximum=300).delay(crashes) == delay


def test_stop_action_carries_the_container_id(tmp_path: Path) -> None:
    (action,) = plan({}, {"web": running("web", WEB)}, {"id-web"}, NOW)
    assert action.container_id == "id-web"
