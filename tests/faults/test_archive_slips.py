"""Fault: an archive layer whose members try to leave the layer, given to a real daemon.

``tests/test_unpack.py`` refuses each of these archives at the unpacker; here
a real daemon (rootless, real bwrap) is given them as a squishfile's path
layer, next to a container that already runs. Every member that escapes
aims at one of two places: a canary directory beside the archive (holding
one file, which a hard link could reach) and the user's home. A tar and a
zip of each: ``../`` names, absolute names, a symlink out and a member
written through it, a hard link to the canary's file, a device node and a
fifo; each archive starts with a good member, so a half-unpacked layer
would not be empty.

What must hold: the container never starts (failed, or in back-off with
each retry refused from memory, the archive unpacked once) and its reason is
one line naming the archive and the member; the canary and the home are as
they were; the layer cache holds no entry (nor a temporary directory) for
the archive; the other container runs on, untouched. A setuid (and a setgid) member is no
escape: that container runs, and from inside the file has lost the bit.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon
from tests.test_unpack import Entry, dir_, file_, link, special, tar_bytes, zip_bytes

SLEEPER = 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'

APP = """network = "none"
[layers]
app = {{ path = "./{archive}", target = "/app" }}
[run]
command = "/bin/sh"
args = ["-c", "stat -c '%n %a' /app/ok.txt /app/suid /app/sgid; echo end; exec sleep 1000"]
[restart]
policy = "never"
"""

# Where an unpack works: <root>/state/layers/sha256/.<digest>.<pid>.<random>.tmp,
# so from there this many ".." reach <root>, the daemon's directory.
UP_TO_ROOT = "../../../.."


@dataclass(frozen=True)
class Places:
    """Where escapes aim: the canary directory beside the archive, and the home."""

    canary: Path
    home: Path

    @property
    def canary_up(self) -> str:
        """The canary as a path relative to the unpack's working directory."""
        return f"{UP_TO_ROOT}/manifests/{self.canary.name}"


OK = file_("ok.txt", b"a good member first\n")
REG = stat.S_IFREG | 0o644


@dataclass(frozen=True)
class Slip:
    """An archive (its name, its bytes) and its refusal: the member named, and why."""

    archive: str
    build: Callable[[Places], bytes]
    refused: Callable[[Places], str]


def tar(*members: Entry, compression: str = "") -> bytes:
    return tar_bytes([OK, *members], compression)


def zip_(*members: tuple[str, bytes, int]) -> bytes:
    return zip_bytes([("ok.txt", b"a good member first\n", REG), *members])


DOTDOT = "has a '..' component, which would leave the layer"
ABSOLUTE = "is an absolute path; members must be relative"

