"""A running container's published ports flipped as fast as renames allow.

For a few seconds its squishfile is saved over and over with only
``[[ports]]`` changed: the host port moved around a pool, the protocol
flipped between TCP and UDP, a second port added and removed. Ports change
in place (slirp4netns's forwards, the UDP relays), so the container is never
replaced: the same id and the same pid throughout. At the end exactly the
final ports are held (the TCP one answers HTTP, the UDP one is bound), every
other port of the pool is free again for both protocols, and ``squish ps``
shows the final ports with their bind address. A real daemon, rootless bwrap
and slirp4netns.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually, free_port
from tests.faults.daemon_under_test import Daemon, http_answers

FLIP_SECONDS = 3.0

WEB = """\
[layers]
www = {{ path = "{www}", target = "/www" }}

[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/www"]
"""


def ports(*forwards: tuple[int, int, str]) -> str:
    return "".join(
        f'\n[[ports]]\ncontainer = {container}\nhost = {host}\nprotocol = "{protocol}"\n'
        for host, container, protocol in forwards
    )


def save(directory: Path, text: str) -> None:
    """Write ``web.toml`` as an editor does: a temporary file, renamed over it."""
    temporary = directory / ".web.toml.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.rename(temporary, directory / "web.toml")


def free(port: int, kind: socket.SocketKind) -> bool:
    """Whether the test itself can bind ``port`` on 127.0.0.1 now.

    For TCP with SO_REUSEADDR, as a server does: the test's own request
    leaves a TIME_WAIT connection on the port it asked, which is no holder.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--backoff-initial", "0.2", "--backoff-max", "0.5")
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def test_flipped_ports_change_in_place_and_only_the_last_ones_are_held(
    tmp_path: Path, daemon: Daemon
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("flipped\n")
    www.chmod(0o755)
    web = WEB.format(www=www)
    pool = sorted({free_port() for _ in range(12)})
    first, *hosts, final_tcp, final_udp = pool
    save(daemon.manifests, web + ports((first, 8080, "tcp")))
    eventually(lambda: http_answers(first, b"flipped"))
    before = daemon.detail("web")
    assert before is not None
    seen = {(before["id"], before["pid"])}
    phases: set[str] = set()

    # Someone watches the container meanwhile: its id and pid must never change.
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            detail = daemon.detail("web")
            phases.add("gone" if detail is None else detail["phase"])
            if detail is not None:
                seen.add((detail["id"], detail["pid"]))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    host = itertools.cycle(hosts)
    shapes: Iterator[Callable[[], str]] = itertools.cycle(
        [
            lambda: ports((next(host), 8080, "tcp")),
            lambda: ports((next(host), 8080, "udp")),
            lambda: ports((next(host), 8080, "tcp"), (next(host), 9000, "udp")),
            lambda: ports((next(host), 8080, "udp"), (next(host), 9000, "tcp")),
            lambda: ports((next(host), 8080, "tcp"), (next(host), 9000, "tcp")),
            lambda: "",  # no port at all
        ]
    )
    saves = 0
    deadline = time.monotonic() + FLIP_SECONDS
    while time.monotonic() < deadline:
        save(daemon.manifests, web + next(shapes)())
        saves += 1
    assert saves / FLIP_SECONDS > 200, f"only {saves} saves in {FLIP_SECONDS} s"
    save(daemon.manifests, web + ports((final_tcp, 8080, "tcp"), (final_udp, 9000, "udp")))

    try:
        eventually(lambda: http_answers(final_tcp, b"flipped"), timeout=10)

        def held() -> bool | None:
            detail = daemon.detail("web")
            assert detail is not None
            shown = {(p["host"], p["container"], p["protocol"]) for p in detail["ports"]}
            return shown == {(final_tcp, 8080, "tcp"), (final_udp, 9000, "udp")} or None

        eventually(held, timeout=10)
    finally:
        done.set()
        watcher.join(timeout=10)
    assert seen == {(before["id"], before["pid"])}, seen
    assert phases == {"running"}, phases
    after = daemon.detail("web")
    assert after is not None
    assert (after["id"], after["pid"], after["restarts"]) == (before["id"], before["pid"], 0)

    assert not free(final_tcp, socket.SOCK_STREAM)
    assert not free(final_udp, socket.SOCK_DGRAM)
    for port in [first, *hosts]:
        assert free(port, socket.SOCK_STREAM), f"{port}/tcp still held"
        assert free(port, socket.SOCK_DGRAM), f"{port}/udp still held"
    assert free(final_tcp, socket.SOCK_DGRAM) and free(final_udp, socket.SOCK_STREAM)

    ps = daemon.squish("ps")
    assert ps.returncode == 0, ps.stderr
    (row,) = ps.stdout.splitlines()[1:]
    shown = f"127.0.0.1:{final_tcp}->8080/tcp,127.0.0.1:{final_udp}->9000/udp"
    assert row.split()[6] == shown, ps.stdout
    assert row.split()[2] == str(before["pid"])

    log = daemon.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert log.count("container.started web:") == 1, log[-4000:]
    # The flips were applied as they came, not only the last one.
    updates = log.count("container.ports web:")
    assert updates >= 10, f"{updates} port updates"
    assert "container.failed" not in log, log[-4000:]
    code, _ = daemon.terminate(timeout=20)
    assert code == 0, daemon.log_text()[-4000:]
