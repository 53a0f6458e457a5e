"""Fault: a start that hangs. A real daemon, rootless, and a real hanging child.

The daemon finds bwrap on its PATH; here that is a wrapper that runs the
real bwrap, except once the test has armed it (a file; the wrapper looks at
nothing of how it is called, which is the runtime's business): from then on
bwrap is told to copy a file into the sandbox from a pipe whose writer (a
``sleep``) never writes, so the sandbox's set-up blocks half-way, as a mount of a hung FUSE or
NFS path does. bwrap has cloned the sandbox, written its pid, taken part in
the network handshake; it never gets to the command. The wrapper, the
``sleep``, bwrap and the sandbox are one process group; "nothing left" is
that group gone, with no slirp4netns of the daemon's left either.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from squish.cli.client import Client
from squish.daemon.control import DaemonControl
from squish.errors import SquishError
from squish.layers import LayerStore
from squish.model.squishfile import Squishfile
from squish.reconcile.plan import Backoff
from squish.reconcile.reconciler import Reconciler
from squish.reconcile.status import Phase
from squish.runtime import ContainerSpec, PortForward
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime.fake import FakeRuntime
from tests.conftest import container_dirs, eventually, free_port
from tests.control_plane import real_plane
from tests.faults.daemon_under_test import slirps_of
from tests.test_daemon import daemon, wait_for_socket

STUCK = """\
[run]
command = "/bin/sh"
args = ["-c", "sleep 1000"]
"""
STUCK_WITH_A_PORT = STUCK + "\n[[ports]]\ncontainer = 8080\nhost = {port}\n"
# Unrelated to the fault: it must run on, untouched, whatever happens to stuck.
BYSTANDER = 'network = "none"\n[run]\ncommand = "/bin/sh"\nargs = ["-c", "sleep 1000"]\n'
# A command that ignores SIGTERM: stopping it takes the whole grace.
STUBBORN = """\
network = "none"
[run]
command = "/bin/sh"
args = ["-c", "trap '' TERM; while :; do sleep 1; done"]
"""


def hanging_bwrap(directory: Path, pids: Path, armed: Path) -> Path:
    """A ``bwrap`` whose sandbox set-up never finishes while ``armed`` exists."""
    real, sleep = shutil.which("bwrap"), shutil.which("sleep")
    assert real is not None and sleep is not None
    directory.mkdir()
    wrapper = directory / "bwrap"
    # Absolute paths and no variables: bwrap may be started with an empty
    # environment.
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ -e {armed} ]; then\n"
        f"    echo $$ >> {pids}\n"
        f'    {sleep} 1000000 | {real} --file 0 /stuck "$@"\n'
        "else\n"
        f'    exec {real} "$@"\n'
        "fi\n"
    )
    wrapper.chmod(0o755)
    return directory


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still there, zombies too."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            return True
    return False


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    manifests: Path
    pids: Path
    armed: Path
    metrics_url: str

    def arm(self) -> None:
        """From now on, every start hangs."""
        self.armed.touch()

    def rows(self) -> dict[str, dict[str, object]]:
        with Client(self.socket) as client:
            return {row["name"]: dict(row) for row in client.containers()}

    def row(self, name: str) -> dict[str, object] | None:
        return self.rows().get(name)

    def hung(self) -> int | None:
        """The process group of the hanging start, once it hangs."""
        if not self.pids.exists() or not self.pids.read_text().split():
            return None
        pgid = int(self.pids.read_text().split()[-1])
        return pgid if group_alive(pgid) else None

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    def terminate(self) -> tuple[float, str]:
        """SIGTERM; returns how long the daemon took to exit, and its log."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=40)
        return time.monotonic() - began, err.decode()


StartDaemon = Callable[..., "Daemon"]


@pytest.fixture
def start_daemon(tmp_path: Path, rootless: None) -> Iterator[StartDaemon]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> Daemon:
        pids, armed = tmp_path / "hung.pids", tmp_path / "armed"
        bin_dir = hanging_bwrap(tmp_path / "bin", pids, armed)
        (tmp_path / "manifests").mkdir(exist_ok=True)
        process = daemon(
            tmp_path,
            "d",
            *options,
            state=tmp_path / "state",
            PATH=f"{bin_dir}:{os.environ['PATH']}",
        )
        started.append(process)
        args = list(process.args)  # type: ignore[arg-type]
        metrics = f"http://{args[args.index('--metrics-addr') + 1]}/metrics"
        wait_for_socket(tmp_path / "d.sock", process)
        return Daemon(process, tmp_path / "d.sock", tmp_path / "manifests", pids, armed, metrics)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def write(daemon: Daemon, name: str, text: str) -> None:
    temporary = daemon.manifests / f".{name}.tmp"
    temporary.write_text(text)
    temporary.rename(daemon.manifests / f"{name}.toml")


