"""A squish daemon started by a benchmark, and what the benchmarks read about it.

Imported by the daemon benchmarks (``drop_to_running.py``, ``scale.py``,
``event_cost.py``, ``capacity.py``, ...; not a benchmark itself).
``DaemonUnderTest`` runs ``squish daemon`` as a child process on directories
of its own (manifests, state, socket, log) with a free metrics port, waits
until its API answers, and stops it with SIGTERM, reporting the exit status.
``StartWatcher`` reads its event stream (when each container started or
failed); ``histogram_delta`` reads what its metrics say happened between two
scrapes. The rest reads squishfiles into existence and the kernel's view of
processes out of ``/proc``: CPU ticks, VmRSS, PSS, the process tree.

Everything runs as the ordinary user that runs the benchmark: squish is
rootless. All network traffic stays on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from stats import percentile

from squish.cli.client import Client
from squish.errors import SquishError

LOCALHOST = "127.0.0.1"
# The start of a record in the daemon's text log: "2024-05-01 12:00:00,123 LEVEL ...".
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
# One label of a Prometheus sample: name="value" (quotes escaped inside).
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WARMUP = "warmup"
HTTPD_PORT = 8080  # inside the container: no capabilities, so >= 1024


# -- numbers -------------------------------------------------------------------


def summary_ms(samples: list[float]) -> dict[str, float]:
    """n, median, p90 and p99 of samples in seconds, as milliseconds."""
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples) * 1e3, 2),
        "p90_ms": round(percentile(samples, 0.9) * 1e3, 2),
        "p99_ms": round(percentile(samples, 0.99) * 1e3, 2),
    }


# -- ports and squishfiles -----------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nobody has bound now.

    Taken below the kernel's ephemeral range (``ip_local_port_range``): a
    port from that range, free when picked, may be any connection's source
    port (the benchmark's own polls) by the time the daemon forwards it, and
    that start fails with "Address already in use" and backs off for 10 s.
    From a random place in the range below, so that successive calls do not
    keep picking the ports the last containers have just let go.
    """
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low = 10000
    port = random.randrange(low, ephemeral - count)  # noqa: S311 (not a secret)
    ports: list[int] = []
    with ExitStack() as stack:
        for _ in range(ephemeral - low):
            if len(ports) == count:
                return ports
            probe = stack.enter_context(socket.socket())
            try:
                probe.bind((LOCALHOST, port))
                ports.append(port)
            except OSError:
                pass  # in use
            port = port + 1 if port + 1 < ephemeral else low
    raise RuntimeError(f"fewer than {count} free ports below {ephemeral}")


def http_answers(port: int, timeout: float = 1.0) -> bool:
    """True when an HTTP GET to 127.0.0.1:port gets an HTTP status line back."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=timeout) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return conn.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def httpd_squishfile(site: Path, host_port: int) -> str:
    """busybox httpd on the built-in base serving ``site``, one TCP forward."""
    return (
        "[layers]\n"
        'base = "busybox"\n'
        f'site = {{ path = "{site}", target = "/srv/site" }}\n'
        "\n[run]\n"
        'command = "httpd"\n'
        f'args = ["-f", "-p", "{HTTPD_PORT}", "-h", "/srv/site"]\n'
        "\n[[ports]]\n"
        f"container = {HTTPD_PORT}\n"
        f"host = {host_port}\n"
    )


def sleep_squishfile() -> str:
    """A container without network that only sleeps."""
    return (
        'network = "none"\n'
        "\n[layers]\n"
        'base = "busybox"\n'
        "\n[run]\n"
        'command = "sleep"\n'
        'args = ["3600"]\n'
    )


def make_site(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_text("<p>squish bench</p>\n")
    return directory


# -- /proc ---------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads); with ``children``, + cutime + cstime
    (the children it has reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the comm: state is index 0, utime 11, stime 12, cutime 13, cstime 14.
    return sum(int(fields[i]) for i in (11, 12, 13, 14)[: 4 if children else 2]) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/PID/status`` (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` from ``smaps_rollup``."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise KeyError("Pss")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    comm: str
    argv: tuple[str, ...]


def processes(uid: int | None = None) -> dict[int, Proc]:
    """Every process (of ``uid``, if given) that can be read right now."""
    found: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            owner = os.stat(f"/proc/{pid}").st_uid
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to read
        if uid is not None and owner != uid:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        found[pid] = Proc(pid, ppid, owner, comm, argv)
    return found


def container_processes(work: Path, uid: int) -> list[Proc]:
    """bwrap and slirp4netns processes of ``uid`` started for ``work``.

    That is, whose argv mentions it, or that run below a process whose argv
    does (the daemon): bwrap keeps its options, host paths included, out of
    its argv.
    """
    marker = str(work)
    procs = processes(uid)

    def of_work(proc: Proc | None) -> bool:
        seen: set[int] = set()
        while proc is not None and proc.pid not in seen:
            if any(marker in arg for arg in proc.argv):
                return True
            seen.add(proc.pid)
            proc = procs.get(proc.ppid)
        return False

    return [
        proc for proc in procs.values() if proc.comm in ("bwrap", "slirp4netns") and of_work(proc)
    ]


# -- the daemon ----------------------------------------------------------------


def squish_command() -> list[str]:
    """``squish`` from PATH, else this interpreter's ``-m squish``."""
    found = shutil.which("squish")
    return [found] if found else [sys.executable, "-m", "squish"]


