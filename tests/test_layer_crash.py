"""Crash tests of the layer cache: a builder killed with SIGKILL leaves no half layer.

``squish.layers.cache`` promises that an entry is complete the moment it
exists, because builders work in a temporary directory and rename it into
place. These tests kill a real builder process mid-way, with nothing it can
catch, and check that promise from the outside: no entry, no index record,
and the next resolve sweeps the abandoned work away and builds the whole
layer.

The builders are separate Python processes (``sys.executable -c``) running
the real resolvers; the tests watch the cache (and the builder's open files
under ``/proc``) with deadlines instead of sleeping, and kill only once the
build is visibly under way. No privileges needed; Linux only, like squish.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TypeVar

import pytest

from squish.layers import AlpineResolver, ArchiveResolver, LayerCache
from squish.layers.archive import archive_digest
from tests.fake_http import ARCH, Answer, Mirror, send

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 20.0
"""Seconds any wait here may take before the test fails (normally well under 1)."""

T = TypeVar("T")


# --- helpers ---------------------------------------------------------------------


def spawn(script: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """Run ``script`` in a fresh interpreter that imports squish from this tree."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def wait_for(
    what: str, probe: Callable[[], T | None], builder: subprocess.Popen[bytes], log: Path
) -> T:
    """Poll ``probe`` until it returns something; fail if the builder ends first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        if builder.poll() is not None:
            pytest.fail(
                f"the builder exited ({builder.returncode}) before {what}: "
                f"{log.read_text(errors='replace')}"
            )
        time.sleep(0.001)
    pytest.fail(f"no {what} within {DEADLINE:g}s")


def kill(builder: subprocess.Popen[bytes]) -> None:
    builder.send_signal(signal.SIGKILL)
    status = builder.wait(timeout=DEADLINE)
    assert status == -signal.SIGKILL, f"the builder finished ({status}) before the kill"


@pytest.fixture
def builders() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Builder processes to kill if a test fails before it does."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for builder in started:
        if builder.poll() is None:
            builder.kill()
            builder.wait()


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root``, by relative path."""
    files = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def files_below(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if not path.is_dir()]


# --- a kill mid-unpack -------------------------------------------------------------

FILES = 4000
PER_DIR = 200

UNPACK = """
import sys
from pathlib import Path
from squish.layers import ArchiveResolver, LayerCache
ArchiveResolver(LayerCache(Path(sys.argv[1]))).materialise(Path(sys.argv[2]))
"""


