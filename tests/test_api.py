"""The JSON API (squish.daemon.api) against the real Reconciler on the fake runtime.

Most routes are driven in-process through httpx's ASGI transport. That
transport only returns once the app has finished a response, so the
streaming tests end their stream through the server's shutdown path (the
same one ``serve`` uses) or run over a real unix socket, where the client
reads while the server writes. Every answer is checked against its shape in
squish.api_schema (unknown fields refused), the definition the client reads.
"""

from __future__ import annotations

import json
import signal
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette

from squish import api_schema as schema
from squish.cli.client import Client
from squish.daemon.api import make_app, serve
from squish.daemon.openapi import adapter
from squish.errors import LayerError, PortInUse, RuntimeFailure, SquishError
from tests.control_plane import Plane, real_plane, running, squishfile, until

pytestmark = pytest.mark.anyio

MANIFEST = """\
[run]
command = "/bin/sh"
args = ["-c", "sleep 1000"]

[env]
GREETING = "hello"

[[ports]]
container = 80
host = 8080
"""


def conforms(shape: Any, data: object) -> Any:
    """``data`` as the client would read it, failing if it is not of ``shape``."""
    return adapter(shape).validate_python(data)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    async with real_plane(tmp_path) as control:
        yield control


@pytest.fixture
def app(plane: Plane) -> Starlette:
    return make_app(plane.control)


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://squish") as client:
        yield client


def end_streams(app: Starlette) -> None:
    """What serve() does on shutdown: end every open stream."""
    app.state.drain.close()


async def wait_for(condition: Callable[[], object]) -> None:
    await until(condition)


async def create(api: httpx.AsyncClient, name: str, text: str = MANIFEST) -> dict[str, Any]:
    response = await api.post("/v1/containers", json={"name": name, "manifest": text})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = conforms(schema.Container, response.json())
    return answer


# -- plain routes ---------------------------------------------------------------


async def test_status(api: httpx.AsyncClient, plane: Plane) -> None:
    plane.write("web", squishfile())
    await running(plane, "web")
    response = await api.get("/v1/status")
    assert response.status_code == 200
    status = conforms(schema.DaemonStatus, response.json())
    assert status["containers"]["running"] == 1
    assert status["containers"]["stopped"] == 0
    assert status["manifests"] == str(plane.manifests)


async def test_list_containers(api: httpx.AsyncClient, plane: Plane) -> None:
    plane.write("web", squishfile(port=8080))
    plane.write("broken", "[run]\n")
    await running(plane, "web")
    response = await api.get("/v1/containers")
    assert response.status_code == 200
    by_name = {item["name"]: item for item in conforms(list[schema.Container], response.json())}
    assert by_name["web"]["phase"] == "running"
    assert by_name["web"]["id"] == plane.ids()["web"]
    # A port bound to the default address says which address that is.
    assert by_name["web"]["ports"] == [
        {"host": 8080, "container": 80, "protocol": "tcp", "host_ip": "127.0.0.1"}
    ]
    assert by_name["broken"]["phase"] == "invalid"
    assert by_name["broken"]["id"] is None
    assert "run.command: is required" in by_name["broken"]["manifest_error"]


