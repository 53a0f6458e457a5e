"""A container writing as fast as it can: the daemon's cost is bounded, the excess counted.

A real daemon with a low log rate (64 KiB/s) and one container running
busybox ``yes``. Over a few seconds the log takes about the rate and no
more, the rest is counted in ``squish_log_bytes_dropped_total``, each second
that dropped output says so in the log, ``squish logs`` (with ``-t`` and
``--since``) still works, and the daemon spends a fraction of a core
(reading every line as it came cost it a whole one). The rate limit's
own rules (whole lines, one notice where the output resumes, a last one
when the container ends) are checked on a log with a clock of the test's.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx

from squish.cli.client import Client
from squish.runtime.logs import DropReason, RotatingLog
from tests.conftest import eventually, free_port
from tests.test_daemon import daemon, wait_for_socket

RATE = 65536
SECONDS = 3.0
YES = 'network = "none"\n[run]\ncommand = "/bin/busybox"\nargs = ["yes"]\n'
NOTICE = re.compile(
    rb"^squish: (\d+) bytes of output dropped: over the log rate limit of 64 KiB/s$", re.M
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") and 'container="yes"' in line
    )


def test_a_chatty_container_costs_little_and_its_excess_is_counted(
    tmp_path: Path, rootless: None
) -> None:
    port = free_port()
    process = daemon(
        tmp_path,
        "d",
        "--metrics-addr",
        f"127.0.0.1:{port}",
        state=tmp_path / "state",
        SQUISH_LOG_RATE=str(RATE),
    )
    try:
        wait_for_socket(tmp_path / "d.sock", process)
        with Client(tmp_path / "d.sock") as client:
            (tmp_path / "manifests" / "yes.toml").write_text(YES)
            eventually(
                lambda: (
                    any(r["name"] == "yes" and r["phase"] == "running" for r in client.containers())
                    or None
                )
            )
            time.sleep(0.5)
            since = time.time()
            kept_before = metric(port, "squish_log_bytes_total")
            dropped_before = metric(port, "squish_log_bytes_dropped_total")
            cpu_before = cpu_seconds(process.pid)
            began = time.monotonic()
            time.sleep(SECONDS)
            cpu = (cpu_seconds(process.pid) - cpu_before) / (time.monotonic() - began)
            kept = metric(port, "squish_log_bytes_total") - kept_before
            dropped = metric(port, "squish_log_bytes_dropped_total") - dropped_before

            # Within the budget (one second more for the windows at each end,
            # and the notice lines), and the rest counted.
            assert cpu < 0.15, f"the daemon used {cpu:.0%} of a core"
            assert kept <= RATE * (SECONDS + 2)
            assert kept >= RATE * (SECONDS - 1)
            assert dropped > 10 * kept

            log = (tmp_path / "state" / "logs" / "yes.log").read_bytes()
            said = [int(n) for n in NOTICE.findall(log)]
            assert len(said) >= SECONDS - 1
            assert all(n > 0 for n in said)
            # squish logs: the whole log, and dated lines since the start.
            lines = b"".join(client.logs("yes", tail=5)).splitlines()
            assert len(lines) == 5
            stamped = b"".join(client.logs("yes", timestamps=True, since=since)).splitlines()
            assert any(NOTICE.search(line.split(b" ", 1)[1]) for line in stamped)
            first = datetime.fromisoformat(stamped[0].split(b" ", 1)[0].decode()).timestamp()
            assert first >= since - 0.002
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    warnings = [
        line for line in err.decode().splitlines() if "container yes writes more than" in line
    ]
    assert len(warnings) == 1


class Counts:
    def __init__(self) -> None:
        self.written = 0
        self.dropped: dict[str, int] = {}

    def log_written(self, container: str, size: int) -> None:
        self.written += size

    def log_dropped(self, container: str, size: int, reason: DropReason) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + size


def test_over_the_rate_whole_lines_are_dropped_and_said(tmp_path: Path) -> None:
    now = [100.0]
    counts = Counts()
    log = RotatingLog(tmp_path / "c.log", rate=100, counter=counts, monotonic=lambda: now[0])
    line = {c: c.encode() * 39 + b"\n" for c in "abc"}

    log.write(line["a"] + line["b"] + line["c"])  # 120 bytes: a and b fit in 100
    log.write(b"d\n")  # the same second: its budget is spent
    now[0] += 1.0
    log.write(b"e\n")
    log.write(b"f" * 200)  # the next second's budget is 98 bytes: no line end in it
    log.finish()

    notice = b"squish: %d bytes of output dropped: over the log rate limit of 100 bytes/s\n"
    expected = line["a"] + line["b"] + notice % 42 + b"e\n" + b"f" * 98 + b"\n" + notice % 102
    assert (tmp_path / "c.log").read_bytes() == expected
    assert counts.dropped == {"rate": 42 + 102}
    assert counts.written == 80 + 2 + 98
