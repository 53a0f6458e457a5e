"""Single-file layers and their containers: what a change on the host does.

An ``rw`` layer is the container's to write and never replaces it; a
read-only file is live through its bind mount, so only a new file at its path
(a rename) replaces the container; an archive (or a pinned file) is replaced
on any change. First the rule itself, on the directory source's layer key
(the identity the planner compares), then against real daemons: rootless,
real bwrap, resyncing every 0.5 s.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_daemon import daemon, wait_for_socket

from squish.cli.client import Client, JSONObject
from squish.model.host import host_paths
from squish.model.squishfile import parse_squishfile
from squish.sources.directory import layer_key
from tests.conftest import eventually
from tests.fake_http import digest


def tarball(marker: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("marker")
        info.size = len(marker)
        archive.addfile(info, io.BytesIO(marker.encode()))
    return buffer.getvalue()


# How the host changes a layer file.


def append(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b"more\n")


def write_in_place(path: Path) -> None:
    # Same inode, other content and size (a tarball stays a tarball).
    content = tarball("two, longer") if path.read_bytes()[:2] == b"\x1f\x8b" else b"other\n" * 3
    with path.open("r+b") as file:
        file.write(content)
        file.truncate()


def touch(path: Path) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))


def rename_over(path: Path) -> None:
    # An editor's save or a deploy: a new file renamed into place.
    new = path.with_name(f".{path.name}.new")
    new.write_bytes(path.read_bytes())
    new.rename(path)


CHANGES = {
    "append": append,
    "write-in-place": write_in_place,
    "touch": touch,
    "rename-over": rename_over,
}

# (layer file, how it is declared, change) -> does the container get replaced?
CASES = [
    ("scratch", "rw = true", "append", False),
    ("scratch", "rw = true", "write-in-place", False),
    ("scratch", "rw = true", "touch", False),
    ("scratch", "rw = true", "rename-over", False),
    ("app.conf", "", "append", False),
    ("app.conf", "", "write-in-place", False),
    ("app.conf", "", "touch", False),
    ("app.conf", "", "rename-over", True),
    ("tool.tar.gz", "", "write-in-place", True),
    ("tool.tar.gz", "", "touch", True),
    ("tool.tar.gz", "", "rename-over", True),
    # A tarball by content, whatever its name, is unpacked too.
    ("tool-1.2", "", "write-in-place", True),
    ("tool-1.2", "", "touch", True),
]


@pytest.mark.parametrize(("file", "options", "change", "replaces"), CASES)
def test_what_a_change_to_a_file_layer_does(
    tmp_path: Path, file: str, options: str, change: str, replaces: bool
) -> None:
    layer = tmp_path / file
    layer.write_bytes(tarball("one") if "tool" in file else b"first\n")
    extra = f", {options}" if options else ""
    text = f'[layers]\nx = {{ path = "./{file}", target = "/data/x"{extra} }}\n'
    text += '[run]\ncommand = "/bin/true"\n'
    squishfile = parse_squishfile(
        text.encode(), file="w.toml", paths=host_paths(tmp_path), name="w"
    )
    before = layer_key(squishfile)

    CHANGES[change](layer)

    assert (layer_key(squishfile) != before) is replaces


def test_a_pinned_file_counts_any_change(tmp_path: Path) -> None:
    layer = tmp_path / "app.conf"
    layer.write_bytes(content := b"first\n")
    text = (
        f'[layers]\nx = {{ path = "./app.conf", target = "/x", sha256 = "{digest(content)}" }}\n'
        '[run]\ncommand = "/bin/true"\n'
    )
    squishfile = parse_squishfile(
        text.encode(), file="w.toml", paths=host_paths(tmp_path), name="w"
    )
    before = layer_key(squishfile)

    touch(layer)

    assert layer_key(squishfile) != before


def test_directories_count_for_nothing(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    text = '[layers]\nsite = "./site"\n[run]\ncommand = "/bin/true"\n'
    squishfile = parse_squishfile(
        text.encode(), file="w.toml", paths=host_paths(tmp_path), name="w"
    )
    assert layer_key(squishfile) == ""


# --- against a real daemon ------------------------------------------------------------


class Node:
    """A real daemon on ``tmp_path``, resyncing every 0.5 s."""

    def __init__(self, tmp_path: Path) -> None:
        self.manifests = tmp_path / "manifests"
        self.manifests.mkdir()
        self.layers = tmp_path / "layers"
        self.layers.mkdir()
        self.socket = tmp_path / "d.sock"
        self.process = daemon(tmp_path, "d", "--resync", "0.5", state=tmp_path / "state")
        wait_for_socket(self.socket, self.process)

    def write(self, name: str, text: str) -> None:
        temporary = self.manifests / f".{name}.tmp"
        temporary.write_text(text)
        temporary.rename(self.manifests / f"{name}.toml")

    def row(self, name: str) -> JSONObject:
        with Client(self.socket) as client:
            rows = {status["name"]: status for status in client.containers()}
        return rows.get(name) or {"phase": "absent"}

    def running(self, name: str) -> Callable[[], str | None]:
        def check() -> str | None:
            row = self.row(name)
            return str(row["id"]) if row["phase"] == "running" and row.get("id") else None

        return check

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=30)


@pytest.fixture
def node(tmp_path: Path, rootless: None) -> Iterator[Node]:
    started = Node(tmp_path)
    yield started
    started.stop()


def test_a_container_appending_to_its_rw_file_keeps_running(node: Node) -> None:
    scratch = node.layers / "scratch"
    scratch.write_text("")
    node.write(
        "writer",
        'network = "none"\n'
        f'[layers]\nscratch = {{ path = "{scratch}", target = "/app/scratch", rw = true }}\n'
        '[run]\ncommand = "/bin/sh"\n'
        'args = ["-c", "while true; do echo tick >> /app/scratch; sleep 0.1; done"]\n',
    )
    first = eventually(node.running("writer"))
    started_at = node.row("writer")["started_at"]
    eventually(lambda: scratch.stat().st_size or None)
    grown = scratch.stat().st_size

    time.sleep(2.5)  # five resyncs, each seeing the file bigger and newer

    row = node.row("writer")
    assert (row["phase"], row["id"], row["started_at"]) == ("running", first, started_at)
    assert scratch.stat().st_size > grown


def test_a_read_only_file_is_live_until_it_is_replaced(node: Node) -> None:
    conf = node.layers / "app.conf"
    conf.write_text("one\n")
    out = node.layers / "out"
    out.mkdir()
    seen = out / "seen"
    node.write(
        "reader",
        'network = "none"\n[layers]\n'
        f'conf = {{ path = "{conf}", target = "/etc/app.conf" }}\n'
        f'out = {{ path = "{out}", target = "/out", rw = true }}\n'
        '[run]\ncommand = "/bin/sh"\n'
        'args = ["-c", "while true; do cat /etc/app.conf > /out/seen; sleep 0.1; done"]\n',
    )
    first = eventually(node.running("reader"))

    def sees(content: str) -> Callable[[], bool | None]:
        return lambda: (seen.exists() and seen.read_text() == content) or None

    eventually(sees("one\n"))

    # Written in place: the container sees the new content and stays.
    with conf.open("r+") as file:
        file.write("two, written in place\n")
        file.truncate()
    eventually(sees("two, written in place\n"))
    time.sleep(1.5)  # three resyncs
    assert node.row("reader")["id"] == first

    # Replaced by a rename: the bind mount still holds the old inode, so a
    # new container is started, which sees the new file.
    new = node.layers / ".app.conf.new"
    new.write_text("three, a new file\n")
    new.rename(conf)

    def replaced() -> str | None:
        now = node.running("reader")()
        return now if now is not None and now != first else None

    eventually(replaced)
    eventually(sees("three, a new file\n"))