async def test_networks_and_their_members(api: httpx.AsyncClient, plane: Plane) -> None:
    plane.write("a", 'networks = ["n1"]\n' + squishfile())
    plane.write("b", 'networks = ["n1", "n2"]\n' + squishfile())
    plane.write("c", 'networks = ["n3"]\nnetwork = "none"\n' + squishfile())  # invalid
    plane.write("d", squishfile())
    await running(plane, "a")
    await running(plane, "b")
    response = await api.get("/v1/networks")
    assert response.status_code == 200
    networks = {n["name"]: n for n in conforms(list[schema.Network], response.json())}
    assert set(networks) == {"n1", "n2"}  # an invalid squishfile names nothing
    n1 = networks["n1"]
    assert n1["containers"] == ["a", "b"]
    assert n1["subnet"] == "10.89.0.0/24" and n1["gateway"] == "10.89.0.1"
    # In the order they joined: a and b start at once.
    on_n1 = {m["name"]: m["address"] for m in n1["members"]}
    assert sorted(on_n1) == ["a", "b"]
    rows = {row["name"]: row for row in (await api.get("/v1/containers")).json()}
    assert rows["b"]["networks"] == {
        "n1": on_n1["b"],
        "n2": networks["n2"]["members"][0]["address"],
    }
    assert rows["d"]["networks"] == {}
    one = await api.get("/v1/networks/n2")
    assert conforms(schema.Network, one.json()) == networks["n2"]
    scrape = plane.metrics.exposition().decode()
    assert 'squish_network_containers{network="n1"} 2.0' in scrape
    assert 'squish_network_containers{network="n2"} 1.0' in scrape
    # Stopped, b leaves its networks; n2 stays while b's squishfile names it.
    assert (await api.post("/v1/containers/b/stop")).status_code == 200
    n2 = conforms(schema.Network, (await api.get("/v1/networks/n2")).json())
    assert n2 == {"name": "n2", "subnet": None, "gateway": None, "containers": ["b"], "members": []}
    scrape = plane.metrics.exposition().decode()
    assert 'squish_network_containers{network="n1"} 1.0' in scrape
    assert 'network="n2"' not in scrape
    missing = await api.get("/v1/networks/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no network 'nowhere': no squishfile names it"}
    inspected = (await api.get("/v1/containers/a")).json()
    assert inspected["applied"]["networks"] == ["n1"]


async def test_exec_runs_in_the_running_container_and_answers_its_status(
    api: httpx.AsyncClient, plane: Plane
) -> None:
    from squish.runtime import ExecResult

    plane.write("web", squishfile())
    await running(plane, "web")
    plane.runtime.exec_results["web"] = ExecResult(3, "said something\n", 0.01)
    response = await api.post("/v1/containers/web/exec", json={"command": ["cat", "/x"]})
    assert response.status_code == 200  # the command's failure is in the answer
    result = conforms(schema.ExecResult, response.json())
    assert (result["exit_code"], result["output"]) == (3, "said something\n")
    assert ("exec", plane.ids()["web"]) in plane.runtime.calls
    for bad in ({"command": []}, {"command": "ls"}, {"command": ["a\u0000b"]}, {}):
        refused = await api.post("/v1/containers/web/exec", json=bad)
        assert refused.status_code == 400, bad
        assert "\n" not in refused.json()["error"]
    timeout = await api.post("/v1/containers/web/exec", json={"command": ["ls"], "timeout": -1})
    assert timeout.status_code == 400
    assert (await api.post("/v1/containers/nope/exec", json={"command": ["ls"]})).status_code == 404
    assert (await api.post("/v1/containers/web/stop")).status_code == 200
    stopped = await api.post("/v1/containers/web/exec", json={"command": ["ls"]})
    assert stopped.status_code == 409
    assert stopped.json() == {
        "error": "web is not running (stopped): exec needs a running container"
    }


async def test_create_waits_until_it_runs(api: httpx.AsyncClient, plane: Plane) -> None:
    response = await api.post(
        "/v1/containers", json={"name": "web", "manifest": MANIFEST, "timeout": 12}
    )
    assert response.status_code == 200
    body = conforms(schema.Container, response.json())
    assert body["name"] == "web"
    assert body["phase"] == "running"
    assert body["id"] == plane.ids()["web"]
    assert (plane.manifests / "web.toml").read_text() == MANIFEST


