"""Fault: a socket path or a lock the daemon cannot use.

A ``--socket`` longer than a unix socket's path may be (107 bytes), a
``daemon.lock`` that is a directory or cannot be opened: ``squish daemon``
says so in one line and exits 1, before it starts anything, instead of a
traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.test_daemon import daemon


def refused(process: subprocess.Popen[bytes]) -> str:
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith("squish: ")
    return lines[0]


def test_a_socket_path_too_long(tmp_path: Path, rootless: None) -> None:
    name = "s" * 110
    message = refused(daemon(tmp_path, name, state=tmp_path / "state"))
    size = len(str(tmp_path / f"{name}.sock"))
    assert f"is {size} bytes, longer than the 107 a unix socket may have" in message
    assert "--socket" in message
    assert not (tmp_path / "manifests").exists()  # nothing started


def test_a_lock_that_is_a_directory(tmp_path: Path, rootless: None) -> None:
    (tmp_path / "state" / "daemon.lock").mkdir(parents=True)
    message = refused(daemon(tmp_path, "d", state=tmp_path / "state"))
    lock = tmp_path / "state" / "daemon.lock"
    assert message.startswith(f"squish: cannot open the daemon's lock {lock}: Is a directory")


def test_a_lock_that_cannot_be_opened(tmp_path: Path, rootless: None) -> None:
    lock = tmp_path / "state" / "daemon.lock"
    lock.parent.mkdir()
    lock.write_text("")
    lock.chmod(0)
    message = refused(daemon(tmp_path, "d", state=tmp_path / "state"))
    assert message.startswith(f"squish: cannot open the daemon's lock {lock}: Permission denied")
