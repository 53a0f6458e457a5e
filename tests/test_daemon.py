"""The daemon process: one per state directory, sockets, signals. Real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import Client
from squish.errors import SquishError
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent


def daemon(
    tmp_path: Path, name: str, *extra: str, state: Path, **env: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "squish",
            "daemon",
            "--manifests",
            str(tmp_path / "manifests"),
            "--state-dir",
            str(state),
            "--socket",
            str(tmp_path / f"{name}.sock"),
            "--metrics-addr",
            f"127.0.0.1:{free_port()}",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


def wait_for_socket(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists():
            with Client(path) as client, contextlib.suppress(SquishError):  # not ready yet
                client.status()
                return
        time.sleep(0.05)
    raise AssertionError(f"no daemon on {path}")


@pytest.fixture
def first(tmp_path: Path, rootless: None) -> Iterator[subprocess.Popen[bytes]]:
    process = daemon(tmp_path, "first", state=tmp_path / "state")
    wait_for_socket(tmp_path / "first.sock", process)
    yield process
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def test_a_second_daemon_on_the_same_state_refuses_and_leaves_the_first_alone(
    tmp_path: Path, first: subprocess.Popen[bytes]
) -> None:
    second = daemon(tmp_path, "second", state=tmp_path / "state")
    _, err = second.communicate(timeout=30)
    assert second.returncode == 1
    message = err.decode().strip().splitlines()[-1]
    assert f"another squish daemon (pid {first.pid}) is running on" in message
    assert first.poll() is None
    with Client(tmp_path / "first.sock") as client:
        assert client.status()["pid"] == first.pid


def test_a_live_socket_is_not_taken_over(tmp_path: Path, first: subprocess.Popen[bytes]) -> None:
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "squish",
            "daemon",
            "--state-dir",
            str(tmp_path / "other-state"),
            "--socket",
            str(tmp_path / "first.sock"),
            "--metrics-addr",
            "off",
        ],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert b"already listens on" in second.stderr
    assert first.poll() is None


def test_sigterm_exits_zero_and_removes_the_socket(tmp_path: Path, rootless: None) -> None:
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    wait_for_socket(tmp_path / "d.sock", process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 0
    assert not (tmp_path / "d.sock").exists()


def test_a_stale_socket_is_replaced(tmp_path: Path, rootless: None) -> None:
    stale = tmp_path / "d.sock"
    with socket.socket(socket.AF_UNIX) as left_behind:
        left_behind.bind(str(stale))  # bound, never listening: what kill -9 leaves
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    wait_for_socket(stale, process)
    assert stale.stat().st_mode & 0o777 == 0o600
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 0
