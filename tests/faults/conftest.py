"""Fixtures the fault tests share."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_daemon import daemon, wait_for_socket


@pytest.fixture
def running_daemon(
    tmp_path: Path, rootless: None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real daemon on ``tmp_path/manifests`` (its socket ``d.sock``), SIGTERMed after."""
    (tmp_path / "manifests").mkdir()
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    try:
        wait_for_socket(tmp_path / "d.sock", process)
        yield process, tmp_path / "d.sock"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
