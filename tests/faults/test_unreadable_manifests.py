"""The manifest directory made unreadable (``chmod 000``) under a running daemon.

The source keeps its last good state: what runs keeps running, a container
that crashes is still restarted, and the reason is reported once (the log,
an event, ``squish ps -a``'s source line, the ``squish_source_failing``
metric) without a traceback. Readable again, it is said so and edits apply.
A real daemon, rootless bwrap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.api_schema import Event
from squish.errors import SquishError
from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

SLEEPER = 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'
CRASHER = 'network = "none"\n[run]\ncommand = "/bin/sh"\nargs = ["-c", "sleep 0.3; exit 3"]\n'


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(
        tmp_path, "--resync", "0.5", "--backoff-initial", "0.2", "--backoff-max", "0.5"
    )
    try:
        running.wait_ready()
        yield running
    finally:
        running.manifests.chmod(0o755)
        running.kill()


def collect_events(daemon: Daemon) -> list[Event]:
    """Every event from now on, gathered in the background until the daemon goes."""
    events: list[Event] = []

    def gather() -> None:
        try:
            with daemon.client(timeout=60) as client:
                events.extend(client.events())
        except SquishError:
            pass  # the daemon went away: the stream ends

    threading.Thread(target=gather, daemon=True).start()
    return events


def restarts(daemon: Daemon, name: str) -> int:
    detail = daemon.detail(name)
    return 0 if detail is None else int(detail["restarts"])


def test_an_unreadable_directory_keeps_the_last_good_state(daemon: Daemon) -> None:
    (daemon.manifests / "sleeper.toml").write_text(SLEEPER)
    (daemon.manifests / "crasher.toml").write_text(CRASHER)
    eventually(lambda: restarts(daemon, "crasher") >= 1 or None)
    events = collect_events(daemon)
    # The stream is open once it brings the crasher's next event: the chmod is
    # seen at once (an event of the directory), before a stream opened later.
    eventually(lambda: events or None)

    daemon.manifests.chmod(0o000)
    before = restarts(daemon, "crasher")
    # Crashes go on being restarted, round after round of failed reads.
    eventually(lambda: restarts(daemon, "crasher") >= before + 3 or None)
    assert daemon.phase("sleeper") == "running"

    ps = daemon.squish("ps", "-a")
    assert ps.returncode == 0, ps.stderr
    assert "sleeper" in ps.stdout and "crasher" in ps.stdout
    assert "source manifests" in ps.stderr
    assert "ERROR" in ps.stderr and "Permission denied" in ps.stderr
    assert 'squish_source_failing{source="manifests"} 1.0' in daemon.metrics()

    log = daemon.log_text()
    assert "Traceback" not in log
    assert log.count("cannot read the directory") == 1, log
    failed = [event for event in events if event["kind"] == "source.failed"]
    assert len(failed) == 1, events
    assert failed[0]["name"] == "manifests"
    assert "Permission denied" in failed[0]["message"]

    daemon.manifests.chmod(0o755)
    eventually(lambda: any(e["kind"] == "source.recovered" for e in events) or None)
    assert 'squish_source_failing{source="manifests"} 0.0' in daemon.metrics()
    (daemon.manifests / "late.toml").write_text(SLEEPER)
    eventually(lambda: daemon.phase("late") == "running" or None)
    assert "Traceback" not in daemon.log_text()
    code, _ = daemon.terminate(timeout=20)
    assert code == 0
