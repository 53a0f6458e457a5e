"""Fault: a container's slirp4netns dies. A real daemon, rootless, and kill -9.

slirp4netns is the container's network: its host ports are slirp4netns's
sockets. Killed (or crashed), the container runs on without a network, so
the daemon must notice at once, as it notices the container's own exit,
end the container and start it again with a new slirp4netns: the port
answers again, the exit and the restart are recorded, and a port edit works.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from squish.cli.client import Client
from tests.conftest import eventually, free_port
from tests.faults.daemon_under_test import http_answers, slirps_of

WEB = """\
[layers]
www = {{ path = "{www}", target = "/www" }}

[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/www"]

[[ports]]
container = 8080
host = {port}
"""


def test_a_killed_slirp4netns_restarts_its_container_with_a_network(
    tmp_path: Path, running_daemon: tuple[subprocess.Popen[bytes], Path]
) -> None:
    process, sock = running_daemon
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("still here\n")
    www.chmod(0o755)
    port = free_port()
    (tmp_path / "manifests" / "web.toml").write_text(WEB.format(www=www, port=port))
    eventually(lambda: http_answers(port, b"still here"))
    with Client(sock) as client:
        (before,) = client.containers()
    (slirp,) = slirps_of(process.pid)

    os.kill(slirp, signal.SIGKILL)

    eventually(lambda: http_answers(port, b"still here"), timeout=15)
    with Client(sock) as client:
        (after,) = client.containers()
    assert after["phase"] == "running"
    assert after["id"] != before["id"]
    assert after["restarts"] == 1
    assert len(slirps_of(process.pid)) == 1
    metrics_addr = process.args[process.args.index("--metrics-addr") + 1]  # type: ignore[index, union-attr]
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as answer:
        assert b'squish_container_restarts_total{container="web"} 1.0' in answer.read()

    # The new network takes port edits.
    moved = free_port()
    (tmp_path / "manifests" / "web.toml").write_text(WEB.format(www=www, port=moved))
    eventually(lambda: http_answers(moved, b"still here"))
    assert http_answers(port, b"still here") is None

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    exits = [line for line in err.decode().splitlines() if "container.exited web:" in line]
    assert len(exits) == 1, err.decode()
    assert "its network helper slirp4netns was killed by SIGKILL" in exits[0]
