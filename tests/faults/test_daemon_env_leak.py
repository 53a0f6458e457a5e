"""Fault: the daemon's environment and host paths are readable from a container.

bwrap is a container's pid 1, so whatever bwrap was started with shows in
``/proc/1/environ`` and ``/proc/1/cmdline`` inside: a daemon started with
``SQUISH_WEBHOOK_SECRET`` (or any token) in its environment would hand it to
every container, and bwrap's argv names the host path of every bind mount.
A real daemon, with a secret in its environment, runs a networked and an
offline container that print the environ and cmdline of every process they
can see.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from squish.runtime import DEFAULT_PATH
from tests.conftest import eventually, free_port
from tests.test_daemon import daemon, wait_for_socket

SECRET = "webhook-secret-0f9d2c"  # noqa: S105 (a marker to look for)
TOKEN = "token-7be41a"  # noqa: S105

# Every process the container sees: its environ, then its cmdline, one line each.
SCRIPT = r"""for p in /proc/[0-9]*; do
  echo "== $p"
  tr '\0' ' ' < $p/environ; echo
  tr '\0' ' ' < $p/cmdline; echo
done
echo end
exec sleep 30
"""

MANIFEST = """{network}
[layers]
app = "./probe"

[run]
command = "/bin/sh"
args = ["-c", '''{script}''']
{ports}"""

# A UDP port: its forward is a relay process of the daemon's.
UDP = """
[[ports]]
container = 5353
host = {port}
protocol = "udp"
"""


@dataclass
class Daemon:
    pid: int
    state: Path


@pytest.fixture
def running(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    """A daemon with secrets in its environment, running both containers."""
    manifests = tmp_path / "manifests"
    (manifests / "probe").mkdir(parents=True)
    (manifests / "probe" / "data.txt").write_text("a host directory, bind-mounted\n")
    udp = UDP.format(port=free_port(socket.SOCK_DGRAM))
    networked = MANIFEST.format(network="", script=SCRIPT, ports=udp)
    (manifests / "networked.toml").write_text(networked)
    offline = MANIFEST.format(network='network = "none"', script=SCRIPT, ports="")
    (manifests / "offline.toml").write_text(offline)
    state = tmp_path / "state"
    process = daemon(
        tmp_path, "d", state=state, SQUISH_WEBHOOK_SECRET=SECRET, SQUISH_TEST_TOKEN=TOKEN
    )
    try:
        wait_for_socket(tmp_path / "d.sock", process)
        yield Daemon(process.pid, state)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def seen(state: Path, name: str) -> str:
    log = state / "logs" / f"{name}.log"

    def finished() -> str | None:
        text = log.read_text() if log.exists() else ""
        return text if "\nend\n" in text else None

    return eventually(finished)


@pytest.mark.parametrize("name", ["networked", "offline"])
def test_a_container_sees_nothing_of_the_daemon(tmp_path: Path, running: Daemon, name: str) -> None:
    text = seen(running.state, name)
    processes = text.split("== /proc/")[1:]
    pid1 = next(block for block in processes if block.startswith("1\n"))
    environ, cmdline = pid1.splitlines()[1:3]
    # It did read pid 1, bwrap, and its environment is only a PATH.
    assert environ.split() == [f"PATH={DEFAULT_PATH}"]
    # Its argv[0] is the daemon's mark for its sandboxes, a random word.
    assert re.match(r"bwrap-[0-9a-f]{16} --args \d+ -- ", cmdline), cmdline
    for leak in (SECRET, TOKEN, "SQUISH_", "HOME=", "PYTHONPATH", str(tmp_path)):
        assert leak not in text, f"{leak!r} is visible in {name}:\n{text}"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from each one's parent in /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found = [pid]
    for child, parent in sorted(parents.items()):
        if parent in found:
            found.append(child)
    return found[1:]


def test_the_helpers_run_with_nothing_of_the_daemon(running: Daemon) -> None:
    """Outside the container too: bwrap's monitors, slirp4netns, the UDP relay."""
    seen(running.state, "networked")
    environs = {}
    for pid in descendants(running.pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            command = Path(f"/proc/{pid}/comm").read_text().strip()
            environs[f"{pid} {command}"] = Path(f"/proc/{pid}/environ").read_bytes()
    assert any("slirp4netns" in process for process in environs)
    assert any("python" in process for process in environs)  # the relay
    assert sum("bwrap" in process for process in environs) >= 4  # 2 monitors, 2 pid 1s
    for process, environ in environs.items():
        if process.endswith(" sleep"):
            continue  # the commands: exactly their squishfile's env
        assert environ.split(b"\0")[:-1] == [f"PATH={DEFAULT_PATH}".encode()], process
