"""The logs route of the API (squish.daemon.api) over the real reconciler on the fake runtime.

Containers "run" in ``FakeRuntime``; their logs are written by the real
``RotatingLog`` (with its time index) at the path the reconciler names, with
a clock the test sets, so every line has a known time. Requests go through
httpx's ASGI transport, which returns once the response is complete: a
followed log ends by ``--until`` or by the server's shutdown path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from squish.daemon.api import make_app
from squish.daemon.control import DaemonControl
from squish.reconcile.reconciler import Reconciler
from squish.reconcile.status import Phase
from squish.runtime.logs import RotatingLog
from tests.control_plane import real_plane

pytestmark = pytest.mark.anyio

T0 = 1_796_119_200  # 2026-12-01T10:00:00Z
MANIFEST = b'[run]\ncommand = "/bin/app"\n'


@dataclass
class Daemon:
    reconciler: Reconciler
    app: Starlette
    api: httpx.AsyncClient

    @property
    def control(self) -> DaemonControl:
        return DaemonControl(self.reconciler)

    async def add(self, name: str) -> str:
        """A running container ``name``; returns its id."""
        await self.control.apply(name, MANIFEST)
        with anyio.fail_after(5):
            while True:
                status = {s["name"]: s for s in self.control.containers()}.get(name)
                if status is not None and status["phase"] == Phase.RUNNING and status["id"]:
                    return status["id"]
                await anyio.sleep(0.01)

    def log(self, name: str, **options: int) -> TimedLog:
        return TimedLog(self.control.log_path(name), **options)

    async def logs(self, name: str, **params: object) -> httpx.Response:
        query = {key: str(value) for key, value in params.items()}
        return await self.api.get(f"/v1/containers/{name}/logs", params=query)


class TimedLog:
    """A container's log written at the times (seconds after T0) the test says."""

    def __init__(self, path: Path, **options: int) -> None:
        self.now = 0.0
        self._log = RotatingLog(path, clock=lambda: T0 * 10**9 + round(self.now * 10**9), **options)

    def write(self, at: float, data: bytes) -> None:
        self.now = at
        self._log.write(data)

    def close(self) -> None:
        self._log.close()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with real_plane(tmp_path) as plane:
        app = make_app(plane.control)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://squish") as api:
            yield Daemon(plane.reconciler, app, api)


async def four_lines(daemon: Daemon) -> None:
    """web: lines 0 to 3 at T0, T0+1 s, T0+2 s and T0+3 s."""
    await daemon.add("web")
    log = daemon.log("web")
    for second in range(4):
        log.write(second, b"line %d\n" % second)
    log.close()


# -- which container --------------------------------------------------------------


async def test_an_unknown_name_is_no_such_container(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "logs" / "ghost.log").write_bytes(b"left behind\n")

    for name in ("nosuch", "ghost"):
        response = await daemon.logs(name)
        assert response.status_code == 404
        assert response.json() == {"error": f"no such container {name!r}"}


async def test_a_known_container_with_no_output_has_an_empty_log(daemon: Daemon) -> None:
    await daemon.add("quiet")

    response = await daemon.logs("quiet", tail=5, timestamps=1)
    assert response.status_code == 200
    assert response.text == ""


async def test_an_id_prefix_names_its_container(daemon: Daemon) -> None:
    await four_lines(daemon)
    container_id = await daemon.add("web")

    response = await daemon.logs(container_id[:12], tail=1)
    assert response.text == "line 3\n"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("since", "yesterday"),
        ("until", "nan"),
        ("since", "inf"),
        ("until", "1h"),
        ("since", "1e999999999"),
    ],
)
async def test_bad_times_are_refused(daemon: Daemon, key: str, value: str) -> None:
    await four_lines(daemon)

    response = await daemon.logs("web", **{key: value})
    assert response.status_code == 400
    assert response.json() == {
        "error": f"query parameter {key} must be a Unix time in seconds, got {value!r}"
    }


async def test_an_ambiguous_id_prefix_is_refused(daemon: Daemon) -> None:
    # Seventeen ids: at least two share their first hex digit.
    for index in range(17):
        await daemon.add(f"c{index}")
    firsts: dict[str, list[str]] = {}
    for status in daemon.control.containers():
        firsts.setdefault((status["id"] or "")[0], []).append(status["name"])
    digit, names = max(firsts.items(), key=lambda item: len(item[1]))

    response = await daemon.logs(digit)
    assert response.status_code == 409
    assert response.json()["candidates"] == sorted(names)
    assert response.json()["error"].startswith(f"{digit!r} is ambiguous")


