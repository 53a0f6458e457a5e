"""No inotify instance left for the daemon's user: it falls back to the resync.

``fs.inotify.max_user_instances`` is machine-wide and root's to lower, and
using up the test user's own instances would starve whatever else runs as
that user meanwhile. Since Linux 5.11 (the ucounts) the limit is kept per
user namespace as ``/proc/sys/user/max_inotify_instances``, which the owner
of a new user namespace may set: the daemon runs as the same uid in a user
namespace of its own whose limit is 0, so its first ``inotify_init1``
fails with EMFILE, as on a host where the user's instances are all taken.
The daemon must start anyway, say so (log and ``squish sources``), run
containers and apply an edit at its periodic resync. A real daemon.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

# Runs its arguments as the same user, in a new user namespace that allows
# no inotify instance. The capabilities the namespace gives are dropped at
# exec, since the program does not run as uid 0 there.
WITHOUT_INOTIFY = """
import ctypes, os, sys
uid, gid = os.getuid(), os.getgid()
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
    sys.exit(f"unshare: {os.strerror(ctypes.get_errno())}")
for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"),
                   ("gid_map", f"{gid} {gid} 1")):
    with open(f"/proc/self/{name}", "w") as file:
        file.write(text)
with open("/proc/sys/user/max_inotify_instances", "w") as file:
    file.write("0")
os.execv(sys.argv[1], sys.argv[1:])
"""
PREFIX = (sys.executable, "-c", WITHOUT_INOTIFY)

PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
print(os.strerror(ctypes.get_errno()) if fd < 0 else "got an instance")
"""

SLEEPER = (
    'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n[env]\nVERSION = "{}"\n'
)
RESYNC = 1.0


def test_the_daemon_really_has_no_inotify_instance(rootless: None) -> None:
    probe = subprocess.run(
        [*PREFIX, sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    assert probe.stdout.strip() == "Too many open files", probe.stderr


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--resync", str(RESYNC), prefix=PREFIX)
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def version(daemon: Daemon, name: str) -> str | None:
    detail = daemon.detail(name)
    if detail is None or detail["phase"] != "running" or detail["applied"] is None:
        return None
    return detail["applied"]["env"].get("VERSION")


def test_without_inotify_the_resync_applies_changes(daemon: Daemon) -> None:
    eventually(
        lambda: "cannot watch" in daemon.log_text() or daemon.process.poll() is not None or None,
        timeout=10,
    )
    assert daemon.process.poll() is None, f"the daemon died:\n{daemon.log_text()}"
    sources = daemon.squish("sources")
    assert sources.returncode == 0, sources.stderr
    assert "WARNING: cannot watch" in sources.stdout
    assert "periodic resync" in sources.stdout

    (daemon.manifests / "web.toml").write_text(SLEEPER.format("1"))
    eventually(lambda: version(daemon, "web") == "1" or None, timeout=RESYNC + 10)
    (daemon.manifests / "web.toml").write_text(SLEEPER.format("2"))
    eventually(lambda: version(daemon, "web") == "2" or None, timeout=RESYNC + 10)

    assert "Traceback" not in daemon.log_text()
    code, _ = daemon.terminate(timeout=20)
    assert code == 0
