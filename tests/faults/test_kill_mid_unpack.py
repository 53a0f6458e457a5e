"""Fault: the daemon SIGKILLed while it unpacks a large archive layer.

``tests/test_layer_crash.py`` kills an unpack at the cache; here a real
daemon (rootless, real bwrap) starts a container over a plain tar of 12,000
small files (about 30 MB) in 100 directories and is SIGKILLed once the
unpack's temporary directory holds some of them. A daemon started again on
the same state must run the container over the whole layer (the command
counts the files it sees) and leave in the cache one entry for the archive,
besides the base, with nothing of the killed unpack.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

DIRECTORIES = 100
FILES_EACH = 120
FILES = DIRECTORIES * FILES_EACH
SIZE = 2000

APP = """network = "none"
[layers]
app = { path = "./big.tar", target = "/app" }
[run]
command = "/bin/sh"
args = ["-c", "echo files $(find /app -type f | wc -l); exec sleep 1000"]
"""


def big_tar(path: Path) -> None:
    with path.open("wb") as out, tarfile.open(fileobj=out, mode="w") as archive:
        data = os.urandom(SIZE)
        for directory in range(DIRECTORIES):
            for index in range(FILES_EACH):
                info = tarfile.TarInfo(f"d{directory:03}/f{index:03}")
                info.size = SIZE
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def root(tmp_path: Path, rootless: None) -> Path:
    (tmp_path / "manifests").mkdir()
    big_tar(tmp_path / "manifests" / "big.tar")
    return tmp_path


@pytest.fixture
def first(root: Path) -> Iterator[Daemon]:
    running = Daemon(root)
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def entries(root: Path) -> list[str]:
    found = root / "state" / "layers" / "sha256"
    return sorted(child.name for child in found.iterdir()) if found.is_dir() else []


def unpacking(root: Path) -> Path | None:
    """The temporary directory of an unpack once it holds 10 directories."""
    for name in entries(root):
        work = root / "state" / "layers" / "sha256" / name
        if name.endswith(".tmp") and len(os.listdir(work)) >= 10:
            return work
    return None


def test_a_daemon_killed_mid_unpack_runs_the_whole_layer_when_started_again(
    root: Path, first: Daemon
) -> None:
    (first.manifests / "app.toml").write_text(APP)
    work = eventually(lambda: unpacking(root), timeout=30)
    first.kill()
    assert first.process.returncode == -9
    # Caught in the middle: part of the layer was written, not all of it.
    written = sum(len(files) for _, _, files in os.walk(work))
    assert 0 < written < FILES, written

    again = Daemon(root)
    try:
        again.wait_ready()
        log = root / "state" / "logs" / "app.log"

        def counted() -> str | None:
            text = log.read_text() if log.exists() else ""
            return text if "files " in text else None

        assert eventually(counted, timeout=40).splitlines()[-1] == f"files {FILES}"
        assert again.phase("app") == "running"
        # The base and the archive, and nothing else: the killed unpack's
        # temporary directory is gone.
        cache = root / "state" / "layers" / "sha256"
        assert len(entries(root)) == 2 and not work.exists(), entries(root)
        (entry,) = [cache / name for name in entries(root) if (cache / name / "d000").is_dir()]
        assert sum(len(files) for _, _, files in os.walk(entry)) == FILES
    finally:
        again.kill()
