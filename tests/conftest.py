"""Shared fixtures: the built-in base, a real runtime, free ports.

The runtime tests run for real, rootless; ``scripts/test`` runs the suite as
an unprivileged user even when started as root. Run directly as root, they
fail with a message saying so instead of testing something squish never does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from squish.layers import LayerStore
from squish.runtime.bwrap_runtime import BwrapRuntime


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def base_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return LayerStore(tmp_path_factory.mktemp("state")).builtin_base()


@pytest.fixture
def rootless() -> None:
    if os.getuid() == 0:
        pytest.fail("runtime tests run rootless: use scripts/test, which drops to a user")


@pytest.fixture
async def runtime(tmp_path: Path, rootless: None) -> AsyncIterator[BwrapRuntime]:
    async with BwrapRuntime(run_dir=tmp_path / "run", log_dir=tmp_path / "logs") as rt:
        yield rt


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