def phase(daemon: Daemon, name: str, wanted: str) -> dict[str, object] | None:
    row = daemon.row(name)
    return row if row is not None and row["phase"] == wanted else None


@pytest.mark.parametrize("networked", [False, True], ids=["no-network", "with-a-port"])
def test_a_start_that_hangs_is_killed_reported_and_backed_off(
    start_daemon: StartDaemon, networked: bool
) -> None:
    d: Daemon = start_daemon("--start-timeout", "2", "--backoff-initial", "120")
    write(d, "bystander", BYSTANDER)
    bystander = eventually(lambda: phase(d, "bystander", "running"))
    d.arm()
    write(d, "stuck", STUCK_WITH_A_PORT.format(port=free_port()) if networked else STUCK)
    pgid = eventually(d.hung)
    began = time.monotonic()

    # Never "running" while it hangs: it has no command.
    row = d.row("stuck")
    assert row is not None and row["phase"] == "pending" and row["pid"] is None
    assert row["reason"] == "starting"  # what ps -a says meanwhile

    failed = eventually(lambda: phase(d, "stuck", "backoff"))
    assert time.monotonic() - began < 10
    assert "did not start within 2 s" in str(failed["reason"])
    assert failed["next_restart_at"] is not None
    eventually(lambda: None if group_alive(pgid) else True, timeout=10)
    assert slirps_of(d.process.pid) == []
    assert 'squish_container_start_failures_total{container="stuck"} 1.0' in d.metrics()
    assert 'squish_container_restarts_total{container="stuck"} 0.0' in d.metrics()
    # Backed off: not started again within the back-off (120 s).
    time.sleep(1)
    again = d.row("stuck")
    assert again is not None and again["phase"] == "backoff"
    assert len(d.pids.read_text().split()) == 1
    # The unrelated container ran on, the same one.
    still = phase(d, "bystander", "running")
    assert still is not None and still["id"] == bystander["id"]

    _, log = d.terminate()
    failures = [line for line in log.splitlines() if "container.failed stuck:" in line]
    assert len(failures) == 1, log
    assert "did not start within 2 s" in failures[0]


def test_deleting_the_manifest_of_a_stuck_start_ends_it(start_daemon: StartDaemon) -> None:
    d: Daemon = start_daemon("--start-timeout", "600")
    d.arm()
    write(d, "stuck", STUCK)
    pgid = eventually(d.hung)

    (d.manifests / "stuck.toml").unlink()
    eventually(lambda: True if d.row("stuck") is None else None, timeout=10)
    eventually(lambda: None if group_alive(pgid) else True, timeout=10)
    d.terminate()


def test_stopping_a_stuck_start_answers_at_once(start_daemon: StartDaemon) -> None:
    d: Daemon = start_daemon("--start-timeout", "600")
    d.arm()
    write(d, "stuck", STUCK_WITH_A_PORT.format(port=free_port()))
    pgid = eventually(d.hung)

    began = time.monotonic()
    with Client(d.socket) as client:
        row = client.stop("stuck")
    assert time.monotonic() - began < 5
    assert row["phase"] == "stopped"
    eventually(lambda: None if group_alive(pgid) else True, timeout=10)
    assert slirps_of(d.process.pid) == []
    d.terminate()


def test_sigterm_ends_the_daemon_within_its_stop_timeout_despite_a_stuck_start(
    start_daemon: StartDaemon,
) -> None:
    d: Daemon = start_daemon("--start-timeout", "600", "--stop-timeout", "2")
    write(d, "stubborn", STUBBORN)
    stubborn = eventually(lambda: phase(d, "stubborn", "running"))
    d.arm()
    write(d, "stuck", STUCK_WITH_A_PORT.format(port=free_port()))
    pgid = eventually(d.hung)

    took, log = d.terminate()
    assert d.process.returncode == 0, log
    assert took < 2 + 5, log
    assert not group_alive(pgid)
    assert not Path(f"/proc/{stubborn['pid']}").exists()
    with pytest.raises(SquishError):
        Client(d.socket).status()