SLIPS = {
    "tar-dotdot": Slip(
        "dotdot.tar",
        lambda at: tar(file_(f"{at.canary_up}/evil", b"x")),
        lambda at: f"member '{at.canary_up}/evil' {DOTDOT}",
    ),
    "tar-absolute-canary": Slip(
        "absolute.tar",
        lambda at: tar(file_(f"{at.canary}/evil", b"x")),
        lambda at: f"member '{at.canary}/evil' {ABSOLUTE}",
    ),
    "tar-absolute-home": Slip(
        "home.tar.gz",
        lambda at: tar(file_(f"{at.home}/.profile.evil", b"x"), compression="gz"),
        lambda at: f"member '{at.home}/.profile.evil' {ABSOLUTE}",
    ),
    "tar-symlink-out-then-through": Slip(
        "symlink.tar",
        lambda at: tar(link("out", str(at.home)), file_("out/.profile.evil", b"x")),
        lambda at: f"member 'out' is a symlink to '{at.home}', outside the layer",
    ),
    "tar-relative-symlink-out-then-through": Slip(
        "uplink.tar.xz",
        lambda at: tar(link("up", at.canary_up), file_("up/evil", b"x"), compression="xz"),
        lambda at: f"member 'up' is a symlink to '{at.canary_up}', outside the layer",
    ),
    "tar-symlink-inside-then-through": Slip(
        "alias.tar",
        lambda at: tar(dir_("real"), link("alias", "real"), file_("alias/f", b"x")),
        lambda at: "member 'alias/f' would be written through the symlink 'alias'",
    ),
    "tar-hardlink-out-absolute": Slip(
        "hardlink.tar",
        lambda at: tar(link("hl", f"{at.canary}/secret", tarfile.LNKTYPE)),
        lambda at: f"member 'hl' is a hard link to '{at.canary}/secret', outside the layer",
    ),
    "tar-hardlink-out-relative": Slip(
        "hardlink-up.tar.bz2",
        lambda at: tar(link("hl", f"{at.canary_up}/secret", tarfile.LNKTYPE), compression="bz2"),
        lambda at: f"member 'hl' is a hard link to '{at.canary_up}/secret', outside the layer",
    ),
    "tar-char-device": Slip(
        "chr.tar",
        lambda at: tar(special("dev/null", tarfile.CHRTYPE)),
        lambda at: "member 'dev/null' is a device node",
    ),
    "tar-block-device": Slip(
        "blk.tar",
        lambda at: tar(special("dev/sda", tarfile.BLKTYPE)),
        lambda at: "member 'dev/sda' is a device node",
    ),
    "tar-fifo": Slip(
        "fifo.tar",
        lambda at: tar(special("pipe", tarfile.FIFOTYPE)),
        lambda at: "member 'pipe' is a fifo",
    ),
    "zip-dotdot": Slip(
        "dotdot.zip",
        lambda at: zip_((f"{at.canary_up}/evil", b"x", REG)),
        lambda at: f"member '{at.canary_up}/evil' {DOTDOT}",
    ),
    "zip-absolute": Slip(
        "absolute.zip",
        lambda at: zip_((f"{at.home}/.profile.evil", b"x", REG)),
        lambda at: f"member '{at.home}/.profile.evil' {ABSOLUTE}",
    ),
    "zip-symlink-out-then-through": Slip(
        "symlink.zip",
        lambda at: zip_(
            ("out", str(at.canary).encode(), stat.S_IFLNK | 0o777), ("out/evil", b"x", REG)
        ),
        lambda at: f"member 'out' is a symlink to '{at.canary}', outside the layer",
    ),
    "zip-char-device": Slip(
        "chr.zip",
        lambda at: zip_(("null", b"", stat.S_IFCHR | 0o666)),
        lambda at: "member 'null' is a device node",
    ),
    "zip-fifo": Slip(
        "fifo.zip",
        lambda at: zip_(("pipe", b"", stat.S_IFIFO | 0o644)),
        lambda at: "member 'pipe' is a fifo",
    ),
}

# The home's parts that the machinery running the tests writes meanwhile
# (worktree copies, virtual environments, pip's cache), not a container.
HOME_BUSY = frozenset({"wt", "venvs", ".cache"})

Snapshot = dict[str, tuple[int, int, int, int, int]]


def snapshot(top: Path, skip: frozenset[str] = frozenset()) -> Snapshot:
    """Every path under ``top``, symlinks not followed: (mode, size, mtime, inode, links)."""
    found: Snapshot = {}
    for directory, dirs, files in os.walk(top):
        if Path(directory) == top:
            dirs[:] = [name for name in dirs if name not in skip]
        for name in [".", *dirs, *files]:
            path = Path(directory, name)
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # gone meanwhile
            mtime = 0 if name != "." and stat.S_ISDIR(info.st_mode) else info.st_mtime_ns
            found[str(path.relative_to(top))] = (
                info.st_mode,
                info.st_size,
                mtime,
                info.st_ino,
                info.st_nlink,
            )
    return found


def cache_listing(daemon: Daemon) -> list[str]:
    """The names in the layer cache's entries dir and manifests dir (temporaries too)."""
    layers = daemon.root / "state" / "layers"
    return sorted(
        f"{part}/{child.name}"
        for part in ("sha256", "manifests")
        if (layers / part).is_dir()
        for child in (layers / part).iterdir()
    )


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--backoff-initial", "0.2", "--backoff-max", "0.4")
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


@pytest.fixture
def places(daemon: Daemon) -> Places:
    canary = daemon.manifests / "canary"
    canary.mkdir()
    (canary / "secret").write_text("only the host's\n")
    return Places(canary=canary, home=Path.home())


