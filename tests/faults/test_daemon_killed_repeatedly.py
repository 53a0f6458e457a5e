"""The daemon SIGKILLed again and again, as the kubelet's "Restart [Disruptive]" test does.

100 containers (the built-in base; 20 with a network of their own, the
rest ``network = "none"``); the daemon is killed with SIGKILL and started
again 6 times. Each time every one of the 100 runs again, exactly once (one
sandbox per name, no duplicates), and nothing of the killed daemon is left:
no process of its tree, and in its runtime directory no slirp4netns socket
but those of the containers running now. The time until all run
again is printed (``-s`` shows it).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from squish.runtime.bwrap_runtime import MARK_FILE
from tests.faults.daemon_under_test import Daemon, alive, descendants

T = TypeVar("T")

COUNT = 100
NETWORKED = 20
RESTARTS = 6


def bwraps(daemon: Daemon) -> list[int]:
    """The daemon's sandboxes: its bwrap children (one per running container)."""
    ours = []
    for pid in descendants(daemon.process.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap" and alive(pid):
                parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                if int(parent) == daemon.process.pid:
                    ours.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return ours


def all_running(daemon: Daemon) -> dict[str, str] | None:
    """name -> id once all COUNT run, with a live pid each; None before."""
    with daemon.client() as client:
        rows = client.containers()
    running = {r["name"]: r for r in rows if r["phase"] == "running" and r["pid"] is not None}
    if len(running) < COUNT:
        return None
    return {name: str(row["id"]) for name, row in running.items()}


def wait(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def write_manifests(root: Path) -> None:
    manifests = root / "manifests"
    manifests.mkdir(parents=True)
    for index in range(COUNT):
        network = "" if index < NETWORKED else 'network = "none"\n'
        (manifests / f"c{index:03}.toml").write_text(
            f'{network}[run]\ncommand = "/bin/sleep"\nargs = ["100000"]\n'
        )


def killed(daemon: Daemon) -> set[int]:
    """SIGKILL the daemon; the processes of its tree at that moment."""
    tree = descendants(daemon.process.pid)
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(timeout=10)
    return tree


def assert_tree_gone(tree: set[int]) -> None:
    # --die-with-parent takes every sandbox with the daemon, at once.
    wait(lambda: not [pid for pid in tree if alive(pid)] or None, 10, "the old tree gone")


def assert_runtime_dir_holds_only(root: Path, ids: dict[str, str]) -> None:
    """The runtime directory: a directory (slirp4netns's socket) per networked container.

    And the mark of the daemon's sandboxes, which the next daemon reads.
    """
    networked = {ids[f"c{index:03}"][:16] for index in range(NETWORKED)}
    entries = {entry.name for entry in (root / "state" / "run").iterdir()}
    assert entries == networked | {MARK_FILE}


@pytest.mark.timeout(600)
def test_six_sigkills_with_a_hundred_containers(tmp_path: Path, rootless: None) -> None:
    write_manifests(tmp_path)
    times: list[float] = []
    daemon = Daemon(tmp_path, "--resync", "1", "--parallelism", "16")
    try:
        daemon.wait_ready(60)
        ids = wait(lambda: all_running(daemon), 120, "100 running")
        assert len(bwraps(daemon)) == COUNT
        assert_runtime_dir_holds_only(tmp_path, ids)
        for round_ in range(RESTARTS):
            tree = killed(daemon)
            assert_tree_gone(tree)
            # The socket the killed daemon left answers nobody; the next one replaces it.
            began = time.monotonic()
            daemon = Daemon(tmp_path, "--resync", "1", "--parallelism", "16")
            daemon.wait_ready(60)
            new_ids = wait(
                lambda d=daemon: all_running(d), 120, f"100 running after kill {round_ + 1}"
            )
            times.append(time.monotonic() - began)
            assert set(new_ids) == set(ids)
            assert not set(new_ids.values()) & set(ids.values())  # all new sandboxes
            # Exactly once each: one sandbox per container, nothing started twice.
            time.sleep(1.5)  # a resync later, still exactly one each
            sandboxes = bwraps(daemon)
            assert len(sandboxes) == COUNT, f"{len(sandboxes)} sandboxes for {COUNT} containers"
            assert all_running(daemon) == new_ids
            assert_runtime_dir_holds_only(tmp_path, new_ids)
            ids = new_ids
        shown = ", ".join(f"{t:.1f} s" for t in times)
        print(f"\nall {COUNT} running again after each SIGKILL: {shown}")
        code, _ = daemon.terminate(30)
        assert code == 0, daemon.log_text()[-2000:]
        assert not (tmp_path / "d.sock").exists()
    finally:
        daemon.kill()
