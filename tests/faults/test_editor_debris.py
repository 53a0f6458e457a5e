"""Editor and tool debris in the watched directory, beside a running container.

What vim, emacs, backup tools and git leave next to ``web.toml`` while it is
edited (swap files, vim's ``4913`` probe, emacs's autosave and its lock, a
dangling symlink; ``~`` backups, temporary and partial files), and things
that are named ``*.toml`` but are no squishfile (a directory, a FIFO that
would block a reader forever, a file nobody may read). None of them becomes
a container and none disturbs ``web``: its id stays the same. The
unreadable one is reported invalid, not a crash.

Then ``web.toml`` itself is written as editors write it: half of it first
(synced to disk, left for a resync to see: invalid, and the running version
goes on), then the rest, applied once; a save by rename over it; and vim's
``backupcopy=no`` dance (the original renamed to ``web.toml~``, a new file
written), with and without a change. A real daemon, rootless bwrap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.output import SHORT_ID
from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

RESYNC = 0.5


def squishfile(version: str) -> str:
    return (
        'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'
        f'[env]\nVERSION = "{version}"\n'
    )


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--resync", str(RESYNC))
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def running_version(daemon: Daemon, name: str = "web") -> tuple[str, str] | None:
    """(container id, VERSION) of ``name`` while it runs a version; None otherwise."""
    detail = daemon.detail(name)
    if detail is None or detail["phase"] != "running" or detail["applied"] is None:
        return None
    assert detail["id"] is not None
    return detail["id"], detail["applied"]["env"]["VERSION"]


def running_id(daemon: Daemon, version: str) -> str | None:
    """The id of ``web`` once it runs ``version``."""
    found = running_version(daemon)
    return found[0] if found is not None and found[1] == version else None


def names(daemon: Daemon) -> set[str]:
    with daemon.client() as client:
        return {row["name"] for row in client.containers()}


def starts(daemon: Daemon) -> int:
    return daemon.log_text().count("container.started web:")


def settle() -> None:
    """Long enough for the watcher and a few periodic resyncs to have looked."""
    time.sleep(4 * RESYNC)


def plant_debris(directory: Path) -> None:
    text = squishfile("debris")
    for name in (
        ".web.toml.swp",  # vim's swap file
        ".web.toml.swx",
        "4913",  # vim's probe: may it create files here?
        "#web.toml#",  # emacs's autosave
        "web.toml~",  # backups
        ".web.toml.tmp",  # a deploy tool's temporary file
        "web.toml.tmp",
        "web.toml.orig",  # git's merge leftovers and partial files
        "web.toml.rej",
        "web.toml.lock",
        ".merge_file_a1b2c3",
    ):
        (directory / name).write_text(text)
    # emacs's lock: a symlink to user@host.pid, which exists nowhere.
    os.symlink("squish-test@host.4242:1700000000", directory / ".#web.toml")
    (directory / "x.toml").mkdir()
    (directory / "x.toml" / "inner.toml").write_text(text)
    os.mkfifo(directory / "y.toml")  # opened for reading, it blocks until a writer comes
    # Unreadable from its first moment (renamed in once chmodded): a readable
    # z.toml, even for an instant, is a valid squishfile that starts, and then
    # keeps running as its last good version.
    unreadable = directory / ".z.toml.tmp"
    unreadable.write_text(text)
    unreadable.chmod(0o000)
    unreadable.rename(directory / "z.toml")


def test_debris_never_becomes_a_container_nor_disturbs_one(daemon: Daemon) -> None:
    (daemon.manifests / "web.toml").write_text(squishfile("1"))
    first, _ = eventually(lambda: running_version(daemon))

    plant_debris(daemon.manifests)
    z = eventually(lambda: daemon.detail("z"))
    settle()

    assert z["phase"] == "invalid"
    assert "cannot read the file" in (z["manifest_error"] or ""), z
    assert "Permission denied" in (z["manifest_error"] or ""), z
    assert names(daemon) == {"web", "z"}
    assert running_version(daemon) == (first, "1")
    assert starts(daemon) == 1
    ps = daemon.squish("ps", "-a")
    assert ps.returncode == 0, ps.stderr
    rows = {line.split()[1]: line for line in ps.stdout.splitlines()[1:]}
    assert set(rows) == {"web", "z"}, ps.stdout
    assert rows["web"].split()[0] == first[:SHORT_ID] and " running " in rows["web"]
    assert " invalid " in rows["z"] and "Permission denied" in rows["z"]
    # The FIFO did not block anyone: the daemon answers at once.
    began = time.monotonic()
    assert daemon.squish("status").returncode == 0
    assert time.monotonic() - began < 5

    # Half a squishfile, as a slow writer leaves it, cut inside a string.
    full = squishfile("2").encode()
    half = full.index(b"/bin/sl") + len(b"/bin/sl")
    fd = os.open(daemon.manifests / "web.toml", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, full[:half])
        os.fsync(fd)

        def invalid() -> str | None:
            detail = daemon.detail("web")
            return None if detail is None else detail["manifest_error"]

        error = eventually(invalid)
        assert "web.toml" in error
        settle()
        detail = daemon.detail("web")
        assert detail is not None
        assert detail["phase"] == "running"
        assert detail["manifest_error"] is not None
        assert running_version(daemon) == (first, "1")
        os.write(fd, full[half:])
    finally:
        os.close(fd)
    second = eventually(lambda: running_id(daemon, "2"))
    assert second != first
    settle()
    assert running_version(daemon) == (second, "2")
    assert starts(daemon) == 2  # the full version applied once
    assert daemon.detail("web")["manifest_error"] is None  # type: ignore[index]

    # A save by rename: a temporary name (debris itself), renamed over.
    temporary = daemon.manifests / "web.toml.tmp.4242"
    temporary.write_text(squishfile("3"))
    os.rename(temporary, daemon.manifests / "web.toml")
    third = eventually(lambda: running_id(daemon, "3"))
    settle()
    assert running_version(daemon) == (third, "3")
    assert starts(daemon) == 3

    # vim with backupcopy=no: the original becomes the backup, a new file is written.
    def vim_save(text: str) -> None:
        os.rename(daemon.manifests / "web.toml", daemon.manifests / "web.toml~")
        (daemon.manifests / "web.toml").write_text(text)

    vim_save(squishfile("4"))
    fourth = eventually(lambda: running_id(daemon, "4"))
    settle()
    assert running_version(daemon) == (fourth, "4")
    assert starts(daemon) == 4
    vim_save(squishfile("4"))  # `:w` with nothing changed: a new inode, the same text
    settle()
    assert running_version(daemon) == (fourth, "4")
    assert starts(daemon) == 4

    assert names(daemon) == {"web", "z"}
    ps = daemon.squish("ps", "-a")
    assert ps.returncode == 0, ps.stderr
    assert {line.split()[1] for line in ps.stdout.splitlines()[1:]} == {"web", "z"}
    log = daemon.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert "manifest removed" not in log, log[-4000:]  # not even for vim's dance
    code, _ = daemon.terminate(timeout=20)
    assert code == 0, daemon.log_text()[-4000:]