async def test_create_without_wait_applies(api: httpx.AsyncClient, plane: Plane) -> None:
    response = await api.post(
        "/v1/containers", json={"name": "web", "manifest": MANIFEST, "wait": False}
    )
    assert response.status_code == 200
    assert conforms(schema.Container, response.json())["phase"] == "pending"
    await running(plane, "web")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"manifest": ""}', "name: Field required"),
        (b'{"name": "../etc", "manifest": ""}', "name must be letters"),
        (b'{"name": "", "manifest": ""}', "name must be letters"),
        (b'{"name": "web", "manifest": 3}', "manifest: Input should be a valid string"),
        (b'{"name": "web", "manifest": "", "wait": "yes"}', "wait: Input should be a valid"),
        (b'{"name": "web", "manifest": "", "timeout": -1}', "timeout must be between"),
        (b'{"name": "web", "manifest": "", "timeout": true}', "timeout: Input should be"),
        (b'{"name": "web", "manifest": "", "extra": 1}', "extra: unknown field (allowed:"),
        (b'{"name": "web", "manifest": "", "timeout": ' + b"9" * 5000 + b"}", "not usable"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
async def test_create_rejects_bad_requests(
    api: httpx.AsyncClient, plane: Plane, body: bytes, message: str
) -> None:
    response = await api.post("/v1/containers", content=body)
    assert response.status_code == 400
    error = conforms(schema.Error, response.json())["error"]
    assert message in error
    assert "\n" not in error
    assert list(plane.manifests.iterdir()) == []


async def test_create_invalid_manifest_is_400(api: httpx.AsyncClient, plane: Plane) -> None:
    response = await api.post("/v1/containers", json={"name": "web", "manifest": "[run]\n"})
    assert response.status_code == 400
    assert "web.toml:1: run.command: is required" in response.json()["error"]
    assert not (plane.manifests / "web.toml").exists()


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (LayerError("layer python 3.11: not in the layer store"), 400),
        (PortInUse("host port 8080/tcp is already in use"), 409),
        (RuntimeFailure("bwrap failed: no user namespaces"), 409),
    ],
)
async def test_a_failed_create_maps_to_a_status_and_says_what_it_undid(
    api: httpx.AsyncClient, plane: Plane, failure: Exception, status: int
) -> None:
    plane.runtime.fail_next_start("web", failure)  # type: ignore[arg-type]
    response = await api.post("/v1/containers", json={"name": "web", "manifest": MANIFEST})
    assert response.status_code == status
    error = conforms(schema.Error, response.json())["error"]
    assert error.startswith(str(failure))
    assert error.endswith(f"{plane.manifests / 'web.toml'} was removed again")
    assert not (plane.manifests / "web.toml").exists()


async def test_a_failed_replacement_puts_the_previous_version_back(
    api: httpx.AsyncClient, plane: Plane
) -> None:
    first = await create(api, "web")
    plane.runtime.fail_next_start("web", RuntimeFailure("no such command"))
    edited = MANIFEST.replace("hello", "bye")
    response = await api.post("/v1/containers", json={"name": "web", "manifest": edited})
    assert response.status_code == 409
    assert response.json()["error"].startswith("no such command; the previous ")
    assert (plane.manifests / "web.toml").read_text() == MANIFEST
    # The old version was stopped to make room; it runs again.
    await until(lambda: plane.ids().get("web") not in (None, first["id"]))
    detail = (await api.get("/v1/containers/web")).json()
    assert detail["applied"]["env"] == {"GREETING": "hello"}


async def test_unexpected_error_is_one_line_500(
    api: httpx.AsyncClient,
    plane: Plane,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> None:
        raise ValueError("boom\n  with a second line")

    monkeypatch.setattr(plane.control, "containers", broken)
    response = await api.get("/v1/containers")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error == "internal error in the daemon: ValueError: boom with a second line"
    assert "Traceback" not in response.text
    assert "Traceback" in caplog.text  # logged on the daemon's side instead


async def test_unknown_route_and_method_answer_json(api: httpx.AsyncClient) -> None:
    response = await api.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}
    response = await api.put("/v1/containers")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}


async def test_inspect(api: httpx.AsyncClient, plane: Plane) -> None:
    created = await create(api, "web")
    response = await api.get("/v1/containers/web")
    assert response.status_code == 200
    detail = conforms(schema.ContainerDetail, response.json())
    assert detail["id"] == created["id"]
    assert detail["phase"] == "running"
    assert detail["applied"] is not None
    assert detail["applied"]["env"] == {"GREETING": "hello"}
    assert detail["applied"]["args"] == ["-c", "sleep 1000"]
    assert detail["desired"] == detail["applied"]
    assert detail["layers"] == {"rootfs": "/rootfs", "mounts": []}
    assert detail["log"] == str(plane.logs / "web.log")
    assert detail["stopped_by_user"] is False
    # By a unique id prefix, too.
    response = await api.get(f"/v1/containers/{created['id'][:5]}")
    assert response.json()["name"] == "web"
    response = await api.get("/v1/containers/nope")
    assert response.status_code == 404
    assert conforms(schema.Error, response.json())["error"].startswith("no such container 'nope'")