# -- which lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({}, [0, 1, 2, 3], id="everything"),
        pytest.param({"since": T0 + 1}, [1, 2, 3], id="since"),
        pytest.param({"since": T0 + 1.5}, [2, 3], id="since between lines"),
        pytest.param({"until": T0 + 2}, [0, 1, 2], id="until, inclusive"),
        pytest.param({"since": T0 + 1, "until": T0 + 2}, [1, 2], id="since and until"),
        pytest.param({"since": T0 + 9}, [], id="since after everything"),
        pytest.param({"until": T0 - 9}, [], id="until before everything"),
        pytest.param({"tail": 2}, [2, 3], id="tail"),
        pytest.param({"tail": 2, "until": T0 + 1}, [0, 1], id="tail of what until leaves"),
        pytest.param({"tail": 9, "since": T0 + 2}, [2, 3], id="tail of what since leaves"),
        pytest.param({"tail": 0}, [], id="tail 0"),
    ],
)
async def test_since_until_tail(
    daemon: Daemon, params: dict[str, float], expected: list[int]
) -> None:
    await four_lines(daemon)

    response = await daemon.logs("web", **params)
    assert response.status_code == 200
    assert response.text == "".join(f"line {n}\n" for n in expected)


async def test_timestamps_prefix_each_line(daemon: Daemon) -> None:
    await daemon.add("web")
    log = daemon.log("web")
    log.write(0, b"one\ntw")
    log.write(1.5, b"o\nthree")  # "two" began at T0
    log.close()

    response = await daemon.logs("web", timestamps=1)
    assert response.text == (
        "2026-12-01T10:00:00.000Z one\n2026-12-01T10:00:00.000Z two\n2026-12-01T10:00:01.500Z three"
    )


async def test_the_rotated_files_count_too(daemon: Daemon) -> None:
    await daemon.add("web")
    log = daemon.log("web", max_bytes=14, keep=3)  # two 7-byte lines a file
    for second in range(6):
        log.write(second, b"line %d\n" % second)
    log.close()

    assert (await daemon.logs("web")).text == "".join(f"line {n}\n" for n in range(6))
    since = await daemon.logs("web", since=T0 + 1, until=T0 + 4)
    assert since.text == "".join(f"line {n}\n" for n in range(1, 5))
    tail = await daemon.logs("web", tail=3, timestamps=1)
    assert tail.text == (
        "2026-12-01T10:00:03.000Z line 3\n"
        "2026-12-01T10:00:04.000Z line 4\n"
        "2026-12-01T10:00:05.000Z line 5\n"
    )


# -- following ----------------------------------------------------------------------


async def test_follow_with_until_stops_there_by_itself(daemon: Daemon) -> None:
    await daemon.add("web")
    log = RotatingLog(daemon.control.log_path("web"))  # the real clock
    log.write(b"before\n")
    until = time.time() + 1.0
    result: list[httpx.Response] = []

    async def follow() -> None:
        result.append(await daemon.logs("web", follow=1, until=until))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.2)
            log.write(b"during\n")
            await anyio.sleep(until - time.time() + 0.05)
            # Past until, while the follower still waits for late lines: never sent.
            log.write(b"after\n")
        log.close()
    assert result[0].text == "before\nduring\n"


async def test_follow_waits_for_the_first_output_and_stamps_across_rotation(
    daemon: Daemon,
) -> None:
    await daemon.add("web")
    result: list[httpx.Response] = []

    async def follow() -> None:
        result.append(await daemon.logs("web", follow=1, timestamps=1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.3)  # no file yet
        log = daemon.log("web", max_bytes=10, keep=2)
        log.write(1, b"first\n")
        await anyio.sleep(0.3)
        log.write(2, b"second\n")  # rotates: "first" goes to web.log.1
        log.write(2.25, b"par")
        await anyio.sleep(0.3)
        log.write(3, b"tial\n")
        await anyio.sleep(0.3)
        log.close()
        daemon.app.state.drain.close()  # what serve() does on shutdown
    assert result[0].text == (
        "2026-12-01T10:00:01.000Z first\n"
        "2026-12-01T10:00:02.000Z second\n"
        "2026-12-01T10:00:02.250Z partial\n"
    )


async def test_times_match_to_the_millisecond(daemon: Daemon) -> None:
    await daemon.add("web")
    log = daemon.log("web")
    for ms in (122, 123, 124):
        log.write(ms / 1000, b"at %d\n" % ms)
    log.close()

    exact = await daemon.logs("web", since="1796119200.123", until="1796119200.123")
    assert exact.text == "at 123\n"
    # Times are known to the millisecond: .1235 is within the line of ms 123.
    assert (await daemon.logs("web", since="1796119200.1235")).text == "at 123\nat 124\n"
    assert (await daemon.logs("web", until="1796119200.1229")).text == "at 122\n"
