"""Fault: an fd of the runtime's reaches a container's command (runc's fd-leak check).

Only stdin, stdout and stderr may: a pipe of the start handshake left open
in the command would let it write into, or hold open, the runtime's plumbing.
Checked from inside (``ls /proc/self/fd``) and from the host (the command's
own ``/proc/PID/fd``), with and without a network.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime

pytestmark = pytest.mark.anyio


def spec(rootfs: Path, script: str, *, network: bool) -> ContainerSpec:
    name = "networked" if network else "offline"
    return ContainerSpec(
        name=name, rootfs=rootfs, command="/bin/sh", args=("-c", script), network=network
    )


@pytest.mark.parametrize("network", [True, False], ids=["networked", "no-network"])
async def test_the_command_sees_only_stdio(
    runtime: BwrapRuntime, base_rootfs: Path, network: bool
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