class DaemonUnderTest:
    """``squish daemon`` on ``work/{manifests,state,squish.sock,daemon.log}``.

    Use as a context manager; ``stop()`` (SIGTERM, bounded wait) returns the
    exit code, and leaving the block stops it if the benchmark did not.
    """

    def __init__(
        self, work: Path, *, extra_args: tuple[str, ...] = (), ready_timeout: float = 30.0
    ) -> None:
        self.work = work
        self.manifests = work / "manifests"
        self.state = work / "state"
        self.socket = work / "squish.sock"
        self.log_path = work / "daemon.log"
        self.metrics_port = free_ports(1)[0]
        self.extra_args = extra_args
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the daemon's own pid, as its API reports it
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

    def __enter__(self) -> Self:
        self.manifests.mkdir(parents=True, exist_ok=True)
        argv = [
            *squish_command(),
            "daemon",
            "--manifests",
            str(self.manifests),
            "--state-dir",
            str(self.state),
            "--socket",
            str(self.socket),
            "--metrics-addr",
            f"{LOCALHOST}:{self.metrics_port}",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            # A session of its own: a Ctrl-C meant for the benchmark does not
            # reach it; the benchmark stops it with SIGTERM on the way out.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            self.pid = int(self._wait_ready()["pid"])
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.exit_code is None:
            self.stop()

    def _wait_ready(self) -> dict[str, Any]:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited with {self.process.returncode} while starting:\n"
                    + self.log_tail()
                )
            if self.socket.exists():
                try:
                    with self.client() as client:
                        return client.status()
                except SquishError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"the daemon did not answer within {self.ready_timeout:g} s")

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """One scrape of the daemon's exporter: sample (with labels) -> value."""
        url = f"http://{LOCALHOST}:{self.metrics_port}/metrics"
        text = httpx.get(url, timeout=10.0).raise_for_status().text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                samples[sample] = float(value)
        return samples

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait up to ``timeout``; SIGKILL (and say so) past that."""
        assert self.process is not None
        if self.process.poll() is None:
            began = time.perf_counter()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.exit_code = self.process.returncode
                raise RuntimeError(
                    f"the daemon did not exit within {timeout:g} s of SIGTERM; killed it"
                ) from None
            self.stop_seconds = time.perf_counter() - began
        self.exit_code = self.process.returncode
        return self.exit_code

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """Records at WARNING or above from the daemon's log, each with its traceback.

        A record starts with its timestamp; the lines after it that do not
        (a traceback) belong to it.
        """
        if not self.log_path.exists():
            return []
        records: list[list[str]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if _RECORD.match(line) or not records:
                records.append([line])
            else:
                records[-1].append(line)
        levels = (" WARNING ", " ERROR ", " CRITICAL ")
        return [
            "\n".join(record)
            for record in records
            if any(level in record[0] for level in levels) or len(record) > 1
        ]


# -- metrics -------------------------------------------------------------------


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str, **labels: str
) -> tuple[int, float]:
    """Observations of histogram ``name`` between two scrapes, and their seconds.

    Summed over every label set that has ``labels`` (all of them if none are
    given), so it reads the same whether or not the histogram has labels.
    """

    def total(samples: dict[str, float], suffix: str) -> float:
        found = 0.0
        for key, value in samples.items():
            base, _, rest = key.partition("{")
            if base != f"{name}_{suffix}":
                continue
            have = dict(_LABEL.findall(rest))
            if all(have.get(label) == wanted for label, wanted in labels.items()):
                found += value
        return found

    count = total(after, "count") - total(before, "count")
    return round(count), total(after, "sum") - total(before, "sum")


def label_values(samples: dict[str, float], name: str, label: str) -> set[str]:
    """The values ``label`` takes on the samples of metric family ``name``."""
    return {
        value
        for key in samples
        if key.partition("{")[0].startswith(name)
        for found, value in _LABEL.findall(key.partition("{")[2])
        if found == label
    }


# -- the event stream ----------------------------------------------------------


class StartWatcher(threading.Thread):
    """Reads the daemon's event stream: when each container started or failed.

    A thread, because the client's stream blocks; it ends when the daemon
    closes the stream on shutdown (and is a daemon thread in case it does not).
    ``started`` keeps each name's first start, ``starts`` every one (a
    restart is a later ``container.started`` of the same name), ``exits`` every
    ``container.exited`` of each name, ``failed`` the first
    ``container.failed`` message of each name.
    """

    def __init__(self, socket: Path) -> None:
        super().__init__(name="start-watcher", daemon=True)
        self.socket = socket
        self.started: dict[str, float] = {}  # name -> the event's wall-clock time
        self.starts: dict[str, list[float]] = {}
        self.exits: dict[str, list[float]] = {}
        self.failed: dict[str, str] = {}
        self.failed_order: list[str] = []
        self.error: str | None = None
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            with Client(self.socket) as client:
                for event in client.events():
                    name = str(event.get("name"))
                    with self._changed:
                        if event.get("kind") == "container.started":
                            self.started.setdefault(name, float(event["at"]))
                            self.starts.setdefault(name, []).append(float(event["at"]))
                        elif event.get("kind") == "container.exited":
                            self.exits.setdefault(name, []).append(float(event["at"]))
                        elif event.get("kind") == "container.failed" and name not in self.failed:
                            self.failed[name] = str(event.get("message"))
                            self.failed_order.append(name)
                        self._changed.notify_all()
        except SquishError as exc:
            self.error = str(exc)
        finally:
            with self._changed:
                self._changed.notify_all()

    def start_count(self, name: str) -> int:
        with self._changed:
            return len(self.starts.get(name, ()))

    def wait_start(self, name: str, number: int, timeout: float) -> float:
        """The wall-clock time of ``name``'s start number ``number`` (0-based), once seen."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.starts.get(name, ())) <= number:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.is_alive():
                    stream = "open" if self.is_alive() else f"closed: {self.error}"
                    raise TimeoutError(
                        f"no start number {number + 1} of {name} within {timeout:g} s "
                        f"(event stream {stream})"
                    )
                self._changed.wait(remaining)
            return self.starts[name][number]


def warm_up(daemon: DaemonUnderTest, watcher: StartWatcher, timeout: float = 60.0) -> None:
    """Containers started and removed until the event stream has shown one start.

    The first builds the base. The stream subscribes a moment after its
    connection is accepted, so the first start may come too early for it:
    then another round.
    """
    deadline = time.monotonic() + timeout
    with daemon.client() as client:
        for attempt in range(5):
            name = f"{WARMUP}-{attempt}"
            staged = daemon.manifests / f".{name}.toml.tmp"
            staged.write_text(sleep_squishfile())
            staged.rename(daemon.manifests / f"{name}.toml")
            while not any(
                s["name"] == name and s["phase"] == "running" for s in client.containers()
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not start:\n" + daemon.log_tail())
                time.sleep(0.02)
            (daemon.manifests / f"{name}.toml").unlink()
            while any(s["name"] == name for s in client.containers()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not go away")
                time.sleep(0.02)
            if name in watcher.started:
                return
    raise RuntimeError(f"the daemon's event stream showed no start: {watcher.error}")
