"""SIGTERM to a daemon running 1000 containers: it stops them all and exits 0.

Within the stop timeout plus 5 s (the issue's bound: every container gets
SIGTERM at once, its grace at most, then SIGKILL; the daemon's own shutdown
on top), with nothing of its tree left. ``network = "none"`` sleepers on
the built-in base, dropped at once; the time until all run and the time to
stop are printed (``-s`` shows them). A quiet container holds three files
open in the daemon, so 1000 fit under the usual open-files limits.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.daemon_under_test import Daemon, alive, descendants

COUNT = 1000
STOP_TIMEOUT = 10.0  # the daemon's default --stop-timeout

SLEEPER = 'network = "none"\n[run]\ncommand = "sleep"\nargs = ["3600"]\n'


@pytest.mark.timeout(300)
def test_sigterm_with_1000_running_exits_0_in_time_and_leaves_nothing(
    tmp_path: Path, rootless: None
) -> None:
    daemon = Daemon(tmp_path, "--stop-timeout", f"{STOP_TIMEOUT:g}")
    try:
        daemon.wait_ready()
        began = time.monotonic()
        staging = tmp_path / "staging"
        staging.mkdir()
        for index in range(COUNT):
            (staging / f"c-{index:04d}.toml").write_text(SLEEPER)
        for entry in sorted(staging.iterdir()):
            entry.rename(daemon.manifests / entry.name)
        deadline = began + 180
        while True:
            with daemon.client() as client:
                running = sum(1 for row in client.containers() if row["phase"] == "running")
            if running == COUNT:
                break
            assert time.monotonic() < deadline, f"{running} of {COUNT} running"
            time.sleep(0.5)
        all_running = time.monotonic() - began
        tree = descendants(daemon.process.pid)
        assert len(tree) >= 2 * COUNT  # bwrap and the sandbox's pid 1 each, at least

        code, took = daemon.terminate(timeout=STOP_TIMEOUT + 5)
        print(f"\n{COUNT} running after {all_running:.1f} s; SIGTERM: exit {code} in {took:.1f} s")
        assert code == 0, daemon.log_text()[-2000:]
        assert took <= STOP_TIMEOUT + 5
        left = [pid for pid in tree if alive(pid)]
        assert not left, f"{len(left)} processes of the daemon's tree are left"
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()
