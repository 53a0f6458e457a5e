"""Fault: a second daemon started on the socket of a live one.

It must refuse and leave that socket alone, whatever its state directory:
unlinking it would cut every client off the first daemon, which would go on
running containers that no ``squish`` command can reach any more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import Client
from tests.test_daemon import REPO, daemon, wait_for_socket


@pytest.fixture
def first(tmp_path: Path, rootless: None) -> Iterator[subprocess.Popen[bytes]]:
    process = daemon(tmp_path, "shared", state=tmp_path / "first-state")
    wait_for_socket(tmp_path / "shared.sock", process)
    yield process
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def squish(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squish", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
        check=False,
    )


def test_a_second_daemon_leaves_a_live_socket_in_place(
    tmp_path: Path, first: subprocess.Popen[bytes]
) -> None:
    sock = tmp_path / "shared.sock"
    inode = sock.stat().st_ino
    second = daemon(tmp_path, "shared", state=tmp_path / "second-state")
    _, err = second.communicate(timeout=30)
    assert second.returncode == 1
    assert f"already listens on {sock}; use another --socket" in err.decode()

    assert first.poll() is None
    assert sock.stat().st_ino == inode  # the very same socket, not removed nor replaced
    with Client(sock) as client:
        assert client.status()["pid"] == first.pid
    status = squish("status", "--json", "--socket", str(sock))
    assert status.returncode == 0, status.stderr


def test_the_first_daemon_still_removes_its_socket_when_it_stops(
    tmp_path: Path, first: subprocess.Popen[bytes]
) -> None:
    second = daemon(tmp_path, "shared", state=tmp_path / "second-state")
    second.communicate(timeout=30)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    assert first.returncode == 0
    assert not (tmp_path / "shared.sock").exists()