@pytest.mark.anyio
@pytest.mark.parametrize("networked", [False, True], ids=["no-network", "with-a-port"])
async def test_a_start_cancelled_while_it_hangs_leaves_nothing_behind(
    tmp_path: Path, rootless: None, base_rootfs: Path, networked: bool
) -> None:
    # The runtime alone: its start is what the daemon's deadline cancels.
    pids, armed = tmp_path / "hung.pids", tmp_path / "armed"
    armed.touch()
    wrapper = hanging_bwrap(tmp_path / "bin", pids, armed) / "bwrap"
    ports = (PortForward(free_port(), 8080),) if networked else ()
    spec = ContainerSpec(
        name="stuck", rootfs=base_rootfs, command="/bin/true", ports=ports, network=networked
    )
    async with BwrapRuntime(
        run_dir=tmp_path / "run", log_dir=tmp_path / "logs", bwrap=str(wrapper)
    ) as runtime:
        fds = sorted(os.listdir("/proc/self/fd"))
        with anyio.move_on_after(1) as deadline:
            await runtime.start(spec)
        assert deadline.cancelled_caught
        assert time.monotonic() - deadline.deadline < 5  # the clean-up too is bounded

        assert runtime.list() == []
        assert not group_alive(int(pids.read_text()))
        assert slirps_of(os.getpid()) == []
        assert container_dirs(tmp_path / "run") == []
        assert sorted(os.listdir("/proc/self/fd")) == fds


# -- the reconciler on the in-memory runtime: the same rules, quick to check ------


def fake_spec(squishfile: Squishfile, _store: LayerStore) -> ContainerSpec:
    return ContainerSpec(name=squishfile.name, rootfs=Path("/rootfs"), command=squishfile.command)


@asynccontextmanager
async def reconciling(tmp_path: Path, start_timeout: float) -> AsyncIterator[Reconciler]:
    # A long back-off: the test sees the one failed start, not its retries.
    backoff = Backoff(initial=60, maximum=60)
    async with real_plane(
        tmp_path, start_timeout=start_timeout, backoff=backoff, resolve=fake_spec
    ) as plane:
        yield plane.reconciler


async def row_of(reconciler: Reconciler, name: str, wanted: Phase) -> dict[str, object]:
    with anyio.fail_after(5):
        while True:
            rows = {row["name"]: row for row in DaemonControl(reconciler).containers()}
            if name in rows and rows[name]["phase"] == wanted:
                return dict(rows[name])
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_the_reconciler_fails_a_start_past_its_deadline(tmp_path: Path) -> None:
    async with reconciling(tmp_path, start_timeout=0.3) as reconciler:
        fake = reconciler.runtime
        assert isinstance(fake, FakeRuntime)
        fake.hang_next_start("web")
        with reconciler.subscribe() as events:
            await DaemonControl(reconciler).apply("web", b'[run]\ncommand = "/bin/app"\n')

            failed = await row_of(reconciler, "web", Phase.BACKOFF)
            event = await events.receive()
            while event.kind != "container.failed":
                event = await events.receive()
        assert "did not start within 0.3 s" in str(failed["reason"])
        assert event.message == failed["reason"]
        assert fake.list() == []
        assert reconciler.metrics is not None
        assert 'squish_container_start_failures_total{container="web"} 1.0' in (
            reconciler.metrics.exposition().decode()
        )


@pytest.mark.anyio
async def test_an_edit_ends_a_stuck_start_and_the_new_version_runs(tmp_path: Path) -> None:
    async with reconciling(tmp_path, start_timeout=600) as reconciler:
        fake = reconciler.runtime
        assert isinstance(fake, FakeRuntime)
        fake.hang_next_start("web")
        await DaemonControl(reconciler).apply("web", b'[run]\ncommand = "/bin/old"\n')
        with anyio.fail_after(5):
            while ("start", "web") not in fake.calls:
                await anyio.sleep(0.01)

        await DaemonControl(reconciler).apply("web", b'[run]\ncommand = "/bin/new"\n')

        await row_of(reconciler, "web", Phase.RUNNING)
        (container,) = fake.list()
        assert container.spec.command == "/bin/new"
