"""Fault: a layer's host path swapped for a symlink while its container restarts.

A container with a writable directory layer crash-loops, writing a line into
that directory each time it starts. Meanwhile the directory (or a directory
above it) is swapped back and forth with a symlink to another directory of
the host, atomically (``renameat2(RENAME_EXCHANGE)``), thousands of times a
second. Whatever the timing, the container must get the directory its
squishfile named or not start at all: never the symlink's target. Starts
that meet the swap are refused (and backed off); once the swapping ends, the
container starts on the directory it was given.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically, whatever they are."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(a))


SQUISHFILE = """\
[layers]
data = {{ path = "{data}", target = "/data", rw = true }}

[run]
command = "/bin/sh"
args = ["-c", "echo started >> /data/marks; exit 1"]
"""


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("swapped", ["the-layer", "a-parent"])
def test_a_layer_path_swapped_for_a_symlink_is_never_followed(
    tmp_path: Path, rootless: None, swapped: str
) -> None:
    # outside/ is what a swap would hand the container: an innocent
    # directory of the host with the same shape as the layer's.
    parent = tmp_path / "layers"
    data = parent / "data"
    data.mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    if swapped == "the-layer":
        here, link = data, parent / "link"
        link.symlink_to(outside / "data")
    else:
        here, link = parent, tmp_path / "link"
        link.symlink_to(outside)

    daemon = Daemon(tmp_path, "--backoff-initial", "0.01", "--backoff-max", "0.05")
    try:
        daemon.wait_ready()
        (daemon.manifests / "writer.toml").write_text(SQUISHFILE.format(data=data))
        eventually(lambda: lines(data / "marks") >= 3 or None, timeout=20)

        stop = threading.Event()
        swaps = 0

        def swap() -> None:
            nonlocal swaps
            while not stop.is_set():
                exchange(here, link)
                exchange(here, link)
                swaps += 2

        swapper = threading.Thread(target=swap)
        started = lines(data / "marks")
        swapper.start()
        try:
            time.sleep(4)
        finally:
            stop.set()
            swapper.join()
        assert here.is_dir() and not here.is_symlink()
        assert swaps > 1000

        # Not once did a start follow the symlink, ...
        assert lines(outside / "data" / "marks") == 0, daemon.log_text()
        # ... and once the swapping ended, the container starts on its own directory again.
        during = lines(data / "marks")
        eventually(lambda: lines(data / "marks") >= during + 3 or None, timeout=20)
        assert lines(outside / "data" / "marks") == 0
        assert during >= started
    finally:
        code, _ = daemon.terminate(timeout=30)
        daemon.kill()
    assert code == 0
