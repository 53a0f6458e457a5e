"""Fault: an fd of the runtime's reaches a container's command (runc's fd-leak check).

Only stdin, stdout and stderr may: a pipe of the start handshake left open
in the command would let it write into, or hold open, the runtime's plumbing.
Checked from inside (``ls /proc/self/fd``) and from the host (the command's
own ``/proc/PID/fd``), with and without a network.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from squish.layers import Mount
from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime

pytestmark = pytest.mark.anyio


def spec(rootfs: Path, script: str, *, network: str) -> ContainerSpec:
    return ContainerSpec(
        name=network,
        rootfs=rootfs,
        command="/bin/sh",
        args=("-c", script),
        network=network != "none",
        # On a named network, bwrap is given the network host's user namespace
        # as an fd (--userns), which it would pass on to the command.
        networks=("n",) if network == "named" else (),
    )


@pytest.mark.parametrize("network", ["slirp4netns", "none", "named"])
async def test_the_command_sees_only_stdio(
    runtime: BwrapRuntime, base_rootfs: Path, network: str
) -> None:
    # ls opens /proc/self/fd itself: the lowest free number, 3 when 0-2 are all.
    script = "ls /proc/self/fd; echo end; exec sleep 30"
    container = await runtime.start(spec(base_rootfs, script, network=network))
    assert container.log_path is not None
    log = container.log_path
    with anyio.fail_after(10):
        while "end" not in log.read_text():
            await anyio.sleep(0.02)
    inside = log.read_text().split("end")[0].split()
    assert sorted(inside, key=int) == ["0", "1", "2", "3"]

    command = runtime.get(container.id).pid
    assert command is not None
    assert sorted(os.listdir(f"/proc/{command}/fd"), key=int) == ["0", "1", "2"]
    await runtime.stop(container.id, grace=0.1)


async def test_a_layer_bound_from_an_fd_leaves_it_nowhere_inside(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    # bwrap binds each layer (and the rootfs) from an fd the runtime opened
    # (--bind-fd): an open directory of the host left in the sandbox would be
    # a way out of it (openat(fd, "..")).
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "hello").write_text("from the layer\n")
    container = await runtime.start(
        replace(
            spec(base_rootfs, "cat /data/hello; exec sleep 30", network="slirp4netns"),
            mounts=(Mount(source=layer, target="/data", rw=False),),
        )
    )
    assert container.log_path is not None
    log = container.log_path
    with anyio.fail_after(10):
        while "from the layer" not in log.read_text():
            await anyio.sleep(0.02)
    live = runtime.get(container.id)
    assert live.pid is not None and live.init_pid is not None
    for pid in (live.pid, live.init_pid):
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not any(path.startswith((str(layer), str(base_rootfs))) for path in held), held
    await runtime.stop(container.id, grace=0.1)
