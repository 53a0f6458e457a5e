"""Shared fixtures: the built-in base, a real runtime, free ports, git remotes.

The runtime tests run for real, rootless; ``scripts/test`` runs the suite as
an unprivileged user even when started as root. Run directly as root, they
fail with a message saying so instead of testing something squish never does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from squish.layers import LayerStore
from squish.runtime.bwrap_runtime import MARK_FILE, BwrapRuntime
from tests.fake_http import Mirror, Registry
from tests.git_repo import Remote, git


def pytest_configure(config: pytest.Config) -> None:
    """Undo a SIGINT ignored on entry: what the suite starts must see Ctrl-C as a user would.

    A suite run in the background by a non-interactive shell (``cmd &``) gets
    SIGINT ignored, and so would every process it starts: scripts/run-daemon
    could not trap the SIGINT test_demo sends it.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 20.0) -> T:
    """``check()``'s first answer that is neither None nor False, polled until ``timeout`` s.

    False waits too: a check written as a comparison must not pass at once.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()) is not None and result is not False:
            return result
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


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


def musl_probe(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """tests/probes/NAME.c built static against musl (Alpine's C library), once a session."""
    compiler = shutil.which("musl-gcc")
    assert compiler is not None, "musl-gcc is missing (scripts/setup --test installs musl-tools)"
    built = tmp_path_factory.mktemp("probes") / name
    source = Path(__file__).with_name("probes") / f"{name}.c"
    subprocess.run([compiler, "-static", "-O2", "-o", str(built), str(source)], check=True)
    return built


def container_dirs(run_dir: Path) -> list[Path]:
    """What a runtime keeps per container in its run directory (not its own mark)."""
    return [entry for entry in run_dir.iterdir() if entry.name != MARK_FILE]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Git with an identity and an empty global config; returns the global config file.

    Set in the environment, so daemons started by the test inherit it and
    nothing reads or writes the user's own configuration.
    """
    config = tmp_path / "gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for kind in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{kind}_NAME", "squish tests")
        monkeypatch.setenv(f"GIT_{kind}_EMAIL", "tests@squish.invalid")
    return config


@pytest.fixture
def remote(tmp_path: Path, git_env: Path) -> Remote:
    """A bare repository (``remote.url``, file://) and a work tree pushing to it."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    git(work, "remote", "add", "origin", str(bare))
    return Remote(bare, work)


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    """A fake Alpine mirror on 127.0.0.1, in Alpine's layout."""
    served = Mirror()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def registry() -> Iterator[Registry]:
    """A fake layer registry on 127.0.0.1."""
    served = Registry()
    try:
        yield served
    finally:
        served.stop()
