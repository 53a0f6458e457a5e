"""A save storm: ten squishfiles rewritten by rename as fast as a writer can.

One of them flips its env between two values with every save, the others are
rewritten unchanged; then each gets its final version. Level-triggered, the
final state must win: within a few seconds every container runs its final
version, a later edit is applied, ``squish stop`` answers and SIGTERM stops
the daemon within its stop timeout. A real daemon, rootless bwrap.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.client import ApiError
from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

NAMES = [f"c{n}" for n in range(10)]
STORM_SECONDS = 3.0
STOP_TIMEOUT = 2.0


def squishfile(value: str) -> str:
    return (
        'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'
        f'[env]\nVERSION = "{value}"\n'
    )


def save(directory: Path, name: str, text: str) -> None:
    """Write ``name.toml`` as editors and deploy tools do: a temporary file, renamed."""
    temporary = directory / f".{name}.toml.tmp"
    temporary.write_text(text)
    os.replace(temporary, directory / f"{name}.toml")


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--stop-timeout", str(STOP_TIMEOUT))
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def applied(daemon: Daemon) -> dict[str, str | None]:
    """Each container's VERSION as running now (None: not running)."""
    with daemon.client() as client:
        found: dict[str, str | None] = {}
        for name in NAMES:
            try:
                detail = client.inspect(name)
            except ApiError:  # not seen yet
                found[name] = None
                continue
            running = detail["phase"] == "running" and detail["applied"] is not None
            found[name] = detail["applied"]["env"].get("VERSION") if running else None
        return found


def test_the_final_version_wins_a_save_storm(daemon: Daemon) -> None:
    for name in NAMES:
        save(daemon.manifests, name, squishfile("1"))
    eventually(lambda: set(applied(daemon).values()) == {"1"} or None)

    saves = 0
    deadline = time.monotonic() + STORM_SECONDS
    flips = itertools.cycle(["A", "B"])
    while time.monotonic() < deadline:
        for name in NAMES:
            save(daemon.manifests, name, squishfile(next(flips) if name == "c0" else "1"))
            saves += 1
    assert saves / STORM_SECONDS > 1000, f"only {saves} saves in {STORM_SECONDS} s"
    for name in NAMES:
        save(daemon.manifests, name, squishfile("F"))

    final = {name: "F" for name in NAMES}
    try:
        eventually(lambda: applied(daemon) == final or None, timeout=10)
    except AssertionError:
        raise AssertionError(f"{applied(daemon)}\n{daemon.log_text()[-4000:]}") from None

    save(daemon.manifests, "c3", squishfile("L"))
    eventually(lambda: applied(daemon)["c3"] == "L" or None, timeout=10)

    stopped = daemon.squish("stop", "c5", timeout=10)
    assert stopped.returncode == 0, stopped.stderr
    with daemon.client() as client:
        assert client.inspect("c5")["phase"] == "stopped"

    code, took = daemon.terminate(timeout=STOP_TIMEOUT + 5)
    assert code == 0, f"exit {code} after {took:.1f} s\n{daemon.log_text()[-4000:]}"
