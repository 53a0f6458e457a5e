"""Fault: the network host dies. A real daemon, rootless, and kill -9.

Containers on named networks share one helper process (its namespaces hold
the bridges) and one slirp4netns (their way out and their forwards). Either
killed, every container on a network has lost its network: the daemon must
notice at once, end them saying why, and start them again on a new network
host, where they find each other by name again and their ports answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from squish.cli.client import Client
from tests.conftest import eventually, free_port
from tests.faults.daemon_under_test import children_of, http_answers, slirps_of

DB = """\
networks = ["backend"]
[layers]
www = {{ path = "{www}", target = "/www" }}
[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/www"]
[[ports]]
container = 8080
host = {port}
"""

APP = """\
networks = ["backend"]
[layers]
out = {{ path = "{out}", target = "/out", rw = true }}
[run]
command = "/bin/sh"
args = ["-c", "while :; do wget -qO /tmp/got http://db:8080/ && cp /tmp/got /out/; sleep 0.1; done"]
"""


def helpers_of(pid: int) -> list[int]:
    """The live network helpers whose parent is ``pid``."""
    return children_of(pid, cmdline=b"netns_helper.py")


@pytest.mark.parametrize("victim", ["helper", "slirp4netns"])
def test_a_killed_network_host_restarts_its_containers_on_a_new_one(
    tmp_path: Path, running_daemon: tuple[subprocess.Popen[bytes], Path], victim: str
) -> None:
    process, sock = running_daemon
    www, out = tmp_path / "www", tmp_path / "out"
    for directory in (www, out):
        directory.mkdir()
        directory.chmod(0o755)
    (www / "index.html").write_text("found by name\n")
    port = free_port()
    (tmp_path / "manifests" / "db.toml").write_text(DB.format(www=www, port=port))
    (tmp_path / "manifests" / "app.toml").write_text(APP.format(out=out))
    got = out / "got"
    eventually(lambda: got.exists() and got.read_text() == "found by name\n")
    eventually(lambda: http_answers(port, b"found by name"))
    with Client(sock) as client:
        before = {c["name"]: c["id"] for c in client.containers()}
    (helper,) = helpers_of(process.pid)
    (slirp,) = slirps_of(process.pid)

    os.kill(helper if victim == "helper" else slirp, signal.SIGKILL)

    def restarted() -> bool:
        with Client(sock) as client:
            rows = client.containers()
        again = all(r["phase"] == "running" and r["id"] != before[r["name"]] for r in rows)
        return again and len(rows) == 2

    eventually(restarted, timeout=30)
    got.unlink(missing_ok=True)  # busybox cp may be between its unlink and its create
    eventually(lambda: got.exists() and got.read_text() == "found by name\n", timeout=15)
    eventually(lambda: http_answers(port, b"found by name"), timeout=15)
    with Client(sock) as client:
        assert {c["name"]: c["restarts"] for c in client.containers()} == {"db": 1, "app": 1}
    (new_helper,) = helpers_of(process.pid)
    (new_slirp,) = slirps_of(process.pid)
    assert (new_helper, new_slirp) != (helper, slirp)
    assert new_helper != helper and new_slirp != slirp  # the host is new as a whole

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    log = err.decode()
    said = (
        "the network helper died"
        if victim == "helper"
        else "the networks' slirp4netns was killed by SIGKILL"
    )
    for name in ("db", "app"):
        exits = [line for line in log.splitlines() if f"container.exited {name}:" in line]
        assert len(exits) == 1, log
        assert said in exits[0], exits[0]
