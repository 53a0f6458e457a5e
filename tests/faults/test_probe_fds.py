"""Fault: the sockets made ahead for http checks would take every fd the daemon may open.

A daemon under a low open-files limit (``prlimit``, hard and soft), with
containers checked by ``http`` every 100 ms: each would hold 32 sockets
made ahead, more than the limit leaves. Within their budget (a quarter of
the limit) the checks keep passing, the daemon stays under its limit, its
API answers and one more container starts.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.faults.daemon_under_test import Daemon

LIMIT = 400
COUNT = 12  # 12 x 32 sockets would be 384 of the 400
CHECKED = """\
network = "none"
[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/etc"]
[health]
http = { port = 8080, path = "/os-release" }
interval = "100ms"
"""


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(120)
def test_sockets_for_checks_leave_the_daemon_its_fds(tmp_path: Path, rootless: None) -> None:
    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is needed"
    daemon = Daemon(tmp_path, prefix=[prlimit, f"--nofile={LIMIT}:{LIMIT}", "--"])
    try:
        daemon.wait_ready()
        for index in range(COUNT):
            (daemon.manifests / f"web{index}.toml").write_text(CHECKED)
        deadline = time.monotonic() + 60
        most = 0
        while True:
            most = max(most, fds(daemon.process.pid))
            with daemon.client() as client:
                healthy = [row for row in client.containers() if row.get("health") == "healthy"]
            if len(healthy) == COUNT:
                break
            assert time.monotonic() < deadline, f"{len(healthy)} of {COUNT} healthy"
            time.sleep(0.2)
        # Checks at full rate for a while: every batch asks for 32.
        for _ in range(15):
            most = max(most, fds(daemon.process.pid))
            time.sleep(0.2)
        assert most < LIMIT - 50, f"the daemon held {most} fds of {LIMIT}"
        (daemon.manifests / "late.toml").write_text(
            'network = "none"\n[run]\ncommand = "sleep"\nargs = ["1000"]\n'
        )
        deadline = time.monotonic() + 20
        while daemon.phase("late") != "running":
            assert time.monotonic() < deadline, daemon.log_text()[-2000:]
            time.sleep(0.1)
        with daemon.client() as client:
            rows = client.containers()
        assert sum(row.get("health") == "healthy" for row in rows) == COUNT
        log = daemon.log_text()
        assert "unhealthy" not in log and "Too many open files" not in log
        code, _ = daemon.terminate(timeout=20)
        assert code == 0
    finally:
        daemon.kill()