def running_pid(daemon: Daemon, name: str) -> int | None:
    detail = daemon.detail(name)
    if detail is None or detail["phase"] != "running" or detail["pid"] is None:
        return None
    return detail["pid"]


def wait_sleeper(daemon: Daemon) -> int:
    (daemon.manifests / "sleeper.toml").write_text(SLEEPER)
    return eventually(lambda: running_pid(daemon, "sleeper"))


def logged(daemon: Daemon, name: str) -> str:
    """The log of ``name`` once its command has printed ``end``."""
    log = daemon.root / "state" / "logs" / f"{name}.log"

    def ended() -> str | None:
        text = log.read_text() if log.exists() else ""
        return text if "end\n" in text else None

    return eventually(ended)


def metric(text: str, pattern: str) -> float:
    match = re.search(pattern + r" (\S+)", text)
    return float(match.group(1)) if match else 0.0


def retried(daemon: Daemon, name: str, times: int) -> str | None:
    """The metrics once ``name`` has failed to start ``times`` times."""
    text = daemon.metrics()
    failures = metric(text, rf'squish_container_start_failures_total\{{container="{name}"\}}')
    return text if failures >= times else None


def ps_line(daemon: Daemon, name: str) -> str:
    listed = daemon.squish("ps", "-a")
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if row.split()[1:2] == [name]]
    return line


@pytest.mark.parametrize("case", sorted(SLIPS))
def test_an_escaping_archive_fails_its_container_and_writes_nothing_outside(
    daemon: Daemon, places: Places, case: str
) -> None:
    slip = SLIPS[case]
    archive = daemon.manifests / slip.archive
    archive.write_bytes(slip.build(places))
    sleeper = wait_sleeper(daemon)
    cached = cache_listing(daemon)
    canary = snapshot(places.canary)
    home = snapshot(places.home, skip=HOME_BUSY)

    (daemon.manifests / "app.toml").write_text(APP.format(archive=slip.archive))

    # Refused at the first start and at each retry after it (from memory:
    # the archive is unpacked once).
    text = eventually(lambda: retried(daemon, "app", 3))
    assert metric(text, r'squish_layer_fetches_total\{kind="archive",result="error"\}') == 1
    detail = daemon.detail("app")
    assert detail is not None
    assert (detail["phase"], detail["pid"]) in (("backoff", None), ("failed", None)), detail
    refused = f"{archive}: {slip.refused(places)}"
    assert detail["reason"] == f"layer 'app': {refused}"
    assert ps_line(daemon, "app").endswith(f" layer 'app': {refused}")

    assert snapshot(places.canary) == canary
    assert snapshot(places.home, skip=HOME_BUSY) == home
    assert not (places.home / ".profile.evil").exists()
    assert cache_listing(daemon) == cached
    assert running_pid(daemon, "sleeper") == sleeper
    assert "Traceback" not in daemon.log_text()


SETUID = {
    "tar": lambda: tar(
        file_("suid", b"#!/bin/sh\n", 0o4755), file_("sgid", b"#!/bin/sh\n", 0o2755)
    ),
    "zip": lambda: zip_(
        ("suid", b"#!/bin/sh\n", stat.S_IFREG | 0o4755),
        ("sgid", b"#!/bin/sh\n", stat.S_IFREG | 0o2755),
    ),
}


@pytest.mark.parametrize("kind", sorted(SETUID))
def test_a_setuid_member_runs_without_its_bit(daemon: Daemon, places: Places, kind: str) -> None:
    archive = f"setuid.{kind}"
    (daemon.manifests / archive).write_bytes(SETUID[kind]())
    sleeper = wait_sleeper(daemon)
    canary = snapshot(places.canary)

    (daemon.manifests / "app.toml").write_text(APP.format(archive=archive))

    eventually(lambda: running_pid(daemon, "app"))
    seen = logged(daemon, "app")
    assert seen.splitlines() == ["/app/ok.txt 644", "/app/suid 755", "/app/sgid 755", "end"]
    assert snapshot(places.canary) == canary
    assert running_pid(daemon, "sleeper") == sleeper
