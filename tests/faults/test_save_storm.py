"""A save storm: ten squishfiles rewritten by rename as fast as a writer can.

One of them flips its env between two values with every save, the others are
rewritten unchanged, while someone lists the containers (``squish ps``) over
and over; then each gets its final version. Level-triggered, the
final state must win: within a few seconds every container runs its final
version, a later edit is applied, ``squish stop`` answers and SIGTERM stops
the daemon within its stop timeout. A real daemon, rootless bwrap.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import ApiError
from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

NAMES = [f"c{n}" for n in range(10)]
STORM_SECONDS = 4.0
STOP_TIMEOUT = 2.0


def squishfile(value: str) -> str:
    return (
        'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'
        f'[env]\nVERSION = "{value}"\n'
    )


def save(directory: Path, name: str, text: str | bytes) -> None:
    """Write ``name.toml`` as editors and deploy tools do: a temporary file, renamed."""
    data = text.encode() if isinstance(text, str) else text
    temporary = os.path.join(directory, f".{name}.toml.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(temporary, os.path.join(directory, f"{name}.toml"))


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


def watch_ps(daemon: Daemon, until: float) -> None:
    with daemon.client() as client:
        while time.monotonic() < until:
            client.containers()


def test_the_final_version_wins_a_save_storm(daemon: Daemon) -> None:
    for name in NAMES:
        save(daemon.manifests, name, squishfile("1"))
    eventually(lambda: set(applied(daemon).values()) == {"1"} or None)

    saves = 0
    deadline = time.monotonic() + STORM_SECONDS
    # Someone watches `squish ps` meanwhile, as an operator does during a deploy.
    watcher = threading.Thread(target=watch_ps, args=(daemon, deadline), daemon=True)
    watcher.start()
    flips = itertools.cycle([squishfile("A").encode(), squishfile("B").encode()])
    same = squishfile("1").encode()
    while time.monotonic() < deadline:
        for name in NAMES:
            save(daemon.manifests, name, next(flips) if name == "c0" else same)
            saves += 1
    # Thousands a second on an idle machine; a loaded one (2 cores shared
    # with the daemon and its containers) still makes hundreds.
    assert saves / STORM_SECONDS > 500, f"only {saves} saves in {STORM_SECONDS} s"
    watcher.join()
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
    assert "Traceback" not in daemon.log_text()
