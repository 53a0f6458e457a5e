"""Fault: the daemon SIGKILLed while it is starting containers.

bwrap takes a sandbox along when its daemon dies only once the sandbox is
set up (it asks for a death signal just before it runs the command); a
sandbox caught earlier, waiting for its network or still building its
mounts, sees the daemon's end of its pipes close, goes on, and would run its
command with nobody watching. The next daemon must end every such sandbox
before it starts its own.

100 containers (20 networked, the rest ``network = "none"``) start 4 at a
time; the daemon is SIGKILLed as soon as 10 of them run, three times over.
After each kill a new daemon starts; once it is ready, no process of the
containers started before the kill may be alive, and all 100 run again;
another daemon's container and another program's bwrap run on untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.daemon_under_test import Daemon, alive

COUNT = 100
NETWORKED = 20
ROUNDS = 3
# In every process of these containers: bwrap's command line, then the command's.
MARK = "sleep 86401"
_TICKS = os.sysconf("SC_CLK_TCK")


def now_ticks() -> int:
    """The time since boot in clock ticks, as /proc/PID/stat counts a start time."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * _TICKS)


def marked() -> dict[int, int]:
    """pid -> start time of every live process of ours whose command line has MARK."""
    found = {}
    uid = os.getuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        if MARK in cmdline and alive(int(entry.name)):
            found[int(entry.name)] = started
    return found


def running_commands() -> int:
    """How many container commands run (``sleep``, not the sandboxes around them)."""
    return sum(1 for pid in marked() if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")


def describe(pids: dict[int, int]) -> str:
    """The processes of ``pids`` still alive, for a failure message."""
    shown = []
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        shown.append(f"{pid} ({comm}, parent {parent})")
    return ", ".join(shown) or "none"


def wait(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


def write_manifests(manifests: Path) -> None:
    manifests.mkdir(parents=True)
    for index in range(COUNT):
        network = "" if index < NETWORKED else 'network = "none"\n'
        (manifests / f"c{index:03}.toml").write_text(
            f'{network}[run]\ncommand = "/bin/sh"\nargs = ["-c", "exec {MARK}"]\n'
        )


def all_running(daemon: Daemon) -> bool:
    with daemon.client() as client:
        rows = client.containers()
    return sum(1 for r in rows if r["phase"] == "running" and r["pid"] is not None) == COUNT


@pytest.mark.timeout(600)
def test_a_sigkill_while_starting_leaves_nothing_running(tmp_path: Path, rootless: None) -> None:
    write_manifests(tmp_path / "manifests")
    # Bystanders, which no daemon may touch: another daemon of the same user
    # (its own state directory) and a bwrap of some other program's.
    other = Daemon(tmp_path / "other")
    (other.manifests / "bystander.toml").write_text(
        'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["86402"]\n'
    )
    foreign = subprocess.Popen(
        ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "sleep", "86403"],
        stdin=subprocess.DEVNULL,
    )
    options = ("--parallelism", "4", "--resync", "1")
    daemon = Daemon(tmp_path, *options)
    try:
        other.wait_ready()
        wait(lambda: other.phase("bystander") == "running", 30, "the bystander running")
        bystander = other.detail("bystander")
        for round_ in range(ROUNDS):
            daemon.wait_ready(60)
            wait(lambda: running_commands() >= 10, 120, f"10 running in round {round_ + 1}")
            daemon.process.send_signal(signal.SIGKILL)
            killed_at = now_ticks()
            daemon.process.wait(timeout=10)

            daemon = Daemon(tmp_path, *options)
            daemon.wait_ready(60)
            left = {pid: at for pid, at in marked().items() if at <= killed_at}
            # The killed daemon's sandboxes went with it, or the new one ended them
            # before it answered; give the kernel a moment to finish the kills.
            wait(
                lambda left=left: not [pid for pid in left if alive(pid)],
                5,
                f"gone: {describe(left)}",
            )
        wait(lambda: all_running(daemon), 120, "all running after the last kill")
        assert running_commands() == COUNT  # once each
        code, _ = daemon.terminate(30)
        assert code == 0, daemon.log_text()[-2000:]
        assert foreign.poll() is None
        after = other.detail("bystander")
        assert bystander is not None and after is not None
        assert (after["id"], after["pid"], after["restarts"]) == (
            bystander["id"],
            bystander["pid"],
            0,
        )
    finally:
        daemon.kill()
        other.kill()
        foreign.kill()
        foreign.wait()
        # A failed run must not leave the next test unsupervised sleepers.
        left = marked()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not left
