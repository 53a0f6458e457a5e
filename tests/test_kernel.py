"""Tests of the runtime's kernel calls: the real reader of children, and the
start and stop decisions of ``BwrapRuntime`` on the recording fake.

The fake (``squish.runtime.fake_kernel.RecordingKernel``) stands in for every
call into the kernel but spawning, so the sandboxes here are made up: a
bwrap that was never spawned (``FakeMonitor``), its pid 1 and its command
exist only as pids the fake knows. What is checked is what the runtime asks
of the kernel (which signal, to which process or group, in which order) and
what it concludes (exit events, states). Nothing here spawns bwrap or needs
privileges; the real sandboxes are tests/test_runtime.py's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from squish.runtime import Container, ContainerSpec, ContainerState, ExitEvent
from squish.runtime.bwrap_runtime import (
    MARK_FILE,
    BwrapRuntime,
    _Live,
    _SandboxInfo,
    release_userns,
)
from squish.runtime.fake_kernel import Call, RecordingKernel
from squish.runtime.kernel import LinuxKernel, Process
from squish.runtime.logs import RotatingLog

MONITOR = 4100  # bwrap, spawned in a session (and process group) of its own
INIT = 4101  # the sandbox's pid 1
COMMAND = 4102  # the command, pid 2 inside

pytestmark = pytest.mark.anyio

SIGNALS = ("signal_pidfd", "kill", "kill_group")


def signals(kernel: RecordingKernel) -> list[Call]:
    return [call for call in kernel.calls if call.name in SIGNALS]


# -- the real reader of children ---------------------------------------------


def test_children_lists_a_child_forked_by_another_thread() -> None:
    """The children file is per thread: the one reader reads every thread's."""
    spawned: list[subprocess.Popen[bytes]] = []
    checked = threading.Event()

    def spawn_and_hold() -> None:
        spawned.append(subprocess.Popen(["sleep", "30"]))
        # Alive until checked: when a thread exits, the kernel moves its
        # children to another thread of the process.
        checked.wait(10)

    thread = threading.Thread(target=spawn_and_hold)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not spawned and time.monotonic() < deadline:
            time.sleep(0.01)
        (child,) = spawned
        main_thread_only = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
        assert child.pid not in [int(p) for p in main_thread_only.read_text().split()]
        assert child.pid in LinuxKernel().children(os.getpid())
    finally:
        checked.set()
        thread.join()
        for child in spawned:
            child.kill()
            child.wait()


def test_children_of_a_gone_process_are_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert LinuxKernel().children(proc.pid) == []


def test_processes_of_finds_this_process_with_its_name_and_argv() -> None:
    mine = {p.pid: p for p in LinuxKernel().processes_of(os.getuid())}
    me = mine[os.getpid()]
    assert me.uid == os.getuid()
    assert me.comm == Path("/proc/self/comm").read_bytes()
    assert me.cmdline == Path("/proc/self/cmdline").read_bytes()
    assert not any(p.uid != os.getuid() for p in mine.values())


# -- a runtime on the fake, with made-up sandboxes ---------------------------


class FakeMonitor:
    """bwrap's monitor as ``_Live`` sees it (a ``Popen``), alive until the fake ends it.

    ``Popen.poll`` reaps: so does this, in the fake's books.
    """

    def __init__(self, kernel: RecordingKernel, pid: int, exit_status: int) -> None:
        self.kernel = kernel
        self.pid = pid
        self.exit_status = exit_status  # Popen's returncode once it has exited
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.pid in self.kernel.exited:
            self.kernel.reaped.add(self.pid)
            self.returncode = self.exit_status
        return self.returncode

    def wait(self) -> int:
        code = self.poll()
        assert code is not None, "waited for a monitor that has not exited: it would hang"
        return code


@pytest.fixture
def kernel() -> Iterator[RecordingKernel]:
    fake = RecordingKernel()
    yield fake
    fake.close()


@pytest.fixture
async def runtime(tmp_path: Path, kernel: RecordingKernel) -> AsyncIterator[BwrapRuntime]:
    # "true" for the tools: found on PATH, never run (nothing here starts).
    async with BwrapRuntime(
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        bwrap="true",
        slirp4netns="true",
        kernel=kernel,
    ) as rt:
        yield rt


