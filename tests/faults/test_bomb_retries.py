"""Fault: a compression bomb as an archive layer, retried with back-off.

A real daemon (rootless) runs a squishfile whose app layer is a tar.gz of
256 MiB of zeros in about 260 kB: past the 200:1 ratio, so each unpack is
stopped after about 64 MiB written. The container's start is retried every
half second; the daemon must remember the refusal of that archive and fail
each retry at once with the same error, writing nothing more (counted in the
daemon's ``/proc/PID/io`` and in the archive fetch metric), until the file
is replaced by a good one, which then runs. The same bytes under another
name are refused at once too; a failure of the host (a full disk) is no
verdict on the archive and is not remembered.
"""

from __future__ import annotations

import errno
import gzip
import io
import re
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from squish.cli.client import Client, JSONObject
from squish.errors import ArchiveRefused, LayerError
from squish.layers import ArchiveResolver, LayerCache, Limits
from squish.layers.unpack import unpack_file
from tests.conftest import eventually
from tests.test_daemon import daemon, wait_for_socket

MiB = 1 << 20
ZEROS = 256 * MiB
SLEEPER = '[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'


def bomb(path: Path) -> None:
    """A tar.gz of one member of ``ZEROS`` zero bytes, as gzip members of 1 MiB each.

    A multi-member gzip is one stream to every reader; built from one
    compressed MiB repeated, it takes no time to make.
    """
    header = tarfile.TarInfo("zeros")
    header.size = ZEROS
    zero_mib = gzip.compress(bytes(MiB), compresslevel=9)
    with path.open("wb") as out:
        out.write(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(ZEROS // MiB):
            out.write(zero_mib)
        out.write(gzip.compress(bytes(1024)))  # the end-of-archive blocks


def good(path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("hello.txt")
        data = b"hello\n"
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def written(pid: int) -> int:
    """Bytes the process has written with write(2) and friends so far."""
    io_stats = Path(f"/proc/{pid}/io").read_text()
    match = re.search(r"^wchar: (\d+)$", io_stats, re.MULTILINE)
    assert match is not None, io_stats
    return int(match.group(1))


def metric(text: str, pattern: str) -> float:
    match = re.search(pattern + r" (\S+)", text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def running(tmp_path: Path, rootless: None) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "manifests").mkdir()
    process = daemon(
        tmp_path,
        "d",
        "--backoff-initial",
        "0.5",
        "--backoff-max",
        "0.5",
        "--resync",
        "0.5",
        state=tmp_path / "state",
    )
    wait_for_socket(tmp_path / "d.sock", process)
    yield process
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def test_a_refused_bomb_is_not_unpacked_again_on_every_retry(
    tmp_path: Path, running: subprocess.Popen[bytes]
) -> None:
    archive = tmp_path / "manifests" / "bomb.tar.gz"
    bomb(archive)
    assert archive.stat().st_size < 2 * MiB
    args = running.args
    assert isinstance(args, list)
    metrics_url = f"http://{args[args.index('--metrics-addr') + 1]}/metrics"
    sock = tmp_path / "d.sock"
    before = written(running.pid)

    (tmp_path / "manifests" / "bomb.toml").write_text(
        'network = "none"\n[layers]\napp = "./bomb.tar.gz"\n' + SLEEPER
    )

    def retried(times: int) -> str | None:
        text = httpx.get(metrics_url).text
        failures = metric(text, r'squish_container_start_failures_total\{container="bomb"\}')
        return text if failures >= times else None

    eventually(lambda: retried(1), timeout=30)
    after_first = written(running.pid)
    text = eventually(lambda: retried(6), timeout=30)
    after_retries = written(running.pid)

    # The first attempt wrote its 64 MiB and was stopped; the retries wrote
    # nothing of the sort (a few kB of logs and API answers).
    assert after_first - before >= 64 * MiB
    assert after_retries - after_first < 4 * MiB, after_retries - after_first
    assert metric(text, r'squish_layer_fetches_total\{kind="archive",result="error"\}') == 1

    with Client(sock) as client:
        (row,) = [status for status in client.containers() if status["name"] == "bomb"]
    reason = str(row["reason"])
    assert f"{archive}: member 'zeros' takes the archive past 200:1 compression" in reason

    # The file changes: the next retry unpacks it, and the container runs.
    replacement = archive.with_name("good.tar.gz.tmp")
    good(replacement)
    replacement.rename(archive)

    def runs() -> JSONObject | None:
        with Client(sock) as client:
            rows = {status["name"]: status for status in client.containers()}
        status = rows.get("bomb")
        return status if status is not None and status["phase"] == "running" else None

    eventually(runs, timeout=30)


def test_a_failure_of_the_host_is_not_remembered(tmp_path: Path) -> None:
    """A full disk is no verdict on the archive: the next try unpacks it again."""
    archive = tmp_path / "app.tar.gz"
    good(archive)
    calls: list[str] = []

    def disk_full_once(file: IO[bytes], into: Path, name: str, limits: Limits) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        unpack_file(file, into, name=name, limits=limits)

    resolver = ArchiveResolver(LayerCache(tmp_path / "layers"), unpacker=disk_full_once)
    with pytest.raises(LayerError, match="No space left on device") as caught:
        resolver.materialise(archive)
    assert not isinstance(caught.value, ArchiveRefused)

    assert (resolver.materialise(archive) / "hello.txt").read_bytes() == b"hello\n"
    assert len(calls) == 2


def test_the_same_refused_bytes_under_another_name_are_refused_at_once(tmp_path: Path) -> None:
    calls: list[str] = []

    def counting(file: IO[bytes], into: Path, name: str, limits: Limits) -> None:
        calls.append(name)
        unpack_file(file, into, name=name, limits=limits)

    resolver = ArchiveResolver(LayerCache(tmp_path / "layers"), unpacker=counting)
    first = tmp_path / "bomb.tar.gz"
    bomb(first)
    with pytest.raises(ArchiveRefused):
        resolver.materialise(first)
    copy = tmp_path / "copy.tar.gz"
    copy.write_bytes(first.read_bytes())

    with pytest.raises(ArchiveRefused, match=r"copy\.tar\.gz: member 'zeros' takes the archive"):
        resolver.materialise(copy)
    assert calls == [str(first)]