async def test_inspect_an_invalid_manifest(api: httpx.AsyncClient, plane: Plane) -> None:
    plane.write("broken", "[run]\n")
    await until(lambda: plane.phase("broken") == "invalid")
    detail = conforms(schema.ContainerDetail, (await api.get("/v1/containers/broken")).json())
    assert detail["applied"] is None and detail["desired"] is None
    assert "run.command: is required" in (detail["last_error"] or "")


async def test_stop_takes_an_exact_name_or_a_unique_id_prefix(
    api: httpx.AsyncClient, plane: Plane
) -> None:
    for name in ("site", "sdk", "s"):
        await create(api, name, squishfile())
    # "s" is a name: only that one stops, never every name starting with s.
    response = await api.post("/v1/containers/s/stop")
    assert response.status_code == 200
    assert conforms(schema.Container, response.json())["phase"] == "stopped"
    assert sorted(plane.ids()) == ["sdk", "site"]
    sdk_id = plane.ids()["sdk"]
    response = await api.post(f"/v1/containers/{sdk_id[:8]}/stop")
    assert response.json()["name"] == "sdk"
    assert sorted(plane.ids()) == ["site"]


async def test_an_ambiguous_id_prefix_touches_nothing(api: httpx.AsyncClient, plane: Plane) -> None:
    ids: dict[str, str] = {}
    # Until two ids share a first hex digit (likely within a few).
    for n in range(40):
        ids[f"c{n}"] = (await create(api, f"c{n}", squishfile()))["id"]
        firsts = [i[0] for i in ids.values()]
        if len(set(firsts)) < len(firsts):
            break
    digit = next(d for d in "0123456789abcdef" if sum(i[0] == d for i in ids.values()) > 1)
    sharing = sorted(name for name, i in ids.items() if i[0] == digit)
    response = await api.post(f"/v1/containers/{digit}/stop")
    assert response.status_code == 409
    error = conforms(schema.Error, response.json())
    assert error["candidates"] == sharing
    assert "is ambiguous" in error["error"]
    assert set(plane.ids()) == set(ids)  # nothing stopped


async def test_stop_and_start_are_idempotent(api: httpx.AsyncClient, plane: Plane) -> None:
    first = await create(api, "web")
    assert (await api.post("/v1/containers/web/stop")).json()["phase"] == "stopped"
    again = await api.post("/v1/containers/web/stop")
    assert again.status_code == 200
    assert again.json()["phase"] == "stopped"
    response = await api.post("/v1/containers/web/start", json={"timeout": 5})
    assert response.status_code == 200
    started = conforms(schema.Container, response.json())
    assert started["phase"] == "running"
    assert started["id"] != first["id"]
    # Starting a running container changes nothing; the body is optional.
    response = await api.post("/v1/containers/web/start")
    assert response.status_code == 200
    assert response.json()["id"] == started["id"]
    response = await api.post("/v1/containers/nope/start")
    assert response.status_code == 404


async def test_a_stopped_container_stays_stopped_until_start_or_an_edit(
    api: httpx.AsyncClient, plane: Plane
) -> None:
    await create(api, "web")
    await api.post("/v1/containers/web/stop")
    await anyio.sleep(1.2)  # two resyncs
    assert "web" not in plane.ids()
    plane.write("web", MANIFEST.replace("hello", "edited"))
    await running(plane, "web")


async def test_stopping_a_crash_looping_container_ends_the_loop(
    api: httpx.AsyncClient, plane: Plane
) -> None:
    await create(api, "web")
    plane.runtime.crash(plane.ids()["web"])
    await api.post("/v1/containers/web/stop")
    await anyio.sleep(1.2)
    assert plane.phase("web") == "stopped"
    assert "web" not in plane.ids()