def sandbox(
    rt: BwrapRuntime,
    kernel: RecordingKernel,
    tmp_path: Path,
    *,
    init: int | None = INIT,
    monitor_status: int = -signal.SIGKILL,
) -> _Live:
    """A sandbox as start() has it once bwrap is spawned: its pid 1 said (or not)."""
    info_r, info_w = os.pipe2(os.O_CLOEXEC)
    if init is not None:
        os.write(info_w, json.dumps({"child-pid": init}).encode())
    os.close(info_w)  # bwrap has said all it will
    monitor = FakeMonitor(kernel, MONITOR, monitor_status)
    spec = ContainerSpec(name="web", rootfs=tmp_path, command="/app/web", network=False)
    container = Container(
        id="c0ffee" * 10, spec=spec, state=ContainerState.STARTING, started_at=time.time()
    )
    run_dir = rt.run_dir / container.id[:16]
    return _Live(
        container,
        monitor,  # type: ignore[arg-type]
        kernel.pidfd_open(MONITOR),
        _SandboxInfo(info_r),
        run_dir,
    )


def adopt(rt: BwrapRuntime, live: _Live, tmp_path: Path) -> Container:
    """Hand a set-up sandbox to the runtime, as start() does at its end."""
    log_r, log_w = os.pipe2(os.O_CLOEXEC)
    os.close(log_w)  # the made-up bwrap writes nothing
    return rt._adopt(live, log_r, RotatingLog(tmp_path / "web.log"))


async def next_exit(events: anyio.abc.ObjectReceiveStream[ExitEvent]) -> ExitEvent:
    with anyio.fail_after(5):
        return await events.receive()


# -- stop --------------------------------------------------------------------


async def test_stop_terms_the_command_then_kills_pid_1_and_bwraps_group_after_the_grace(
    runtime: BwrapRuntime, kernel: RecordingKernel, tmp_path: Path
) -> None:
    # The command ignores SIGTERM (only SIGKILL is fatal); SIGKILLing pid 1
    # ends the pid namespace, and bwrap with it.
    kernel.children_of[INIT] = [COMMAND]
    kernel.takes_along[INIT] = [COMMAND, MONITOR]
    container = adopt(runtime, sandbox(runtime, kernel, tmp_path), tmp_path)
    assert runtime.get(container.id).pid == COMMAND  # pid 1's child, as list() reports it

    with runtime.subscribe() as events:
        began = time.monotonic()
        stopped = await runtime.stop(container.id, grace=0.3)
        took = time.monotonic() - began
        event = await next_exit(events)

    assert signals(kernel) == [
        Call("signal_pidfd", (COMMAND, signal.SIGTERM)),
        Call("signal_pidfd", (INIT, signal.SIGKILL)),
        Call("kill_group", (MONITOR, signal.SIGKILL)),
    ]
    assert took >= 0.3, "SIGKILL came before the grace was over"
    assert stopped.state is ContainerState.EXITED
    assert (event.exit_code, event.stopped) == (128 + signal.SIGKILL, True)
    # As a subreaper we may have inherited pid 1: it is reaped, not left a zombie.
    assert INIT in kernel.reaped
    assert runtime.list() == []


async def test_stop_of_a_command_that_exits_on_sigterm_kills_nothing(
    runtime: BwrapRuntime, kernel: RecordingKernel, tmp_path: Path
) -> None:
    kernel.fatal = frozenset({signal.SIGTERM, signal.SIGKILL})
    kernel.children_of[INIT] = [COMMAND]
    kernel.takes_along[COMMAND] = [INIT, MONITOR]  # pid 1 exits with its command
    container = adopt(
        runtime, sandbox(runtime, kernel, tmp_path, monitor_status=128 + 15), tmp_path
    )

    with runtime.subscribe() as events:
        began = time.monotonic()
        await runtime.stop(container.id, grace=5)
        took = time.monotonic() - began
        event = await next_exit(events)

    assert took < 2, "stop waited for the grace of a command that had exited"
    assert signals(kernel) == [Call("signal_pidfd", (COMMAND, signal.SIGTERM))]
    assert (event.exit_code, event.stopped) == (128 + 15, True)


async def test_stop_before_pid_1_has_forked_the_command_still_kills_after_the_grace(
    runtime: BwrapRuntime, kernel: RecordingKernel, tmp_path: Path
) -> None:
    # Stopped right after start: pid 1 has no child yet (and never gets one).
    kernel.takes_along[INIT] = [MONITOR]
    container = adopt(runtime, sandbox(runtime, kernel, tmp_path), tmp_path)

    await runtime.stop(container.id, grace=0.1)

    assert len(kernel.calls_to("children")) > 1, "looked for the command only once"
    assert signals(kernel) == [
        Call("signal_pidfd", (INIT, signal.SIGKILL)),
        Call("kill_group", (MONITOR, signal.SIGKILL)),
    ]


# -- abort (a start that failed or was cancelled half-way) -------------------


