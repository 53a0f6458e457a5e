"""``squish delete`` while the prune guard holds the manifest directory.

Two containers run; both squishfiles are removed at once, which the guard
holds (it would stop every container). Deleting one of them then answers at
once, in one line (409 through the API), that it is held, where it used to
hang for a minute and say ``internal error: TimeoutError``. A real daemon.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import ApiError
from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

SLEEPER = 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--resync", "1")
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def held(daemon: Daemon) -> str | None:
    with daemon.client() as client:
        return next((s["held"] for s in client.sources() if s["held"]), None)


def test_delete_answers_at_once_that_the_guard_holds(daemon: Daemon) -> None:
    for name in ("a", "b"):
        (daemon.manifests / f"{name}.toml").write_text(SLEEPER)
    eventually(lambda: all(daemon.phase(n) == "running" for n in ("a", "b")) or None)
    for name in ("a", "b"):
        (daemon.manifests / f"{name}.toml").unlink()
    eventually(lambda: held(daemon))

    began = time.monotonic()
    deleted = daemon.squish("delete", "a", timeout=30)
    took = time.monotonic() - began
    assert deleted.returncode == 1
    message = deleted.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "prune guard holds it" in message and "TimeoutError" not in message
    assert took < 10, f"answered after {took:.1f} s"

    with daemon.client() as client, pytest.raises(ApiError) as refused:
        client.delete("b")
    assert refused.value.status == 409
    assert daemon.phase("a") == "running"
    code, _ = daemon.terminate(timeout=20)
    assert code == 0