def write_layer_archive(path: Path) -> dict[str, bytes]:
    """A tar.gz of ``FILES`` files (12 MB), in order; returns what it holds."""
    rng = random.Random(7)  # noqa: S311 (test data, not secrets)
    files: dict[str, bytes] = {}
    with tarfile.open(path, "w:gz", compresslevel=1, format=tarfile.GNU_FORMAT) as archive:
        for index in range(FILES):
            directory = f"d{index // PER_DIR:02d}"
            if index % PER_DIR == 0:
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            size = rng.choice((512, 1024, 2048, 4096, 8192))
            if index % 2:
                data = rng.randbytes(size)
            else:
                data = (f"file {index} of a layer\n".encode() * (size // 16 + 1))[:size]
            name = f"{directory}/f{index:05d}"
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
            files[name] = data
    return files


def test_a_kill_mid_unpack_leaves_no_entry_and_the_next_unpack_completes(
    tmp_path: Path, builders: list[subprocess.Popen[bytes]]
) -> None:
    archive = tmp_path / "layer.tar.gz"
    expected = write_layer_archive(archive)
    with archive.open("rb") as file:
        digest = archive_digest(file)
    root = tmp_path / "layers"
    cache = LayerCache(root)
    log = tmp_path / "builder.log"
    builder = spawn(UNPACK, str(root), str(archive), log=log)
    builders.append(builder)
    prefix = f".{digest}.{builder.pid}."
    # Once the file at index 20 exists the unpack is under way, with
    # thousands of files still to come.
    early = list(expected)[20]

    def building() -> Path | None:
        with contextlib.suppress(FileNotFoundError):
            for child in (root / "sha256").iterdir():
                if child.name.startswith(prefix) and child.name.endswith(".tmp"):
                    return child if (child / early).exists() else None
        return None

    work = wait_for("an unpack under way", building, builder, log)
    kill(builder)

    # The half layer is there, but only as abandoned work, never as the entry.
    assert 0 < len(files_below(work)) < FILES
    assert cache.get(digest) is None
    assert not cache.path_for(digest).exists()
    assert [child.name for child in (root / "sha256").iterdir()] == [work.name]

    entry = ArchiveResolver(LayerCache(root)).materialise(archive)

    assert entry == cache.path_for(digest) == cache.get(digest)
    assert not work.exists()
    assert [child.name for child in (root / "sha256").iterdir()] == [digest]
    assert tree(entry) == expected


# --- a kill mid-download --------------------------------------------------------------

BRANCH = "3.14"
VERSION = "3.14.10"
HEAD = 256 * 1024
"""Bytes of the minirootfs the mirror sends before it stalls: a quarter of it,
plenty to reach the builder's download file whatever its read size."""
BLOB = random.Random(3).randbytes(1 << 20)  # noqa: S311 (test data, not secrets)

DOWNLOAD = """
import sys
from pathlib import Path
from squish.layers import AlpineResolver, LayerCache
AlpineResolver(LayerCache(Path(sys.argv[1])), mirror=sys.argv[2], arch=sys.argv[3]).materialise(
    sys.argv[4]
)
"""


def big_minirootfs() -> bytes:
    """A minirootfs with 1 MiB that does not compress, so that it streams for a while."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, mode in (
            ("etc/alpine-release", f"{VERSION}\n".encode(), 0o644),
            ("bin/busybox", b"\x7fELF not really busybox", 0o755),
            ("usr/share/blob", BLOB, 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
        archive.addfile(link)
    return buffer.getvalue()


def stall_after(body: bytes, head: int, sent: threading.Event, mirror: Mirror) -> Answer:
    """Answer with the first ``head`` bytes of ``body``, then hang until the mirror stops."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:head])
        handler.wfile.flush()
        sent.set()
        mirror.release.wait(DEADLINE * 2)
        handler.close_connection = True

    return answer


def download_file(pid: int, under: Path) -> int | None:
    """The size of the builder's (unnamed) download file in ``under``, once it has one."""
    fds = f"/proc/{pid}/fd"
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(fds):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(f"{fds}/{fd}")
                if target.startswith(f"{under}/") and target.endswith(" (deleted)"):
                    return os.stat(f"{fds}/{fd}").st_size
    return None


def test_a_kill_mid_download_leaves_nothing_and_the_next_resolve_completes(
    tmp_path: Path, builders: list[subprocess.Popen[bytes]]
) -> None:
    tarball = big_minirootfs()
    assert len(tarball) > 2 * HEAD
    mirror = Mirror()
    try:
        file = mirror.publish(BRANCH, VERSION, tarball)
        sent = threading.Event()
        mirror.routes[file] = stall_after(tarball, HEAD, sent, mirror)
        root = tmp_path / "layers"
        log = tmp_path / "builder.log"
        builder = spawn(DOWNLOAD, str(root), mirror.url, ARCH, BRANCH, log=log)
        builders.append(builder)

        wait_for("the head of the download sent", lambda: sent.is_set() or None, builder, log)
        # Part of it written to the builder's download file: mid-stream.
        written = wait_for(
            "a partly written download",
            lambda: download_file(builder.pid, root) or None,
            builder,
            log,
        )
        kill(builder)

        assert 0 < written < len(tarball)
        alpine = AlpineResolver(LayerCache(root), mirror=mirror.url, arch=ARCH)
        assert alpine.installed(BRANCH) is None
        assert not (root / "alpine").exists()
        assert list((root / "sha256").glob("*")) == []
        assert files_below(root) == []

        mirror.routes[file] = send(tarball)
        release = alpine.materialise(BRANCH)

        assert release.version == VERSION
        assert alpine.installed(BRANCH) == release
        assert (release.path / "etc/alpine-release").read_text() == f"{VERSION}\n"
        assert (release.path / "usr/share/blob").read_bytes() == BLOB
        assert os.readlink(release.path / "bin/sh") == "/bin/busybox"
        assert [child.name for child in (root / "sha256").iterdir()] == [release.path.name]
    finally:
        mirror.stop()
