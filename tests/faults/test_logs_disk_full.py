"""A full log filesystem: containers go on, output is dropped and counted, logging resumes.

The fault is real: the daemon's logs directory is a small tmpfs, filled up
to the last byte while two chatty containers write. Mounting a tmpfs takes
no root: the daemon runs in a user and mount namespace of its own
(``unshare --user --map-root-user --mount``), where the tmpfs is mounted on
``state/logs``; squish refuses to run as uid 0, so a nested user namespace
(``unshare --user --map-user``) maps the test's own uid back before the
daemon starts, and it runs as the test's user, its containers as in any
other test. The test reaches the tmpfs (to fill it, and to free it again)
through ``/proc/PID/root`` of the daemon, which enters its mount namespace.

While the disk is full both containers keep running under the same ids,
the API answers, ``/metrics`` counts the dropped bytes of each, and the
daemon says so once per container. When space comes back, each log goes
on with a line saying how much was dropped, and its time index with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from squish.cli.client import Client
from tests.conftest import eventually, free_port
from tests.test_daemon import wait_for_socket

REPO = Path(__file__).resolve().parents[2]
CHATTY = (
    'network = "none"\n[run]\ncommand = "/bin/sh"\n'
    'args = ["-c", "i=0; while :; do echo \\"line $i\\"; i=$((i+1)); usleep 2000; done"]\n'
)
NAMES = ("chatty-a", "chatty-b")


class Daemon:
    def __init__(self, tmp_path: Path) -> None:
        self.socket = tmp_path / "d.sock"
        self.logs = tmp_path / "state" / "logs"
        self.logs.mkdir(parents=True)
        self.manifests = tmp_path / "manifests"
        self.manifests.mkdir()
        self.metrics_port = free_port()
        unshare = shutil.which("unshare")
        assert unshare is not None, "unshare (util-linux) is needed"
        # mount the tmpfs as the namespace's root, then map our own uid back.
        script = (
            'mount -t tmpfs -o size=1m,mode=0700 squish-logs "$1" && shift && '
            f"exec {unshare} --user --map-user={os.getuid()} --map-group={os.getgid()} -- "
            '"$@"'
        )
        argv = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]
        argv += [str(self.logs), sys.executable, "-m", "squish", "daemon"]
        argv += ["--manifests", str(self.manifests), "--state-dir", str(tmp_path / "state")]
        argv += ["--socket", str(self.socket)]
        argv += ["--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--resync", "0.5"]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def inside(self, path: Path) -> Path:
        """``path`` as the daemon sees it, in its mount namespace."""
        return Path(f"/proc/{self.process.pid}/root{path}")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                samples[sample] = float(value)
        return samples

    def dropped(self, name: str) -> float:
        key = f'squish_log_bytes_dropped_total{{container="{name}",reason="error"}}'
        return self.metrics().get(key, 0.0)


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path)
    try:
        wait_for_socket(running.socket, running.process)
        # Really on a tmpfs of its own, seen by the daemon and not by us.
        assert running.inside(running.logs).is_dir()
        assert os.statvfs(running.inside(running.logs)).f_blocks * 4096 <= 2 * 1024 * 1024
        yield running
    finally:
        running.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.process.communicate(timeout=30)
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


def fill(path: Path) -> int:
    """Write ``path`` until its filesystem is full, to the last byte; the bytes it took."""
    written = 0
    with path.open("wb", buffering=0) as filler:
        for block in (b"\0" * 65536, b"\0"):
            while True:
                try:
                    count = filler.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
                written += count or 0
    return written


def rows(client: Client) -> dict[str, tuple[str, str | None]]:
    return {row["name"]: (row["phase"], row["id"]) for row in client.containers()}


def test_a_full_log_disk_stops_nothing_and_logging_resumes(daemon: Daemon) -> None:
    for name in NAMES:
        (daemon.manifests / f"{name}.toml").write_text(CHATTY)
    client = Client(daemon.socket)

    def all_running() -> dict[str, tuple[str, str | None]] | None:
        found = rows(client)
        return found if all(found.get(name, ("",))[0] == "running" for name in NAMES) else None

    before = eventually(all_running)
    logs = {name: daemon.inside(daemon.logs / f"{name}.log") for name in NAMES}
    eventually(lambda: all(path.stat().st_size > 100 for path in logs.values()) or None)

    filler = daemon.inside(daemon.logs / "filler")
    assert fill(filler) > 0
    assert os.statvfs(filler.parent).f_bavail == 0

    # Both keep running, the API answers, and their output is dropped and counted.
    time.sleep(2)
    assert rows(client) == before
    for row in client.containers():
        assert row["pid"] is not None
        os.kill(row["pid"], 0)  # still there
    eventually(lambda: all(daemon.dropped(name) > 1000 for name in NAMES) or None)
    metrics = daemon.metrics()
    assert metrics['squish_containers{state="running"}'] == 2
    assert client.status()["pid"] == daemon.process.pid
    assert daemon.process.poll() is None
    growing = {name: daemon.dropped(name) for name in NAMES}
    time.sleep(0.5)
    assert all(daemon.dropped(name) > growing[name] for name in NAMES)  # the pipe drains

    # Space comes back: each log goes on, saying what it dropped.
    filler.unlink()
    freed = time.time()
    notice = re.compile(rb"^squish: (\d+) bytes of output dropped: No space left on device$", re.M)

    def resumed(name: str) -> bool:
        data = logs[name].read_bytes()
        found = notice.search(data)
        return found is not None and data[found.end() :].count(b"\n") > 20

    eventually(lambda: all(resumed(name) for name in NAMES) or None)
    settled = {name: daemon.dropped(name) for name in NAMES}
    time.sleep(0.5)
    assert {name: daemon.dropped(name) for name in NAMES} == settled
    for name in NAMES:
        data = logs[name].read_bytes()
        said = int(notice.findall(data)[0])
        assert 0 < said <= settled[name]
        # squish logs shows it, and the time index goes on too: --since the
        # moment space came back finds the notice and the lines after it.
        stamped = b"".join(client.logs(name, timestamps=True, since=freed)).splitlines()
        assert any(b"bytes of output dropped: No space left" in line for line in stamped)
        assert len(stamped) > 10
    assert rows(client) == before
    client.close()

    daemon.process.send_signal(signal.SIGTERM)
    _, err = daemon.process.communicate(timeout=30)
    assert daemon.process.returncode == 0
    text = err.decode()
    for name in NAMES:
        warnings = [
            line for line in text.splitlines() if f"container {name}: cannot write its log" in line
        ]
        assert len(warnings) == 1, text
        assert "No space left on device" in warnings[0]
        assert f"container {name}: its log is written again" in text
    assert "Traceback" not in text
