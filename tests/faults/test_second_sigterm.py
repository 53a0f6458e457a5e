"""A second SIGTERM (or an impatient second Ctrl-C) while the daemon stops its containers.

The first SIGTERM starts the shutdown: every container gets SIGTERM, its
grace (``--stop-timeout``), then SIGKILL. A second one in the middle must
not kill the daemon on the spot (Python's default action once nothing
catches the signal), which would cut the grace short: the daemon still exits
0 once the grace is over, with nothing left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.faults.daemon_under_test import Daemon, alive, descendants

STUBBORN = """\
network = "none"
[run]
command = "/bin/sh"
args = ["-c", "trap '' TERM; while true; do sleep 1; done"]
"""


def test_a_second_sigterm_while_stopping_does_not_cut_the_grace_short(
    tmp_path: Path, rootless: None
) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "stubborn.toml").write_text(STUBBORN)
    daemon = Daemon(tmp_path, "--stop-timeout", "3")
    try:
        daemon.wait_ready()
        deadline = time.monotonic() + 20
        while daemon.phase("stubborn") != "running":
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.1)
        tree = descendants(daemon.process.pid)
        assert tree
        began = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        # Impatient: SIGTERM and Ctrl-C again and again, through every stage
        # of the shutdown, until the daemon is gone.
        again = [signal.SIGTERM, signal.SIGINT]
        while daemon.process.poll() is None and time.monotonic() - began < 20:
            time.sleep(0.3)
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.process.pid, again[0])
            again.reverse()
        code = daemon.process.wait(timeout=5)
        took = time.monotonic() - began
        assert code == 0, daemon.log_text()[-2000:]
        assert took >= 2.9, f"the grace was cut short: exited after {took:.1f} s"
        assert not [pid for pid in tree if alive(pid)]
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()
