"""Fault: a file removed from a layer cache entry (by hand, a clean-up script, a bad disk).

Used as it was, a built-in base without ``bin/busybox`` crash-looped every
container on it. Each entry now has a manifest (paths, types, modes, sizes)
written before it is published; the cache checks an entry against it the
first time a process uses it (and again after ``verify_interval``), and the
built-in base's busybox is checked at every use. A damaged entry is moved
aside with a warning and built again: the base rebuilt, an archive unpacked
again. Real daemons (rootless) for the two cases an operator meets; the
cache itself for the rest.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import IO

import pytest

from squish.cli.client import Client, JSONObject
from squish.layers import ArchiveResolver, LayerCache, LayerStore, Limits
from squish.layers.unpack import unpack_file
from tests.conftest import eventually
from tests.test_daemon import daemon, wait_for_socket

HELLO = b"#!/bin/sh\necho hello\n"


def app_archive(path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, mode in (("bin/hello", HELLO, 0o755), ("README", b"read me\n", 0o644)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


class CountingUnpacker:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, file: IO[bytes], into: Path, name: str, limits: Limits) -> None:
        self.calls += 1
        unpack_file(file, into, name=name, limits=limits)


def entry_holding(state: Path, relative: str) -> Path:
    (entry,) = [
        entry
        for entry in (state / "layers" / "sha256").iterdir()
        if not entry.name.startswith(".") and os.path.lexists(entry / relative)
    ]
    return entry


# --- the cache and the resolvers ------------------------------------------------------


def test_an_archive_entry_missing_a_file_is_unpacked_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "app.tar.gz"
    app_archive(archive)
    counting = CountingUnpacker()
    resolver = ArchiveResolver(
        LayerCache(tmp_path / "layers", verify_interval=0), unpacker=counting
    )
    entry = resolver.materialise(archive)
    manifest = json.loads((tmp_path / "layers" / "manifests" / f"{entry.name}.json").read_text())
    assert [path for path, _mode, _size in manifest["entries"]] == ["README", "bin", "bin/hello"]

    (entry / "bin" / "hello").unlink()
    with caplog.at_level(logging.WARNING, logger="squish.layers"):
        again = resolver.materialise(archive)

    assert (again, counting.calls) == (entry, 2)
    assert (again / "bin" / "hello").read_bytes() == HELLO
    (warning,) = caplog.messages
    assert f"layer cache entry {entry} is damaged (bin/hello is missing)" in warning


def test_a_file_of_another_size_or_mode_is_damage_too(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar.gz"
    app_archive(archive)
    counting = CountingUnpacker()
    resolver = ArchiveResolver(
        LayerCache(tmp_path / "layers", verify_interval=0), unpacker=counting
    )
    entry = resolver.materialise(archive)

    (entry / "README").write_bytes(b"")
    resolver.materialise(archive)
    (entry / "bin" / "hello").chmod(0o644)
    resolver.materialise(archive)

    assert counting.calls == 3
    assert os.access(entry / "bin" / "hello", os.X_OK)


def test_an_entry_is_checked_once_a_process_then_once_an_interval(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar.gz"
    app_archive(archive)
    counting = CountingUnpacker()
    resolver = ArchiveResolver(LayerCache(tmp_path / "layers"), unpacker=counting)
    entry = resolver.materialise(archive)
    (entry / "README").unlink()

    # Within the interval, the identity cache answers (no check, no unpack)...
    assert resolver.materialise(archive) == entry
    assert counting.calls == 1
    # ...and the next process (a new cache) checks it first.
    fresh = ArchiveResolver(LayerCache(tmp_path / "layers"), unpacker=counting)
    assert (fresh.materialise(archive) / "README").exists()
    assert counting.calls == 2


def test_an_entry_from_before_manifests_is_adopted_not_rebuilt(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar.gz"
    app_archive(archive)
    counting = CountingUnpacker()
    entry = ArchiveResolver(LayerCache(tmp_path / "layers"), unpacker=counting).materialise(archive)
    manifest = tmp_path / "layers" / "manifests" / f"{entry.name}.json"
    manifest.unlink()

    fresh = ArchiveResolver(LayerCache(tmp_path / "layers"), unpacker=counting)
    assert fresh.materialise(archive) == entry
    assert counting.calls == 1
    assert manifest.exists()


def test_the_builtin_base_missing_busybox_is_rebuilt_at_its_next_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LayerStore(tmp_path / "state")
    rootfs = store.builtin_base()
    size = (rootfs / "bin" / "busybox").stat().st_size
    (rootfs / "bin" / "busybox").unlink()

    with caplog.at_level(logging.WARNING, logger="squish.layers"):
        again = store.builtin_base()

    assert again == rootfs
    assert (again / "bin" / "busybox").stat().st_size == size
    assert any("is damaged (bin/busybox is missing)" in message for message in caplog.messages)


# --- real daemons ----------------------------------------------------------------------


def rows(sock: Path) -> dict[str, JSONObject]:
    with Client(sock) as client:
        return {str(row["name"]): row for row in client.containers()}


def running_row(sock: Path, name: str, *, not_pid: object = None) -> JSONObject | None:
    row = rows(sock).get(name)
    if row is None or row["phase"] != "running" or row["pid"] in (None, not_pid):
        return None
    return row


def stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return err.decode()


def test_a_daemon_rebuilds_a_base_that_lost_busybox_and_the_container_runs_again(
    tmp_path: Path, rootless: None
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "sleeper.toml").write_text(
        'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'
    )
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    try:
        sock = tmp_path / "d.sock"
        wait_for_socket(sock, process)
        first = eventually(lambda: running_row(sock, "sleeper"))
        base = entry_holding(tmp_path / "state", "bin/busybox")

        # The running command keeps its busybox; the next start would not.
        (base / "bin" / "busybox").unlink()
        os.kill(int(str(first["pid"])), signal.SIGKILL)

        again = eventually(lambda: running_row(sock, "sleeper", not_pid=first["pid"]))
        assert again["restarts"] == 1
        assert (base / "bin" / "busybox").is_file()
    finally:
        log = stop(process)
    assert f"layer cache entry {base} is damaged (bin/busybox is missing)" in log


def test_a_restarted_daemon_unpacks_again_an_archive_entry_that_lost_a_file(
    tmp_path: Path, rootless: None
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    app_archive(tmp_path / "app.tar.gz")
    (manifests / "app.toml").write_text(
        'network = "none"\n'
        f'[layers]\napp = {{ path = "{tmp_path}/app.tar.gz", target = "/app" }}\n'
        '[run]\ncommand = "/bin/sh"\n'
        'args = ["-c", "test -x /app/bin/hello && exec sleep 1000"]\n'
        '[restart]\npolicy = "on-failure"\n'
    )
    state = tmp_path / "state"
    process = daemon(tmp_path, "d", state=state)
    try:
        wait_for_socket(tmp_path / "d.sock", process)
        eventually(lambda: running_row(tmp_path / "d.sock", "app"))
    finally:
        stop(process)
    entry = entry_holding(state, "bin/hello")
    (entry / "bin" / "hello").unlink()

    process = daemon(tmp_path, "e", state=state)
    try:
        wait_for_socket(tmp_path / "e.sock", process)
        row = eventually(lambda: running_row(tmp_path / "e.sock", "app"))
        assert row["restarts"] == 0
        assert (entry / "bin" / "hello").read_bytes() == HELLO
    finally:
        log = stop(process)
    assert f"layer cache entry {entry} is damaged (bin/hello is missing)" in log
