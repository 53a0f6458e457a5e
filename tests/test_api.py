"""The JSON API (squish.api) against a fake ControlPlane.

Most routes are driven in-process through httpx's ASGI transport. That
transport only returns once the app has finished a response, so the
streaming tests end their stream through the server's shutdown path (the
same one ``serve`` uses) or run over a real unix socket, where the client
reads while the server writes.
"""

from __future__ import annotations

import json
import signal
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from fake_control_plane import FakeControlPlane
from starlette.applications import Starlette

from squish.api import make_app, serve
from squish.client import Client
from squish.control import Event, Phase
from squish.errors import LayerError, PortInUse, RuntimeFailure, SquishError
from squish.runtime import PortForward

pytestmark = pytest.mark.anyio

MANIFEST = """\
[run]
command = "/bin/sh"
args = ["-c", "sleep 1000"]

[[ports]]
container = 80
host = 8080
"""


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeControlPlane]:
    control = FakeControlPlane(tmp_path)
    yield control
    control.close()


@pytest.fixture
def app(fake: FakeControlPlane) -> Starlette:
    return make_app(fake)


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://squish") as client:
        yield client


def end_streams(app: Starlette) -> None:
    """What serve() does on shutdown: end every open stream."""
    app.state.drain.close()


async def wait_for(condition: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.01)


# -- plain routes ---------------------------------------------------------------


