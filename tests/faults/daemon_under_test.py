"""A real squish daemon as a subprocess, for the fault tests of ``tests/faults/``.

Its log goes to a file rather than a pipe: a fault that makes the daemon
talk a lot must not wedge it on a pipe nobody reads. ``terminate()`` sends
SIGTERM and says how long the daemon took to exit, and with what. Beside it,
what the fault tests read off the host: processes below a pid, the live
slirp4netns of a parent, an HTTP answer through a forward.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from squish.api_schema import ContainerDetail
from squish.cli.client import ApiError, Client
from squish.errors import SquishError
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


class Daemon:
    """``squish daemon`` on ``root/manifests`` with its state, socket and log in ``root``.

    ``prefix`` is put before the command (e.g. a program that changes the
    daemon's surroundings and then execs it).
    """

    def __init__(self, root: Path, *extra: str, prefix: Sequence[str] = ()) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.socket = root / "d.sock"
        self.log = root / "daemon.log"
        self.metrics_port = free_port()
        self.manifests.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "squish",
                    "daemon",
                    "--manifests",
                    str(self.manifests),
                    "--state-dir",
                    str(root / "state"),
                    "--socket",
                    str(self.socket),
                    "--metrics-addr",
                    f"127.0.0.1:{self.metrics_port}",
                    *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the daemon exited:\n{self.log_text()}"
            if self.socket.exists():
                with Client(self.socket) as client, contextlib.suppress(SquishError):
                    client.status()
                    return
            time.sleep(0.05)
        raise AssertionError(f"no daemon on {self.socket}:\n{self.log_text()}")

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def detail(self, name: str) -> ContainerDetail | None:
        """``inspect`` of ``name``; None while the daemon knows no such container."""
        with self.client() as client:
            try:
                return client.inspect(name)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise

    def phase(self, name: str) -> str | None:
        detail = self.detail(name)
        return None if detail is None else detail["phase"]

    def squish(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """The ``squish`` command against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "squish", "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def metrics(self) -> str:
        """The text of ``/metrics``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; the exit status (None if still running after ``timeout``) and seconds taken."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - began
        return code, time.monotonic() - began

    def kill(self) -> None:
        """What is left of the daemon, for a test's clean-up: SIGKILL it and its group."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, read from /proc (children of every thread)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def children_of(pid: int, *, name: str = "", cmdline: bytes = b"") -> list[int]:
    """The live children of ``pid`` with that process name, or that bytes in their cmdline."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes() if cmdline else b""
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        ours = fields.get("PPid", "").strip() == str(pid)
        dead = fields.get("State", "").startswith("Z")
        wanted = (not name or fields.get("Name") == name) and cmdline in argv
        if wanted and ours and not dead:
            found.append(int(entry.name))
    return found


def slirps_of(pid: int) -> list[int]:
    """The live slirp4netns processes whose parent is ``pid``."""
    return children_of(pid, name="slirp4netns")


def http_answers(port: int, needle: bytes) -> bool | None:
    """True once 127.0.0.1:``port`` answers HTTP with ``needle`` in it; None before."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
    except OSError:
        return None
    return True if reply.startswith(b"HTTP/1.") and needle in reply else None
