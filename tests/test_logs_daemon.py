"""``squish logs`` end to end: a real daemon, a real container (rootless bwrap), the real CLI.

A container prints six lines 0.4 s apart; the times ``-t`` shows are then fed
back into ``--since`` and ``--until``, as a user would copy them. Bad
``--since`` values are refused by the CLI before it even looks for a daemon.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from test_daemon import daemon, wait_for_socket

from squish.main import main
from tests.conftest import eventually

REPO = Path(__file__).resolve().parent.parent
TALKER = (
    'network = "none"\n[run]\ncommand = "/bin/sh"\n'
    'args = ["-c", "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.4; done; sleep 1000"]\n'
)
LINES = [f"line {n}" for n in range(1, 7)]


@pytest.fixture
def sock(tmp_path: Path, rootless: None) -> Iterator[Path]:
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    path = tmp_path / "d.sock"
    try:
        wait_for_socket(path, process)
        yield path
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def squish(sock: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squish", "--socket", str(sock), "logs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def out(sock: Path, *args: str) -> list[str]:
    done = squish(sock, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_logs_since_until_timestamps_tail(tmp_path: Path, sock: Path) -> None:
    started = time.time()
    (tmp_path / "manifests" / "talker.toml").write_text(TALKER)
    eventually(lambda: out(sock, "talker") == LINES or None)

    stamped = out(sock, "-t", "talker")
    stamps = [line.split(" ", 1)[0] for line in stamped]
    assert [line.split(" ", 1)[1] for line in stamped] == LINES
    times = [datetime.fromisoformat(stamp).timestamp() for stamp in stamps]
    assert all(stamp.endswith("Z") and len(stamp) == 24 for stamp in stamps)
    assert started - 1 <= times[0] and times[-1] <= time.time()
    # Lines written 0.4 s apart are dated as they came, not all at once when read
    # (2 s from first to last; a busy machine may delay the first a little).
    assert all(earlier < later for earlier, later in itertools.pairwise(times))
    assert times[-1] - times[0] >= 1.0

    assert out(sock, "--since", stamps[3], "talker") == LINES[3:]
    assert out(sock, "--until", stamps[1], "talker") == LINES[:2]
    assert out(sock, "--since", stamps[1], "--until", stamps[2], "talker") == LINES[1:3]
    assert out(sock, "--since", f"{times[2]:.3f}", "talker") == LINES[2:]  # a Unix time
    assert out(sock, "--since", "1h", "talker") == LINES
    assert out(sock, "--since", "0s", "talker") == []  # all written before now
    assert out(sock, "--until", "1h", "talker") == []  # none an hour old
    assert out(sock, "-n", "2", "talker") == LINES[-2:]
    assert out(sock, "--tail", "2", "-t", "talker") == stamped[-2:]
    (record,) = [json.loads(line) for line in out(sock, "--json", "-n", "1", "talker")]
    assert record == {"name": "talker", "line": "line 6", "at": pytest.approx(times[-1])}

    # Following with --until ends by itself, once until has passed.
    begun = time.monotonic()
    assert out(sock, "-f", "--until", f"{time.time() + 1:.3f}", "talker") == LINES
    assert 0.8 < time.monotonic() - begun < 10

    # The log file itself stays raw, for cat.
    logs = tmp_path / "state" / "logs"
    assert (logs / "talker.log").read_text().splitlines() == LINES
    assert (logs / "talker.log.times").stat().st_size > 0


def test_logs_of_an_unknown_container(sock: Path) -> None:
    done = squish(sock, "nosuch")
    assert done.returncode == 1
    assert done.stderr == "squish: no such container 'nosuch'\n"
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--since", "x"],
            "squish: --since: expected a time (2026-12-01T10:00:00Z), a Unix time or a "
            "duration (10m), got 'x'\n",
            id="since",
        ),
        pytest.param(
            ["--until", "10 minutes"],
            "squish: --until: expected a time (2026-12-01T10:00:00Z), a Unix time or a "
            "duration (10m), got '10 minutes'\n",
            id="until",
        ),
        pytest.param(
            ["-n", "-2"], "squish: --tail must be 0 or more (or -1: all), got -2\n", id="tail"
        ),
    ],
)
def test_bad_values_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # No daemon at that socket: the values are checked first.
    assert main(["--socket", str(tmp_path / "none.sock"), "logs", *args, "web"]) == 1
    assert capsys.readouterr().err == message