async def test_status(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    fake.add("web")
    response = await api.get("/v1/status")
    assert response.status_code == 200
    assert response.json()["phases"] == {"running": 1}


async def test_list_containers(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    fake.add("web", ports=(PortForward(host=8080, container=80),))
    fake.add("broken", Phase.INVALID, manifest_error="broken.toml: run: is required")
    response = await api.get("/v1/containers")
    assert response.status_code == 200
    by_name = {item["name"]: item for item in response.json()}
    assert by_name["web"]["phase"] == "running"
    assert by_name["web"]["ports"] == [
        {"host": 8080, "container": 80, "protocol": "tcp", "host_ip": None}
    ]
    assert by_name["broken"]["id"] is None
    assert by_name["broken"]["manifest_error"] == "broken.toml: run: is required"


async def test_create_waits(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    response = await api.post(
        "/v1/containers", json={"name": "web", "manifest": MANIFEST, "timeout": 12}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "web"
    assert body["phase"] == "running"
    assert len(body["id"]) == 64
    assert fake.calls == [("create", "web", MANIFEST.encode(), 12.0)]


async def test_create_without_wait_applies(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    response = await api.post(
        "/v1/containers", json={"name": "web", "manifest": MANIFEST, "wait": False}
    )
    assert response.status_code == 200
    assert response.json()["phase"] == "pending"
    assert fake.calls == [("apply", "web", MANIFEST.encode())]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"manifest": ""}', "needs 'name'"),
        (b'{"name": "../etc", "manifest": ""}', "name must be letters"),
        (b'{"name": "", "manifest": ""}', "name must be letters"),
        (b'{"name": "web", "manifest": 3}', "'manifest' must be the squishfile's TOML text"),
        (b'{"name": "web", "manifest": "", "wait": "yes"}', "'wait' must be true or false"),
        (b'{"name": "web", "manifest": "", "timeout": -1}', "timeout must be between"),
        (b'{"name": "web", "manifest": "", "timeout": true}', "timeout must be a number"),
        (b'{"name": "web", "manifest": "", "extra": 1}', "unknown field 'extra'"),
    ],
)
async def test_create_rejects_bad_requests(
    api: httpx.AsyncClient, fake: FakeControlPlane, body: bytes, message: str
) -> None:
    response = await api.post("/v1/containers", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error
    assert "\n" not in error
    assert fake.calls == []


async def test_create_invalid_manifest_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/containers", json={"name": "web", "manifest": "[run]\n"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("web.toml: run.command: is required")


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (LayerError("layer python 3.11: not in the layer store"), 400),
        (PortInUse("host port 8080/tcp is already in use"), 409),
        (RuntimeFailure("bwrap failed: no user namespaces"), 409),
        (SquishError("the reconciler is shutting down"), 500),
    ],
)
async def test_errors_map_to_statuses(
    api: httpx.AsyncClient, fake: FakeControlPlane, failure: Exception, status: int
) -> None:
    fake.fail_next = failure
    response = await api.post("/v1/containers", json={"name": "web", "manifest": MANIFEST})
    assert response.status_code == status
    assert response.json() == {"error": str(failure)}


async def test_unexpected_error_is_one_line_500(
    api: httpx.AsyncClient, fake: FakeControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next = ValueError("boom\n  with a second line")
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


async def test_inspect(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    await api.post("/v1/containers", json={"name": "web", "manifest": MANIFEST})
    response = await api.get("/v1/containers/web")
    assert response.status_code == 200
    assert response.json()["manifest"] == MANIFEST
    response = await api.get("/v1/containers/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "no container named 'nope'"}


async def test_stop_by_prefix(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    web = fake.add("web")
    fake.add("worker")
    fake.add("db")
    response = await api.post("/v1/containers/w/stop")
    assert response.status_code == 200
    assert sorted(item["name"] for item in response.json()) == ["web", "worker"]
    assert web.id is not None
    db_id = fake.statuses["db"].id
    assert db_id is not None
    response = await api.post(f"/v1/containers/{db_id[:7]}/stop")
    assert [item["name"] for item in response.json()] == ["db"]
    response = await api.post("/v1/containers/zzz/stop")
    assert response.status_code == 200
    assert response.json() == []


async def test_start(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    old = fake.add("web", Phase.STOPPED, id="0" * 64)
    response = await api.post("/v1/containers/web/start", json={"timeout": 5})
    assert response.status_code == 200
    assert response.json()["phase"] == "running"
    assert response.json()["id"] != old.id
    assert fake.calls == [("start", "web", 5.0)]
    # The body is optional.
    response = await api.post("/v1/containers/web/start")
    assert response.status_code == 200
    response = await api.post("/v1/containers/nope/start")
    assert response.status_code == 404


async def test_delete(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    fake.add("web")
    response = await api.delete("/v1/containers/web")
    assert response.status_code == 200
    assert response.json()["name"] == "web"
    assert "web" not in fake.statuses
    response = await api.delete("/v1/containers/web")
    assert response.status_code == 404


async def test_names_in_paths_are_checked(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/containers/-web")
    assert response.status_code == 400
    assert "name must be letters" in response.json()["error"]


# -- logs -----------------------------------------------------------------------


async def test_logs_whole_and_tail(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    fake.add("web")
    fake.log_path("web").write_bytes(b"".join(b"line %d\n" % i for i in range(1, 11)))
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


async def test_logs_tail_of_a_large_log(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    fake.add("web")
    lines = [b"%06d %s\n" % (i, b"x" * 100) for i in range(5000)]  # several read blocks
    fake.log_path("web").write_bytes(b"".join(lines))
    response = await api.get("/v1/containers/web/logs", params={"tail": 2000})
    assert response.content == b"".join(lines[-2000:])


async def test_logs_errors(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    fake.add("web")
    response = await api.get("/v1/containers/web/logs")
    assert response.status_code == 200
    assert response.text == ""  # known, nothing written yet
    response = await api.get("/v1/containers/nope/logs")
    assert response.status_code == 404
    assert response.json() == {"error": "no such container 'nope'"}
    fake.log_path("web").write_text("hello\n")
    response = await api.get("/v1/containers/web/logs", params={"tail": "-1"})
    assert response.status_code == 400
    assert "tail must be a whole number" in response.json()["error"]
    response = await api.get("/v1/containers/web/logs", params={"follow": "maybe"})
    assert response.status_code == 400


async def test_logs_follow_sees_appends_and_rotation(
    api: httpx.AsyncClient, app: Starlette, fake: FakeControlPlane
) -> None:
    fake.add("web")
    log = fake.log_path("web")
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


async def test_events_stream_ndjson(api: httpx.AsyncClient, fake: FakeControlPlane) -> None:
    result: list[httpx.Response] = []

    async def listen() -> None:
        result.append(await api.get("/v1/events"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await wait_for(lambda: fake.subscribers)
        fake.publish(Event("container.started", "web", "started abc", at=1.5, fields={"pid": 7}))
        fake.publish(Event("manifest.invalid", "db", "db.toml: run: is required", at=2.0))
        fake.close()  # the daemon ends the subscription: the stream ends
    response = result[0]
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [
        {"kind": "container.started", "name": "web", "message": "started abc", "at": 1.5, "pid": 7},
        {
            "kind": "manifest.invalid",
            "name": "db",
            "message": "db.toml: run: is required",
            "at": 2.0,
        },
    ]


# -- over a real unix socket --------------------------------------------------------


async def test_serve_on_unix_socket(tmp_path: Path, app: Starlette, fake: FakeControlPlane) -> None:
    fake.add("web")
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
            with pytest.raises(SquishError, match="already listening"):
                await serve(app, path)
            tg.cancel_scope.cancel()


async def test_streams_over_a_socket(
    tmp_path: Path, app: Starlette, fake: FakeControlPlane
) -> None:
    """Followed logs and events arrive while the response is still open."""
    fake.add("web")
    log = fake.log_path("web")
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
                await wait_for(lambda: fake.subscribers)
                fake.publish(Event("container.exited", "web", "exited with 3", at=3.0))
                lines = response.aiter_lines()
                assert json.loads(await lines.__anext__())["message"] == "exited with 3"
                await lines.aclose()
            # The client went away: the subscription is closed.
            await wait_for(lambda: fake.live_subscribers() == 0)

            # Shutting down with a stream open ends the stream instead of hanging.
            async with client.stream("GET", "/v1/events") as response:
                await wait_for(lambda: fake.live_subscribers() == 1)
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
