"""The daemon's own health checks (``Runtime.probe``: ``[health] http`` and ``tcp``), for real.

Real containers under bwrap, every way they are networked: the check
connects to the container's own loopback through a socket made in its
network namespace, with no process started in it. The reconciler's part
(which check it runs, what it reports) is in tests/test_health.py; the
e2e suite runs both through the ``squish`` command.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from squish.errors import ContainerNotFound, RuntimeFailure
from squish.runtime import ContainerSpec, Probe
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime.execs import ExecServer
from squish.runtime.kernel import LinuxKernel
from squish.runtime.probes import MAX_BATCH, ProbeSockets, SocketBudget
from squish.runtime.seccomp import default_filter
from tests.test_exec import _is_exec_server
from tests.test_runtime import alive, live_children, web_spec, www

pytestmark = pytest.mark.anyio
__all__ = ["www"]  # a fixture of test_runtime

WAYS = {
    "none": {"network": False},
    "slirp4netns": {},
    "named": {"networks": ("n",)},
    "named, as a user": {"networks": ("n",), "uid": 1000, "gid": 1000},
    "slirp4netns, as a user": {"uid": 1000, "gid": 1000},
}


def socket_fds() -> int:
    """How many sockets this process holds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile (the listing's own, say)
            continue
    return count


def exec_servers() -> list[int]:
    return [pid for pid in live_children() if _is_exec_server(pid)]


async def started(runtime: BwrapRuntime, spec: ContainerSpec) -> str:
    """Start ``spec`` and wait until its server answers (checked from inside)."""
    container = await runtime.start(spec)
    for _ in range(200):
        if (await runtime.probe(container.id, Probe(8080), timeout=1)).exit_code == 0:
            return container.id
        await anyio.sleep(0.02)
    raise AssertionError(f"{spec.name} never listened on 8080")


@pytest.mark.parametrize("way", list(WAYS))
async def test_tcp_and_http_checks_reach_the_containers_own_loopback(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path, way: str
) -> None:
    (www / "healthz").write_text("all good\nsecond line\n")
    # Listening on the host's loopback, on a port the container does not
    # use: the check must not reach it.
    host = socket.create_server(("127.0.0.1", 0))
    host_port = host.getsockname()[1]
    spec = replace(web_spec(base_rootfs, www), **WAYS[way])  # type: ignore[arg-type]
    before = socket_fds()
    server_before = exec_servers()
    web = await started(runtime, spec)

    tcp = await runtime.probe(web, Probe(8080), timeout=5)
    assert (tcp.exit_code, tcp.output) == (0, "connected to 127.0.0.1:8080\n")
    ok = await runtime.probe(web, Probe(8080, "/healthz"), timeout=5)
    assert (ok.exit_code, ok.output) == (0, "HTTP 200 OK\nall good\nsecond line\n")
    missing = await runtime.probe(web, Probe(8080, "/nope"), timeout=5)
    assert missing.exit_code == 1 and missing.output.startswith("HTTP 404 Not Found\n")
    refused = await runtime.probe(web, Probe(host_port), timeout=5)
    assert refused.exit_code == 1
    assert refused.output == f"127.0.0.1:{host_port}: Connection refused\n"
    http_refused = await runtime.probe(web, Probe(host_port, "/"), timeout=5)
    assert http_refused.output == f"http://127.0.0.1:{host_port}/: Connection refused\n"

    await runtime.stop(web, grace=0)
    host.close()
    # The sockets made ahead for it went with it (they would keep its
    # network namespace alive); the exec server's socket (if it started
    # now) is all there is more.
    assert socket_fds() == before - 1 + len(exec_servers()) - len(server_before)


async def test_checks_over_several_batches_pass_and_send_their_headers(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    # A server that answers each connection once, keeping what it was sent.
    script = (
        "while true; do "
        "printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 11\\r\\n\\r\\nhello there and more' "
        "| nc -l -p 8080 >> /tmp/requests; done"
    )
    spec = ContainerSpec(
        name="echo", rootfs=base_rootfs, command="/bin/sh", args=("-c", script), network=False
    )
    container = await runtime.start(spec)
    checked = 0
    for _ in range(400):
        result = await runtime.probe(
            container.id,
            Probe(8080, "/ready?x=1", (("Host", "app.example"), ("X-Probe", "yes"))),
            timeout=2,
        )
        if result.exit_code == 0:
            checked += 1
            # The body is cut at its Content-Length.
            assert result.output == "HTTP 200 OK\nhello there"
            if checked == MAX_BATCH + 8:
                break
        else:
            await anyio.sleep(0.01)  # refused while nc starts again
    assert checked == MAX_BATCH + 8
    request = await runtime.exec(container.id, ["cat", "/tmp/requests"])
    lines = request.output.split("\r\n")
    assert request.output.count("GET /ready?x=1 HTTP/1.1\r\n") == checked
    assert "Host: app.example" in lines and "X-Probe: yes" in lines
    assert not any(line.startswith("Host: 127.0.0.1") for line in lines)
    await runtime.stop(container.id, grace=0)


async def test_a_check_of_a_server_that_never_answers_times_out(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    # Accepts, then says nothing (its stdin never ends).
    spec = ContainerSpec(
        name="mute",
        rootfs=base_rootfs,
        command="/bin/sh",
        args=("-c", "sleep 1000 | nc -l -p 8080"),
        network=False,
    )
    container = await runtime.start(spec)
    for _ in range(200):
        result = await runtime.probe(container.id, Probe(8080, "/"), timeout=0.3)
        if result.exit_code != 1:  # refused until nc listens
            break
        await anyio.sleep(0.02)
    assert result.exit_code == 124 and result.timed_out
    assert result.output == "http://127.0.0.1:8080/: timed out after 0.3 s\n"
    assert 0.3 <= result.seconds < 2
    await runtime.stop(container.id, grace=0)


async def test_not_http_and_a_closed_connection_are_failures(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    script = "while true; do echo 'SSH-2.0-OpenSSH' | nc -l -p 8080; done"
    spec = ContainerSpec(
        name="ssh", rootfs=base_rootfs, command="/bin/sh", args=("-c", script), network=False
    )
    container = await runtime.start(spec)
    for _ in range(200):
        result = await runtime.probe(container.id, Probe(8080, "/"), timeout=2)
        if "Connection refused" not in result.output:
            break
        await anyio.sleep(0.02)
    assert result.exit_code == 1
    assert result.output in (
        "http://127.0.0.1:8080/: the connection ended within the HTTP answer's headers\n",
        "http://127.0.0.1:8080/: not an HTTP answer: 'SSH-2.0-OpenSSH\\n'\n",
    )
    await runtime.stop(container.id, grace=0)


async def test_a_check_of_a_stopped_container_is_refused(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    web = await started(runtime, web_spec(base_rootfs, www))
    await runtime.stop(web, grace=0)
    with pytest.raises(ContainerNotFound, match="no running container"):
        await runtime.probe(web, Probe(8080), timeout=1)


async def test_a_killed_exec_server_is_started_again_for_the_next_batch(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    web = await started(runtime, web_spec(base_rootfs, www))
    (server,) = exec_servers()
    os.kill(server, signal.SIGKILL)
    with anyio.fail_after(5):
        while alive(server):
            await anyio.sleep(0.01)
    results = [await runtime.probe(web, Probe(8080, "/"), timeout=5) for _ in range(MAX_BATCH + 1)]
    assert [result.exit_code for result in results] == [0] * (MAX_BATCH + 1)
    (again,) = exec_servers()
    assert again != server
    await runtime.stop(web, grace=0)


async def test_sockets_for_a_sandbox_that_is_gone_are_a_one_line_failure() -> None:
    server = ExecServer(LinuxKernel(), default_filter)
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        with pytest.raises(RuntimeFailure) as caught:
            await server.sockets(gone.pid, 4, timeout=5)
    finally:
        server.close()
    assert str(caught.value) == (
        f"cannot make sockets in the container: its sandbox (pid {gone.pid}) is gone"
    )


@pytest.mark.parametrize(
    ("every", "batches"),
    [
        pytest.param(1.0, [2, 30, 30], id="a check a second: for 30 s"),
        pytest.param(0.01, [2, 32, 32], id="many: at most 32"),
        pytest.param(30.0, [2, 2, 2], id="one every 30 s: two"),
        pytest.param(10.0, [2, 3, 3], id="one every 10 s: three"),
    ],
)
async def test_sockets_are_made_for_30_s_of_checks_at_the_rate_they_are_taken(
    every: float, batches: list[int]
) -> None:
    now = 0.0
    made: list[int] = []

    async def make(count: int) -> list[socket.socket]:
        made.append(count)
        return [socket.socket() for _ in range(count)]

    sockets = ProbeSockets(make, SocketBudget(1000), clock=lambda: now)
    while len(made) <= len(batches):
        (await sockets.take()).close()
        now += every
    sockets.close()
    assert made[: len(batches)] == batches


async def test_the_sockets_held_for_checks_stay_within_a_budget_of_fds() -> None:
    made: list[int] = []

    async def make(count: int) -> list[socket.socket]:
        made.append(count)
        return [socket.socket() for _ in range(count)]

    budget = SocketBudget(10)
    first = ProbeSockets(make, budget)
    for _ in range(3):  # the rate seen is high: it asks for 32 at its second batch
        (await first.take()).close()
    assert (made, budget.held) == ([2, 10], 9)  # alone: the whole budget
    second = ProbeSockets(make, budget)
    (await second.take()).close()
    assert made[-1] == 1  # none left: one at a time, as checks come
    assert budget.held == 9
    first.close()
    assert (budget.held, budget.pools) == (0, 1)
    first.close()  # twice: counted once
    assert budget.pools == 1
    third = ProbeSockets(make, budget)
    for _ in range(2):
        (await second.take()).close()
    assert made[-1] == 5  # two checked: half the budget each
    second.close()
    third.close()
    assert (budget.held, budget.pools) == (0, 0)


def test_the_default_budget_is_a_quarter_of_the_fd_limit() -> None:
    assert SocketBudget().limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4


async def test_the_sockets_made_ahead_reach_no_container(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    before = socket_fds() + 1  # and the exec server's
    web = await started(runtime, web_spec(base_rootfs, www))
    for _ in range(3):  # past the first batch (of 2): the next holds some
        await runtime.probe(web, Probe(8080), timeout=5)
    assert socket_fds() > before
    script = "ls /proc/self/fd; echo end; exec sleep 30"
    other = await runtime.start(
        ContainerSpec(name="other", rootfs=base_rootfs, command="/bin/sh", args=("-c", script))
    )
    assert other.log_path is not None
    with anyio.fail_after(10):
        while "end" not in other.log_path.read_text():
            await anyio.sleep(0.02)
    assert sorted(other.log_path.read_text().split("end")[0].split(), key=int) == [
        "0",
        "1",
        "2",
        "3",
    ]
    await runtime.stop(other.id, grace=0)
    await runtime.stop(web, grace=0)
