"""Clients that never finish their request headers are cut off; everyone else is served.

A real daemon's API socket, raw unix-socket clients: one connects and sends
nothing, one sends half a request head and then a byte every half second.
Both must be disconnected a few seconds after connecting (uvicorn alone
keeps them forever), while ordinary requests go on being answered.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from squish.cli.client import Client
from squish.daemon.api.server import HEADER_TIMEOUT
from tests.test_daemon import daemon, wait_for_socket

CUT_OFF_WITHIN = HEADER_TIMEOUT + 3


def held_for(path: Path, first: bytes, trickle: bytes) -> float:
    """Seconds until the server closes a connection that sends ``first``, then ``trickle``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        connected = time.monotonic()
        client.settimeout(0.5)
        if first:
            client.sendall(first)
        sent = 0
        while time.monotonic() - connected < CUT_OFF_WITHIN + 5:
            try:
                if client.recv(4096) == b"":
                    return time.monotonic() - connected
            except TimeoutError:
                pass
            except ConnectionResetError:
                return time.monotonic() - connected
            if trickle:
                try:
                    client.send(trickle[sent % len(trickle) : sent % len(trickle) + 1])
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - connected
                sent += 1
        return float("inf")


def test_silent_and_trickling_clients_are_cut_off_while_others_are_served(
    tmp_path: Path, rootless: None
) -> None:
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    path = tmp_path / "d.sock"
    try:
        wait_for_socket(path, process)
        held: dict[str, float] = {}
        clients = [
            threading.Thread(target=lambda: held.update(silent=held_for(path, b"", b""))),
            threading.Thread(
                target=lambda: held.update(
                    trickling=held_for(
                        path, b"GET /v1/status HTTP/1.1\r\nHost: squish\r\n", b"X-Slow: aaaa"
                    )
                )
            ),
        ]
        for thread in clients:
            thread.start()
        answered = 0
        with Client(path) as other:
            while any(thread.is_alive() for thread in clients):
                started = time.monotonic()
                assert other.status()["pid"] == process.pid
                assert time.monotonic() - started < 2
                answered += 1
                time.sleep(0.2)
        for thread in clients:
            thread.join()
        assert answered >= 10
        assert 0 < held["silent"] <= CUT_OFF_WITHIN, held
        assert HEADER_TIMEOUT - 1 <= held["trickling"] <= CUT_OFF_WITHIN, held
        # A client that takes its time between requests, within the limits, still works.
        with Client(path) as patient:
            patient.status()
            time.sleep(1)
            assert patient.status()["pid"] == process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