async def test_abort_kills_pid_1_and_bwraps_whole_group_and_reaps_them(
    runtime: BwrapRuntime, kernel: RecordingKernel, tmp_path: Path
) -> None:
    # A wrapper of bwrap started a helper in bwrap's group; it goes too, and
    # comes to us (the subreaper) to be reaped.
    helper = 4150
    kernel.groups[MONITOR] = {MONITOR, helper}
    kernel.takes_along[INIT] = [MONITOR]
    live = sandbox(runtime, kernel, tmp_path)

    await runtime._abort(live)

    assert signals(kernel) == [
        Call("signal_pidfd", (INIT, signal.SIGKILL)),
        Call("kill_group", (MONITOR, signal.SIGKILL)),
    ]
    assert {MONITOR, helper, INIT} <= kernel.reaped
    assert kernel.calls_to("reap_group")[0] == (MONITOR,)
    runtime._release(live)


async def test_abort_before_bwrap_said_its_pid_1_kills_only_bwraps_group(
    runtime: BwrapRuntime, kernel: RecordingKernel, tmp_path: Path
) -> None:
    live = sandbox(runtime, kernel, tmp_path, init=None)  # bwrap died before writing it

    await runtime._abort(live)

    assert signals(kernel) == [Call("kill_group", (MONITOR, signal.SIGKILL))]
    assert kernel.calls_to("pidfd_open") == [(MONITOR,)]
    runtime._release(live)


async def test_a_reaped_bwraps_group_is_never_signalled(
    runtime: BwrapRuntime, kernel: RecordingKernel, tmp_path: Path
) -> None:
    # Once bwrap is reaped its pid (the group's id) may belong to anyone.
    live = sandbox(runtime, kernel, tmp_path)
    kernel.end(MONITOR)
    kernel.end(INIT)
    assert live.monitor.poll() is not None

    await runtime._abort(live)

    assert not kernel.calls_to("kill_group")
    runtime._release(live)


# -- start: the user namespace's id map, and what a previous owner left -------


def test_release_userns_maps_root_to_us_then_releases_bwrap() -> None:
    kernel = RecordingKernel()
    ours, bwraps = socket.socketpair()
    with ours, bwraps:
        release_userns(kernel, INIT, ours.fileno())
        assert kernel.calls == [Call("map_ids", (INIT, (0, 0), (os.getuid(), os.getgid())))]
        assert bwraps.recv(1) == b"1"


def test_a_failed_id_map_never_releases_bwrap() -> None:
    refused = PermissionError(1, "Operation not permitted")
    kernel = RecordingKernel(failures={"map_ids": refused})
    ours, bwraps = socket.socketpair()
    with ours, bwraps:
        with pytest.raises(PermissionError):
            release_userns(kernel, INIT, ours.fileno())
        bwraps.setblocking(False)
        with pytest.raises(BlockingIOError):
            bwraps.recv(1)


def bwrap(pid: int, argv0: str, *, uid: int | None = None, comm: bytes = b"bwrap\n") -> Process:
    cmdline = argv0.encode() + b"\0--args\x0012\0/app/web\0"
    return Process(pid, os.getuid() if uid is None else uid, comm, cmdline)


async def test_a_new_runtime_kills_only_the_bwraps_of_the_previous_owners_mark(
    tmp_path: Path, kernel: RecordingKernel
) -> None:
    old = "bwrap-0123456789abcdef"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MARK_FILE).write_text(old + "\n")
    (run_dir / "0123456789abcdef").mkdir()  # a container's leftovers
    kernel.processes = [
        bwrap(5001, old),  # a sandbox caught setting up: killed
        bwrap(5002, "bwrap-fedcba9876543210"),  # another runtime's
        bwrap(5003, "bwrap"),  # another program's (flatpak's)
        bwrap(5004, old, comm=b"sh\n"),  # not a bwrap, whatever its argv
        bwrap(5005, old, uid=os.getuid() + 1),  # another user's
        bwrap(5006, old),  # gone meanwhile: no matter
    ]
    kernel.exited.add(5006)

    async with BwrapRuntime(
        run_dir=run_dir, log_dir=tmp_path / "logs", bwrap="true", slirp4netns="true", kernel=kernel
    ):
        assert kernel.calls_to("kill") == [(5001, signal.SIGKILL), (5006, signal.SIGKILL)]
        assert kernel.calls[0] == Call("become_subreaper")
        assert kernel.exited == {5001, 5006}
        assert [p.name for p in run_dir.iterdir()] == [MARK_FILE]
        assert (run_dir / MARK_FILE).read_text().strip() not in ("", old)


async def test_a_run_dir_without_a_mark_kills_nothing(
    tmp_path: Path, kernel: RecordingKernel
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MARK_FILE).write_text("garbage\n")
    kernel.processes = [bwrap(5001, "garbage")]
    async with BwrapRuntime(
        run_dir=run_dir, log_dir=tmp_path / "logs", bwrap="true", slirp4netns="true", kernel=kernel
    ):
        assert not kernel.calls_to("processes_of")
        assert not kernel.calls_to("kill")
