"""Tests of the in-memory runtime (squish.runtime.fake) against the Runtime contract.

The reconciler's tests lean on ``FakeRuntime`` behaving like ``BwrapRuntime``:
containers run until stopped or crashed, every end is an ``ExitEvent`` on
every subscription, host ports are exclusive, and every call is recorded.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from squish.errors import ContainerNotFound, PortInUse, RuntimeFailure
from squish.runtime import (
    Container,
    ContainerSpec,
    ContainerState,
    ExecResult,
    ExitEvent,
    PortForward,
    Probe,
)
from squish.runtime.fake import FakeRuntime

pytestmark = pytest.mark.anyio


@pytest.fixture
async def runtime() -> AsyncIterator[FakeRuntime]:
    # Used as the real one is: leaving it ends every subscription.
    async with FakeRuntime() as fake:
        yield fake


def spec(name: str = "web", *ports: PortForward, network: bool = True) -> ContainerSpec:
    return ContainerSpec(
        name=name, rootfs=Path("/base"), command="/bin/true", ports=ports, network=network
    )


def tcp(host: int, container: int = 80, host_ip: str | None = None) -> PortForward:
    return PortForward(host, container, "tcp", host_ip)


def udp(host: int, container: int = 53, host_ip: str | None = None) -> PortForward:
    return PortForward(host, container, "udp", host_ip)


# -- start, list, stop ------------------------------------------------------------


async def test_start_runs_a_container_that_list_shows(runtime: FakeRuntime) -> None:

    web = await runtime.start(spec("web", tcp(8080)))
    db = await runtime.start(spec("db"))

    assert web.state is ContainerState.RUNNING
    assert re.fullmatch("[0-9a-f]{64}", web.id)
    assert web.name == "web"
    assert web.ports == (tcp(8080),)
    assert web.pid is not None
    assert web.init_pid is not None
    assert web.exit_code is None
    assert len({web.id, db.id}) == 2
    assert len({web.pid, web.init_pid, db.pid, db.init_pid}) == 4
    assert runtime.list() == [web, db]


async def test_list_hands_out_copies(runtime: FakeRuntime) -> None:
    started = await runtime.start(spec())

    runtime.list()[0].state = ContainerState.EXITED
    started.ports = (tcp(1),)

    assert runtime.list()[0].state is ContainerState.RUNNING
    assert runtime.list()[0].ports == ()


async def test_a_port_listed_twice_is_held_once(runtime: FakeRuntime) -> None:

    container = await runtime.start(spec("web", tcp(8080), tcp(8080)))

    assert container.ports == (tcp(8080),)


async def test_stop_ends_the_container(runtime: FakeRuntime) -> None:
    web = await runtime.start(spec("web"))
    db = await runtime.start(spec("db"))

    stopped = await runtime.stop(web.id, grace=0.1)

    assert stopped.id == web.id
    assert stopped.state is ContainerState.EXITED
    assert stopped.exit_code == 143
    assert stopped.finished_at is not None
    assert stopped.finished_at >= stopped.started_at
    assert [container.id for container in runtime.list()] == [db.id]


# -- exit events ------------------------------------------------------------------


async def test_every_exit_is_one_event_on_every_subscription(runtime: FakeRuntime) -> None:
    with runtime.subscribe() as first, runtime.subscribe() as second:
        stopped = await runtime.start(spec("stopped"))
        crashed = await runtime.start(spec("crashed"))
        survivor = await runtime.start(spec("survivor"))

        await runtime.stop(stopped.id)
        runtime.crash(crashed.id, 3)

        for events in (first, second):
            received = [events.receive_nowait(), events.receive_nowait()]
            with pytest.raises(anyio.WouldBlock):
                events.receive_nowait()  # nothing about the survivor
            assert [(e.container_id, e.name, e.exit_code, e.stopped) for e in received] == [
                (stopped.id, "stopped", 143, True),
                (crashed.id, "crashed", 3, False),
            ]
    assert [container.id for container in runtime.list()] == [survivor.id]


@pytest.mark.parametrize("exit_code", [0, 1, 137])
async def test_crash_is_an_exit_nobody_asked_for(exit_code: int, runtime: FakeRuntime) -> None:
    with runtime.subscribe() as events:
        container = await runtime.start(spec())

        runtime.crash(container.id, exit_code)

        with anyio.fail_after(1):
            event = await events.receive()
    assert isinstance(event, ExitEvent)
    assert (event.container_id, event.name) == (container.id, "web")
    assert event.exit_code == exit_code
    assert event.stopped is False
    assert runtime.list() == []


async def test_crash_defaults_to_exit_code_1(runtime: FakeRuntime) -> None:
    with runtime.subscribe() as events:
        container = await runtime.start(spec())
        runtime.crash(container.id)
        event = events.receive_nowait()
    assert event.exit_code == 1


async def test_a_closed_subscription_does_not_break_later_exits(runtime: FakeRuntime) -> None:
    with runtime.subscribe():
        pass
    container = await runtime.start(spec())

    stopped = await runtime.stop(container.id)

    assert stopped.state is ContainerState.EXITED


async def test_closing_the_runtime_ends_every_subscription() -> None:
    async with FakeRuntime() as runtime:
        events = runtime.subscribe()
    with events, anyio.fail_after(1):
        assert [event async for event in events] == []


# -- unknown containers -------------------------------------------------------------

Action = Callable[[FakeRuntime, str], Awaitable[object]]


async def stop(runtime: FakeRuntime, container_id: str) -> Container:
    return await runtime.stop(container_id)


async def crash(runtime: FakeRuntime, container_id: str) -> None:
    runtime.crash(container_id)


async def update_ports(runtime: FakeRuntime, container_id: str) -> Container:
    return await runtime.update_ports(container_id, [tcp(8080)])


async def probe(runtime: FakeRuntime, container_id: str) -> ExecResult:
    return await runtime.probe(container_id, Probe(8080), timeout=1)


@pytest.mark.parametrize("action", [stop, crash, update_ports, probe])
@pytest.mark.parametrize("ended_by", [None, stop, crash])
async def test_unknown_or_ended_containers_are_not_found(
    action: Action, ended_by: Action | None, runtime: FakeRuntime
) -> None:
    with runtime.subscribe():
        container = await runtime.start(spec())
        if ended_by is None:
            container_id = "f" * 64
        else:
            await ended_by(runtime, container.id)
            container_id = container.id

        with pytest.raises(ContainerNotFound, match=f"no running container {container_id[:12]}"):
            await action(runtime, container_id)


# -- ports ------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["start", "update_ports"])
@pytest.mark.parametrize(
    ("held", "wanted", "conflict"),
    [
        pytest.param(tcp(8080), tcp(8080, 81), True, id="same tcp port"),
        pytest.param(tcp(8080), tcp(8080, host_ip="127.0.0.1"), True, id="default ip is explicit"),
        pytest.param(udp(5353), udp(5353, 54), True, id="same udp port"),
        pytest.param(tcp(5353), udp(5353), False, id="tcp and udp on one port"),
        pytest.param(tcp(8080), tcp(8080, host_ip="127.0.0.2"), False, id="other address"),
        pytest.param(tcp(8080, host_ip="::1"), tcp(8080), False, id="ipv6 and default"),
        pytest.param(tcp(8080), tcp(8081, 80), False, id="same container port, other host"),
    ],
)
async def test_host_ports_are_exclusive_between_containers(
    held: PortForward, wanted: PortForward, conflict: bool, via: str, runtime: FakeRuntime
) -> None:
    await runtime.start(spec("first", held))

    async def take() -> Container:
        if via == "start":
            return await runtime.start(spec("second", wanted))
        second = await runtime.start(spec("second", tcp(9000)))
        return await runtime.update_ports(second.id, [wanted])

    if conflict:
        with pytest.raises(PortInUse, match=re.escape(f"host port {wanted.describe()}: in use")):
            await take()
        # Nothing changed: no new container, no port moved.
        unchanged = {"start": [(held,)], "update_ports": [(held,), (tcp(9000),)]}[via]
        assert [c.ports for c in runtime.list()] == unchanged
    else:
        taken = await take()
        assert taken.ports == (wanted,)
        assert [c.ports for c in runtime.list()] == [(held,), (wanted,)]


async def test_default_host_ip_is_the_runtimes() -> None:
    runtime = FakeRuntime(default_host_ip="0.0.0.0")
    await runtime.start(spec("first", tcp(8080)))

    await runtime.start(spec("second", tcp(8080, host_ip="127.0.0.1")))
    with pytest.raises(PortInUse, match=re.escape("0.0.0.0:8080->80/tcp")):
        await runtime.start(spec("third", tcp(8080, host_ip="0.0.0.0")))


@pytest.mark.parametrize("end", [stop, crash])
async def test_an_ended_container_frees_its_ports(end: Action, runtime: FakeRuntime) -> None:
    with runtime.subscribe():
        first = await runtime.start(spec("first", tcp(8080), udp(5353)))
        await end(runtime, first.id)

        second = await runtime.start(spec("second", tcp(8080), udp(5353)))

    assert second.ports == (tcp(8080), udp(5353))


async def test_update_ports_keeps_the_container(runtime: FakeRuntime) -> None:
    before = await runtime.start(spec("web", tcp(8080), tcp(8443, 443)))

    # Keeping one of its own ports is no conflict with itself.
    after = await runtime.update_ports(before.id, [tcp(8443, 443), udp(5353)])

    assert after.ports == (tcp(8443, 443), udp(5353))
    assert (after.id, after.pid, after.init_pid) == (before.id, before.pid, before.init_pid)
    assert (after.spec, after.started_at, after.state) == (
        before.spec,
        before.started_at,
        ContainerState.RUNNING,
    )
    assert runtime.list() == [after]
    # The dropped port is free again.
    await runtime.start(spec("other", tcp(8080)))


async def test_ports_need_a_network(runtime: FakeRuntime) -> None:

    with pytest.raises(RuntimeFailure, match="box: ports need a network"):
        await runtime.start(spec("box", tcp(8080), network=False))
    assert runtime.list() == []

    box = await runtime.start(spec("box", network=False))
    with pytest.raises(RuntimeFailure, match="box: ports need a network"):
        await runtime.update_ports(box.id, [tcp(8080)])
    assert (await runtime.update_ports(box.id, [])).ports == ()
    # The refused port was never taken.
    await runtime.start(spec("web", tcp(8080)))


# -- scripted failures and recorded calls -------------------------------------------


async def test_fail_next_start_fails_that_name_once(runtime: FakeRuntime) -> None:
    error = RuntimeFailure("web: bwrap exited with 1")
    runtime.fail_next_start("web", error)

    other = await runtime.start(spec("db"))
    with pytest.raises(RuntimeFailure) as raised:
        await runtime.start(spec("web", tcp(8080)))
    assert raised.value is error
    assert runtime.list() == [other]

    web = await runtime.start(spec("web", tcp(8080)))
    assert [c.name for c in runtime.list()] == ["db", "web"]
    assert web.ports == (tcp(8080),)


async def test_hang_next_start_never_returns_and_leaves_nothing_when_cancelled(
    runtime: FakeRuntime,
) -> None:
    runtime.hang_next_start("web")

    with anyio.move_on_after(0.2) as deadline:
        await runtime.start(spec("web", tcp(8080)))
    assert deadline.cancelled_caught
    assert runtime.list() == []

    # Once: the next start runs, and the port it wanted was never held.
    web = await runtime.start(spec("web", tcp(8080)))
    assert [c.id for c in runtime.list()] == [web.id]


async def test_a_crash_the_runtime_caused_says_why(runtime: FakeRuntime) -> None:
    # As the real runtime does when a container's slirp4netns dies.
    why = "its network helper slirp4netns was killed by SIGKILL"
    with runtime.subscribe() as events:
        container = await runtime.start(spec())
        runtime.crash(container.id, 143, reason=why)
        event = events.receive_nowait()
    assert (event.exit_code, event.stopped, event.reason) == (143, False, why)


async def test_every_call_is_recorded_in_order(runtime: FakeRuntime) -> None:
    runtime.fail_next_start("web", RuntimeFailure("scripted"))

    with pytest.raises(RuntimeFailure):
        await runtime.start(spec("web"))
    web = await runtime.start(spec("web"))
    await runtime.update_ports(web.id, [tcp(8080)])
    with runtime.subscribe():
        await runtime.stop(web.id)
        runtime.crash((await runtime.start(spec("db"))).id)
    with pytest.raises(ContainerNotFound):
        await runtime.stop("0" * 64)

    assert runtime.calls == [
        ("start", "web"),
        ("start", "web"),
        ("update_ports", web.id),
        ("stop", web.id),
        ("start", "db"),
        ("stop", "0" * 64),
    ]
