"""scripts/demo's daemon part: a Ctrl-C or SIGTERM stops the daemon cleanly.

scripts/demo runs the daemon through ``run_daemon`` of scripts/run-daemon,
as root (with ``--user``, through setpriv) and as an ordinary user alike;
the signal handling is the same code either way, and is tested here as the
ordinary user the suite runs as: real daemon, real containers, the signal
sent to the process that was started, as a shell or a service manager would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import Client
from squish.errors import SquishError
from tests.conftest import eventually, free_port

REPO = Path(__file__).resolve().parent.parent
RUN_DAEMON = REPO / "scripts" / "run-daemon"

SLEEPER = """\
network = "none"

[layers]
base = "busybox"

[run]
command = "sleep"
args = ["3600"]
"""

# Ignores SIGTERM: only the SIGKILL at the end of the stop grace ends it.
STUBBORN = """\
network = "none"

[layers]
base = "busybox"

[run]
command = "sh"
args = ["-c", "trap '' TERM; while true; do sleep 1; done"]
"""

WEB = """\
[layers]
base = "busybox"

[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/"]

[[ports]]
container = 8080
host = {port}
"""


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """(pid, comm) of every process of ours started for ``marker``.

    That is, whose command line mentions it, or that runs below one that does
    (bwrap, whose options, host paths included, are kept out of its argv).
    """
    found = []
    parents: dict[int, int] = {}
    mentions: set[int] = set()
    comms: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields[0] == "Z":
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        comms[pid] = comm
        if marker.encode() in argv:
            mentions.add(pid)
    for pid, comm in comms.items():
        ancestor: int | None = pid
        seen = set()
        while ancestor is not None and ancestor not in seen:
            if ancestor in mentions:
                found.append((pid, comm))
                break
            seen.add(ancestor)
            ancestor = parents.get(ancestor)
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


class Demo:
    """scripts/run-daemon running ``squish daemon`` on ``work``, as scripts/demo runs it."""

    def __init__(self, work: Path, stop_timeout: float) -> None:
        self.work = work
        self.socket = work / "squish.sock"
        self.output = work / "output"
        self.manifests = work / "manifests"
        self.manifests.mkdir()
        argv = [
            "bash",
            str(RUN_DAEMON),
            "--stop-timeout",
            f"{stop_timeout:g}",
            "--",
            sys.executable,
            "-m",
            "squish",
            "daemon",
            "--manifests",
            str(self.manifests),
            "--state-dir",
            str(work / "state"),
            "--socket",
            str(self.socket),
            "--metrics-addr",
            "off",
            "--stop-timeout",
            f"{stop_timeout:g}",
        ]
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def client(self) -> Client:
        return Client(self.socket)

    def running(self, count: int) -> list[dict[str, object]] | None:
        assert self.process.poll() is None, self.output.read_text()
        if not self.socket.exists():
            return None
        with self.client() as client, contextlib.suppress(SquishError):
            statuses = client.containers()
            if sum(s.get("phase") == "running" for s in statuses) == count:
                return statuses
        return None

    def daemon_pid(self) -> int:
        with self.client() as client:
            return int(client.status()["pid"])


@pytest.fixture
def demo(tmp_path: Path, rootless: None) -> Iterator[Demo]:
    started = Demo(tmp_path, stop_timeout=3)
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait(timeout=30)


def start_three(demo: Demo) -> int:
    (demo.manifests / "sleeper.toml").write_text(SLEEPER)
    (demo.manifests / "stubborn.toml").write_text(STUBBORN)
    (demo.manifests / "web.toml").write_text(WEB.format(port=free_port()))
    eventually(lambda: demo.running(3), timeout=30)
    return demo.daemon_pid()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_started_process_stops_the_daemon_and_every_container(
    demo: Demo, signum: signal.Signals
) -> None:
    daemon_pid = start_three(demo)
    marker = str(demo.work)
    # bwrap for each container, slirp4netns for the networked one.
    started = processes_mentioning(marker)
    assert {"bwrap", "slirp4netns"} <= {comm for _, comm in started}
    # The daemon is the wrapper's child, in a process group of its own, so
    # that a Ctrl-C on a terminal reaches the wrapper alone.
    assert daemon_pid != demo.process.pid
    assert os.getpgid(daemon_pid) != os.getpgid(demo.process.pid)

    began = time.monotonic()
    demo.process.send_signal(signum)
    assert demo.process.wait(timeout=45) == 0, demo.output.read_text()
    took = time.monotonic() - began

    output = demo.output.read_text()
    assert "squish: the daemon exited with status 0" in output
    assert "SIGTERM: stopping every container" in output
    # The stubborn container got its whole grace (3 s) before its SIGKILL:
    # the wrapper waited for the daemon's stop instead of cutting it short.
    assert took >= 3
    assert gone(daemon_pid)
    assert processes_mentioning(marker) == []
    assert all(gone(pid) for pid, _ in started)  # not even reparented elsewhere


def test_a_second_signal_while_stopping_does_not_cut_the_stop_short(demo: Demo) -> None:
    daemon_pid = start_three(demo)
    demo.process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the daemon is waiting out the stubborn container's grace
    demo.process.send_signal(signal.SIGTERM)
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=45) == 0, demo.output.read_text()
    output = demo.output.read_text()
    assert "squish: still stopping the containers" in output
    assert output.count("SIGTERM: stopping every container") == 1
    assert gone(daemon_pid)
    assert processes_mentioning(str(demo.work)) == []


def test_the_daemon_failing_to_start_is_the_wrappers_status(tmp_path: Path, rootless: None) -> None:
    done = subprocess.run(
        ["bash", str(RUN_DAEMON), "--", "sh", "-c", "exit 3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3
    assert "the daemon exited with status 3" in done.stderr


def test_the_demo_runs_its_daemon_through_run_daemon_as_root_or_not() -> None:
    demo = (REPO / "scripts" / "demo").read_text()
    assert 'source "$here/scripts/run-daemon"' in demo
    calls = [line for line in demo.splitlines() if line.lstrip().startswith("run_daemon ")]
    assert len(calls) == 2 and "--user" in calls[0]
    # Nothing execs the daemon (or runuser) in place of the script.
    assert "exec " not in demo
