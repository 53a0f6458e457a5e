"""systemd readiness notification (squish.daemon.sdnotify), against real sockets.

Each test binds an AF_UNIX datagram socket the way systemd does for a
``Type=notify`` unit, points ``$NOTIFY_SOCKET`` at it and reads exactly what
arrived. The last test runs the real daemon and checks it says READY=1 only
once its API answers, and STOPPING=1 when SIGTERM arrives.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import Client
from squish.daemon import sdnotify
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A notify socket bound at a path, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    return False


# -- the protocol ----------------------------------------------------------------


def test_notify_sends_the_state_as_one_datagram(listener: socket.socket) -> None:
    assert sdnotify.notify("READY=1") is True
    assert received(listener) == b"READY=1"
    assert nothing_more(listener)


def test_ready_stopping_and_status_send_the_exact_assignments(listener: socket.socket) -> None:
    assert sdnotify.ready()
    assert received(listener) == b"READY=1"
    assert sdnotify.ready("watching 3 manifests")
    assert received(listener) == b"READY=1\nSTATUS=watching 3 manifests"
    assert sdnotify.status("2 running, 1 failed")
    assert received(listener) == b"STATUS=2 running, 1 failed"
    assert sdnotify.stopping()
    assert received(listener) == b"STOPPING=1"


def test_a_status_cannot_smuggle_in_another_assignment(listener: socket.socket) -> None:
    assert sdnotify.status("bad\nREADY=1")
    assert received(listener) == b"STATUS=bad READY=1"


def test_non_ascii_is_sent_as_utf8(listener: socket.socket) -> None:
    assert sdnotify.status("pulling café")
    assert received(listener) == "STATUS=pulling café".encode()


def test_an_abstract_socket_is_named_with_a_leading_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"squish-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert received(sock) == b"READY=1"


# -- never in the way --------------------------------------------------------------


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.ready() is False


def test_a_missing_socket_is_logged_at_debug_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.DEBUG, logger="squish.sdnotify"):
        assert sdnotify.stopping() is False
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert "gone.sock" in record.getMessage()
    assert "STOPPING=1" in record.getMessage()


def test_a_socket_of_the_wrong_type_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(path))
        stream.listen()
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.ready() is False


def test_a_missing_abstract_socket_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@squish-test-nobody-{uuid.uuid4().hex}")
    assert sdnotify.ready() is False


@pytest.mark.parametrize("address", ["relative/notify.sock", "vsock:2:1234"])
def test_an_unsupported_address_is_ignored(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.ready() is False


# -- the daemon ---------------------------------------------------------------------


def test_the_daemon_is_ready_once_its_api_answers_and_says_when_it_stops(
    tmp_path: Path, listener: socket.socket, rootless: None
) -> None:
    api = tmp_path / "api.sock"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "squish",
            "daemon",
            "--manifests",
            str(tmp_path / "manifests"),
            "--state-dir",
            str(tmp_path / "state"),
            "--socket",
            str(api),
            "--metrics-addr",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        listener.settimeout(30)
        assert received(listener) == b"READY=1"
        # Ready means ready: a CLI started by the unit's successor gets answers.
        with Client(api) as client:
            assert client.status()["pid"] == daemon.pid
        daemon.send_signal(signal.SIGTERM)
        assert received(listener) == b"STOPPING=1"
        _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, err.decode()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
