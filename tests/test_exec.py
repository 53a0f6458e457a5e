"""Running a command inside a running container (``Runtime.exec``), for real.

What ``squish exec`` and the health checks rely on: the command sees what
the container's own command sees (its root, processes, network, hostname,
env), has no capabilities, needs no shell, and is killed with what it
started at its timeout.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from squish.errors import RuntimeFailure
from squish.runtime import EXEC_OUTPUT_LIMIT, ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime.kernel import LinuxKernel
from tests.test_runtime import alive, live_children, run_to_exit

pytestmark = pytest.mark.anyio


def sleeper(rootfs: Path, **kw: object) -> ContainerSpec:
    return ContainerSpec(
        name="box",
        rootfs=rootfs,
        command="/bin/sh",
        args=("-c", "echo started > /tmp/mark; exec sleep 1000"),
        env={"GREETING": "hello"},
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("where", ["none", "slirp4netns", "named"])
async def test_exec_sees_what_the_containers_command_sees(
    runtime: BwrapRuntime, base_rootfs: Path, where: str
) -> None:
    network = {"none": {"network": False}, "slirp4netns": {}, "named": {"networks": ("n",)}}
    container = await runtime.start(sleeper(base_rootfs, **network[where]))
    script = (
        "cat /tmp/mark; hostname; echo $GREETING; ps -o args | grep -c '^sleep 1000'; "
        "grep CapEff /proc/self/status; id -u; ls /proc/self/fd | tr '\\n' ' '; echo; "
        "cat /proc/net/dev | grep -o '^ *[a-z0-9]*:' | tr -d ' \\n'"
    )
    result = await runtime.exec(container.id, ["/bin/sh", "-c", script], timeout=10)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "started"  # its /tmp: the container's mount namespace
    assert lines[1] == "box"  # its uts namespace
    assert lines[2] == "hello"  # its env
    assert lines[3] == "1"  # its pid namespace: its own command, once
    assert lines[4] == "CapEff:\t0000000000000000"
    assert lines[5] == "0"
    assert lines[6].split() == ["0", "1", "2", "3"]  # stdio, and ls's own
    interfaces = {"none": "lo:", "slirp4netns": "lo:tap0:", "named": "lo:eth0:"}[where]
    assert lines[7] == interfaces  # its network namespace
    await runtime.stop(container.id, grace=0)


async def test_exec_needs_no_shell_and_passes_the_exit_code(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    container = await runtime.start(sleeper(base_rootfs, network=False))
    ok = await runtime.exec(container.id, ["cat", "/etc/os-release"])  # found on its PATH
    assert ok.exit_code == 0 and "squish busybox base" in ok.output
    failed = await runtime.exec(container.id, ["ls", "/no/such/file"])
    assert failed.exit_code == 1 and "No such file" in failed.output
    missing = await runtime.exec(container.id, ["no-such-program"])
    assert missing.exit_code == 127
    assert "no-such-program: not found in the container's PATH" in missing.output
    killed = await runtime.exec(container.id, ["/bin/sh", "-c", "kill -9 $$"])
    assert killed.exit_code == 137
    with pytest.raises(RuntimeFailure, match="exec needs a command"):
        await runtime.exec(container.id, [])
    await runtime.stop(container.id, grace=0)


async def test_exec_at_its_timeout_kills_what_it_started(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    container = await runtime.start(sleeper(base_rootfs, network=False))
    result = await runtime.exec(
        container.id, ["/bin/sh", "-c", "sleep 300 & echo $! > /tmp/child; sleep 300"], timeout=0.5
    )
    assert result.timed_out and result.exit_code == 124
    assert 0.5 <= result.seconds < 5
    assert "timed out after 0.5 s" in result.output
    check = await runtime.exec(container.id, ["/bin/sh", "-c", "ps -o comm | grep -c sleep"])
    assert check.output.strip() == "1"  # only the container's own sleep is left
    await runtime.stop(container.id, grace=0)
    assert left_over() == []


def left_over() -> list[int]:
    """What an exec left: live children of this process but the exec server, and the
    server's children (its runners; the commands of a dead one would come to us)."""
    servers = [pid for pid in live_children() if _is_exec_server(pid)]
    assert len(servers) <= 1
    others = [pid for pid in live_children() if pid not in servers]
    runners = [pid for server in servers for pid in LinuxKernel().children(server) if alive(pid)]
    return [_described(pid) for pid in others + runners]


def _described(pid: int) -> str:
    try:
        status = dict(
            line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {status.get('State')} ppid {status.get('PPid')}: {argv}"


def _is_exec_server(pid: int) -> bool:
    try:
        return b"exec_helper.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def test_the_exec_server_is_started_once_and_again_if_it_died(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    container = await runtime.start(sleeper(base_rootfs, network=False))
    for _ in range(3):
        assert (await runtime.exec(container.id, ["true"])).exit_code == 0
    (server,) = [pid for pid in live_children() if _is_exec_server(pid)]
    os.kill(server, signal.SIGKILL)
    with anyio.fail_after(5):
        while alive(server):
            await anyio.sleep(0.01)
    result = await runtime.exec(container.id, ["id", "-u"])
    assert result.exit_code == 0 and result.output == "0\n"
    (again,) = [pid for pid in live_children() if _is_exec_server(pid)]
    assert again != server
    await runtime.stop(container.id, grace=0)


async def test_exec_output_is_capped(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    container = await runtime.start(sleeper(base_rootfs, network=False))
    result = await runtime.exec(
        container.id, ["/bin/sh", "-c", "yes 0123456789abcdef | head -c 1000000; echo end >&2"]
    )
    assert result.exit_code == 0
    assert result.truncated and len(result.output.encode()) == EXEC_OUTPUT_LIMIT
    await runtime.stop(container.id, grace=0)


async def test_exec_in_a_stopped_container_is_refused(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    container = await runtime.start(sleeper(base_rootfs, network=False))
    await runtime.stop(container.id, grace=0)
    with pytest.raises(RuntimeFailure, match="no running container"):
        await runtime.exec(container.id, ["true"])


async def test_an_exec_cancelled_leaves_nothing(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    container = await runtime.start(sleeper(base_rootfs, network=False))
    with anyio.move_on_after(0.5):
        await runtime.exec(container.id, ["sleep", "300"], timeout=60)
    with anyio.fail_after(5):
        while True:
            check = await runtime.exec(
                container.id, ["/bin/sh", "-c", "ps -o comm | grep -c sleep"]
            )
            if check.output.strip() == "1":
                break
            await anyio.sleep(0.05)
    await runtime.stop(container.id, grace=0)
    assert left_over() == []  # nothing of the exec left among this process's children either


async def test_workdir_is_where_the_command_and_an_exec_start(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    spec = ContainerSpec(
        name="wd",
        rootfs=base_rootfs,
        command="/bin/sh",
        args=("-c", "pwd > /tmp/where; exec sleep 1000"),
        workdir="/etc",
        network=False,
    )
    container = await runtime.start(spec)
    result = await runtime.exec(container.id, ["/bin/sh", "-c", "cat /tmp/where; pwd"])
    assert result.output.split() == ["/etc", "/etc"]
    await runtime.stop(container.id, grace=0)
    missing = ContainerSpec(
        name="nowhere", rootfs=base_rootfs, command="/bin/true", workdir="/no/such", network=False
    )
    # bwrap changes directory last, just before the command: it ends at once, saying why.
    event, _ = await run_to_exit(runtime, missing)
    assert event.exit_code == 1
    assert "Can't chdir to /no/such" in event.reason, event.reason