async def test_delete(api: httpx.AsyncClient, plane: Plane) -> None:
    created = await create(api, "web")
    response = await api.delete("/v1/containers/web")
    assert response.status_code == 200
    assert conforms(schema.Container, response.json())["id"] == created["id"]
    assert not (plane.manifests / "web.toml").exists()
    assert plane.ids() == {}
    response = await api.delete("/v1/containers/web")
    assert response.status_code == 404


async def test_names_in_paths_are_checked(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/containers/-web")
    assert response.status_code == 400
    assert "container name or id must be letters" in response.json()["error"]


async def test_openapi_document_names_every_route(api: httpx.AsyncClient, app: Starlette) -> None:
    response = await api.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    served = {(route.path, method) for route in app.routes for method in route.methods or ()}
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    assert {(path, method) for path, method in served if method != "HEAD"} == documented
    container = document["components"]["schemas"]["Container"]
    assert container["additionalProperties"] is False
    assert set(container["required"]) == set(schema.Container.__annotations__)


# -- logs -----------------------------------------------------------------------


async def test_logs_whole_and_tail(api: httpx.AsyncClient, plane: Plane) -> None:
    await create(api, "web")
    plane.log("web").write_bytes(b"".join(b"line %d\n" % i for i in range(1, 11)))
    response = await api.get("/v1/containers/web/logs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.splitlines()[0] == "line 1"
    assert len(response.text.splitlines()) == 10
    response = await api.get("/v1/containers/web/logs", params={"tail": 3})
    assert response.text == "line 8\nline 9\nline 10\n"
    response = await api.get("/v1/containers/web/logs", params={"tail": 0})
    assert response.text == ""
    response = await api.get("/v1/containers/web/logs", params={"tail": 100})
    assert len(response.text.splitlines()) == 10


async def test_logs_tail_of_a_large_log(api: httpx.AsyncClient, plane: Plane) -> None:
    await create(api, "web")
    lines = [b"%06d %s\n" % (i, b"x" * 100) for i in range(5000)]  # several read blocks
    plane.log("web").write_bytes(b"".join(lines))
    response = await api.get("/v1/containers/web/logs", params={"tail": 2000})
    assert response.content == b"".join(lines[-2000:])


async def test_logs_errors(api: httpx.AsyncClient, plane: Plane) -> None:
    await create(api, "web")
    # Known, nothing written yet: an empty log, not an error.
    response = await api.get("/v1/containers/web/logs")
    assert response.status_code == 200
    assert response.text == ""
    response = await api.get("/v1/containers/nope/logs")
    assert response.status_code == 404
    assert response.json()["error"].startswith("no such container 'nope'")
    plane.log("web").write_text("hello\n")
    response = await api.get("/v1/containers/web/logs", params={"tail": "-1"})
    assert response.status_code == 400
    assert "tail must be a whole number" in response.json()["error"]
    response = await api.get("/v1/containers/web/logs", params={"follow": "maybe"})
    assert response.status_code == 400


async def test_logs_follow_sees_appends_and_rotation(
    api: httpx.AsyncClient, app: Starlette, plane: Plane
) -> None:
    await create(api, "web")
    log = plane.log("web")
    log.write_bytes(b"old 1\nold 2\n")
    result: list[httpx.Response] = []

    async def follow() -> None:
        params = {"follow": "1", "tail": "1"}
        result.append(await api.get("/v1/containers/web/logs", params=params))

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.3)
        with log.open("ab") as file:
            file.write(b"appended\n")
        await anyio.sleep(0.3)
        # Rotate as RotatingLog does: the last write lands in the old file,
        # which is renamed; a new file takes its place.
        with log.open("ab") as file:
            file.write(b"last before rotation\n")
        log.rename(log.with_name("web.log.1"))
        log.write_bytes(b"after rotation\n")
        await anyio.sleep(0.3)
        log.write_bytes(b"")  # truncated in place
        await anyio.sleep(0.3)
        with log.open("ab") as file:
            file.write(b"after truncation\n")
        await anyio.sleep(0.3)
        end_streams(app)
    assert result[0].status_code == 200
    assert result[0].text == (
        "old 2\nappended\nlast before rotation\nafter rotation\nafter truncation\n"
    )


# -- events -----------------------------------------------------------------------


async def test_events_stream_ndjson(api: httpx.AsyncClient, plane: Plane) -> None:
    result: list[httpx.Response] = []

    async def listen() -> None:
        result.append(await api.get("/v1/events"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await wait_for(lambda: plane.reconciler.events.listening)
        plane.write("web", squishfile())
        plane.write("db", "[run]\n")
        await running(plane, "web")
        await until(lambda: plane.phase("db") == "invalid")
        plane.reconciler.close()  # the daemon ends the subscription: the stream ends
    response = result[0]
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    events = [conforms(schema.Event, json.loads(line)) for line in response.text.splitlines()]
    started = next(e for e in events if e["kind"] == "container.started")
    assert started["name"] == "web"
    assert started["id"] == plane.ids()["web"]
    invalid = next(e for e in events if e["kind"] == "manifest.invalid")
    assert invalid["name"] == "db"
    assert invalid["file"] == str(plane.manifests / "db.toml")


# -- over a real unix socket --------------------------------------------------------


async def test_serve_on_unix_socket(tmp_path: Path, app: Starlette, plane: Plane) -> None:
    plane.write("web", squishfile())
    await running(plane, "web")
    path = tmp_path / "api.sock"
    handler_before = signal.getsignal(signal.SIGINT)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(serve, app, path)
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            # uvicorn left the daemon's signal handling alone.
            assert signal.getsignal(signal.SIGINT) is handler_before

            def list_names() -> list[str]:
                with Client(path) as client:
                    return [item["name"] for item in client.containers()]

            assert await anyio.to_thread.run_sync(list_names) == ["web"]
            tg.cancel_scope.cancel()
    assert not path.exists()


async def test_serve_replaces_a_stale_socket_and_refuses_a_live_one(
    tmp_path: Path, app: Starlette
) -> None:
    import socket

    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # bound, never listening: a dead daemon's leftover
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(serve, app, path)
            with pytest.raises(SquishError, match="already listens on"):
                await serve(app, path)
            tg.cancel_scope.cancel()


async def test_streams_over_a_socket(tmp_path: Path, app: Starlette, plane: Plane) -> None:
    """Followed logs and events arrive while the response is still open."""
    plane.write("web", squishfile())
    await running(plane, "web")
    log = plane.log("web")
    log.write_bytes(b"first\n")
    path = tmp_path / "api.sock"
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    server_scope = anyio.CancelScope()

    async def run_server(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with server_scope:
            await serve(app, path, task_status=task_status)

    with anyio.fail_after(20):
        async with (
            anyio.create_task_group() as tg,
            httpx.AsyncClient(transport=transport, base_url="http://squish") as client,
        ):
            await tg.start(run_server)

            async with client.stream(
                "GET", "/v1/containers/web/logs", params={"follow": "1"}
            ) as response:
                chunks = response.aiter_bytes()
                assert await chunks.__anext__() == b"first\n"
                with log.open("ab") as file:
                    file.write(b"second\n")
                assert await chunks.__anext__() == b"second\n"
                await chunks.aclose()

            async with client.stream("GET", "/v1/events") as response:
                await wait_for(lambda: plane.reconciler.events.listening)
                plane.runtime.crash(plane.ids()["web"], 3)
                lines = response.aiter_lines()
                assert json.loads(await lines.__anext__())["message"] == "exited with code 3"
                await lines.aclose()
            # The client went away: the subscription is closed.
            await wait_for(lambda: plane.reconciler.events.listening == 0)

            # Shutting down with a stream open ends the stream instead of hanging.
            async with client.stream("GET", "/v1/events") as response:
                await wait_for(lambda: plane.reconciler.events.listening == 1)
                server_scope.cancel()
                assert [line async for line in response.aiter_lines()] == []
    assert not path.exists()


async def test_serve_cancelled_while_starting_returns(tmp_path: Path, app: Starlette) -> None:
    path = tmp_path / "api.sock"
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, app, path)
            await anyio.lowlevel.checkpoint()  # serve() listens; uvicorn has not started
            tg.cancel_scope.cancel()
    assert not path.exists()
