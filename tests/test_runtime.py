"""The real runtime, rootless, against real bwrap and slirp4netns.

Each test looks at a container from the inside (what its command prints to
its log) and from the outside (host files, host processes, host ports).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from squish.errors import PortInUse, RuntimeFailure
from squish.layers import LayerStore, Mount
from squish.model.host import host_paths
from squish.model.squishfile import parse_squishfile
from squish.reconcile.spec import container_spec
from squish.runtime import ContainerSpec, ExitEvent, PortForward, kernel
from squish.runtime.bwrap_runtime import BwrapRuntime
from tests.conftest import container_dirs, free_port
from tests.fake_http import Mirror

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent


def sh(rootfs: Path, script: str, *, name: str = "box", **kw: Any) -> ContainerSpec:
    options: dict[str, Any] = {"network": False, **kw}
    return ContainerSpec(
        name=name, rootfs=rootfs, command="/bin/sh", args=("-c", script), **options
    )


async def run_to_exit(rt: BwrapRuntime, spec: ContainerSpec) -> tuple[ExitEvent, str]:
    with rt.subscribe() as events:
        container = await rt.start(spec)
        with anyio.fail_after(15):
            async for event in events:
                if event.container_id == container.id:
                    break
    assert container.log_path is not None
    return event, container.log_path.read_text()


def http_get(port: int, path: str = "/", attempts: int = 400) -> bytes:
    """GET from the forwarded port, retrying while the server comes up."""
    error: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                body: bytes = reply.read()
                return body
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            error = exc
            time.sleep(0.01)
    raise AssertionError(f"no answer on port {port}: {error}")


def refused(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
            return False
    except (urllib.error.URLError, ConnectionError, OSError):
        return True


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        # Gone before the open, or between the open and the read (ESRCH).
        return False
    return state != "Z"


def live_children() -> list[int]:
    """This process's children that are alive.

    Once a runtime has made the test process a subreaper, orphans of other
    tests' subprocesses (git's helpers, daemons' children) are adopted by it
    and linger as zombies nobody waits for; they are not this test's.
    """
    return [pid for pid in kernel.LinuxKernel().children(os.getpid()) if alive(pid)]


def web_spec(rootfs: Path, www: Path, *ports: PortForward, name: str = "web") -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=rootfs,
        command="httpd",
        args=("-f", "-p", "8080", "-h", "/app/www"),
        mounts=(Mount(www, "/app/www", rw=False),),
        ports=ports,
    )


@pytest.fixture
def www(tmp_path: Path) -> Path:
    site = tmp_path / "www"
    site.mkdir()
    (site / "index.html").write_text("hello from squish\n")
    site.chmod(0o755)
    return site


# -- the filesystem ----------------------------------------------------------


async def test_root_is_read_only(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    before = sorted(os.listdir(base_rootfs))
    event, log = await run_to_exit(runtime, sh(base_rootfs, "touch /x; mkdir /etc/y; echo done"))
    assert event.exit_code == 0
    assert log.count("Read-only file system") == 2
    assert sorted(os.listdir(base_rootfs)) == before


async def test_ro_bind_is_read_only_and_rw_bind_writes_through(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "in.txt").write_text("from the host\n")
    spec = sh(
        base_rootfs,
        "cat /data/ro/in.txt; echo no > /data/ro/new; echo from-inside > /data/rw/out.txt",
        mounts=(Mount(ro, "/data/ro", rw=False), Mount(rw, "/data/rw", rw=True)),
    )
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code == 0
    assert "from the host" in log
    assert "Read-only file system" in log
    assert not (ro / "new").exists()
    assert (rw / "out.txt").read_text() == "from-inside\n"
    # Written as root inside, owned by us outside.
    assert (rw / "out.txt").stat().st_uid == os.getuid()
    assert not (base_rootfs / "data").exists()


async def test_targets_missing_from_the_base_never_touch_it(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nls /sdk/python; cat /etc/app.toml; grep -c root /etc/passwd\n")
    script.chmod(0o755)
    sdk = tmp_path / "python"
    (sdk / "bin").mkdir(parents=True)
    conf = tmp_path / "app.toml"
    conf.write_text("answer = 42\n")
    before = {p.relative_to(base_rootfs) for p in base_rootfs.rglob("*")}
    spec = ContainerSpec(
        name="layers",
        rootfs=base_rootfs,
        command="/app/run.sh",
        mounts=(
            Mount(script, "/app/run.sh", rw=False),
            Mount(sdk, "/sdk/python", rw=False),
            Mount(conf, "/etc/app.toml", rw=False),
        ),
        network=False,
    )
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code == 0, log
    assert log.split() == ["bin", "answer", "=", "42", "1"]
    assert {p.relative_to(base_rootfs) for p in base_rootfs.rglob("*")} == before


async def test_tmp_is_private_writable_and_bounded(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    spec = sh(
        base_rootfs,
        "echo scratch > /tmp/f && cat /tmp/f; dd if=/dev/zero of=/tmp/big bs=1M count=8",
        tmp_size=4 * 1024 * 1024,
    )
    event, log = await run_to_exit(runtime, spec)
    assert "scratch" in log
    assert "No space left on device" in log
    assert event.exit_code != 0


# -- identity and isolation -----------------------------------------------------


async def test_pid_hostname_uid_and_capabilities(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    script = (
        "echo pid=$$; echo host=$(hostname); echo uid=$(id -u); cat /proc/self/uid_map; "
        "grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status"
    )
    event, log = await run_to_exit(runtime, sh(base_rootfs, script, name="inside"))
    assert event.exit_code == 0
    assert "pid=2" in log.split()
    assert "host=inside" in log.split()
    assert "uid=0" in log.split()
    assert log.split()[3:6] == ["0", str(os.getuid()), "1"]
    assert "CapEff:\t0000000000000000" in log
    assert "CapPrm:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log


async def test_env_is_exactly_the_squishfiles(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    spec = ContainerSpec(
        name="env",
        rootfs=base_rootfs,
        command="env",
        env={"GREETING": "hello world", "EMPTY": ""},
        network=False,
    )
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code == 0
    # bwrap itself sets PWD for the working directory, as a shell would.
    assert set(log.splitlines()) == {
        "GREETING=hello world",
        "EMPTY=",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PWD=/",
    }
    assert os.environ.get("HOME", "") not in log or "HOME" not in log


async def test_host_processes_are_invisible(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    event, log = await run_to_exit(runtime, sh(base_rootfs, "ls /proc"))
    pids = {int(entry) for entry in log.split() if entry.isdigit()}
    assert event.exit_code == 0
    assert 1 in pids and 2 in pids
    assert max(pids) < 10
    assert os.getpid() not in pids or os.getpid() < 10


async def test_command_runs_in_a_new_session(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    container = await runtime.start(sh(base_rootfs, "sleep 30"))
    with anyio.fail_after(5):
        while (pid := runtime.get(container.id).pid) is None:
            await anyio.sleep(0.01)
    assert os.getsid(pid) != os.getsid(0)
    # bwrap's pid 1 leads the new session: no controlling tty of ours.
    assert os.getsid(pid) == runtime.get(container.id).init_pid
    await runtime.stop(container.id, grace=0.1)


async def test_network_none_has_only_loopback(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    _, log = await run_to_exit(runtime, sh(base_rootfs, "cat /proc/net/dev"))
    interfaces = {line.split(":")[0].strip() for line in log.splitlines() if ":" in line}
    assert interfaces == {"lo"}


# -- the network -----------------------------------------------------------------


async def test_http_through_a_tcp_forward(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    port = free_port()
    container = await runtime.start(web_spec(base_rootfs, www, PortForward(port, 8080)))
    assert await anyio.to_thread.run_sync(http_get, port) == b"hello from squish\n"
    # Bound to loopback by default: the forward listens on 127.0.0.1 only.
    listening = Path("/proc/net/tcp").read_text()
    assert f"0100007F:{port:04X}" in listening
    assert f"00000000:{port:04X}" not in listening
    await runtime.stop(container.id)


async def test_container_reaches_out_through_slirp(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    """The container's own view: tap0 configured, and the host reachable via
    the slirp gateway is refused (--disable-host-loopback)."""
    port = free_port()
    server = await runtime.start(web_spec(base_rootfs, www, PortForward(port, 8080)))
    await anyio.to_thread.run_sync(http_get, port)
    script = (
        "ip -4 addr show tap0 | grep -o 'inet [0-9./]*'; "
        # Not wget -T: busybox 1.35's wget crashes with it (SIGSEGV), which
        # would look like a refusal.
        f"timeout 5 wget -q -O - http://10.0.2.2:{port}/; echo wget=$?"
    )
    _, log = await run_to_exit(runtime, sh(base_rootfs, script, network=True))
    assert "inet 10.0.2.100/24" in log
    assert "wget: can't connect to remote host (10.0.2.2)" in log, log
    assert "wget=1" in log
    assert "hello from squish" not in log
    await runtime.stop(server.id)


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""


def udp_exchange(port: int) -> bytes:
    """A datagram to 127.0.0.1:``port`` and its answer, retried while nothing answers yet."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.2)
        for _ in range(100):
            client.sendto(b"ping", ("127.0.0.1", port))
            try:
                return client.recv(2048)
            except TimeoutError:
                continue
    raise AssertionError("no UDP answer")


async def test_udp_forward(runtime: BwrapRuntime, tmp_path: Path) -> None:
    # busybox has no UDP server, so this container runs the host's Python on
    # the host's root filesystem, mounted read-only like any base.
    port = free_port(socket.SOCK_DGRAM)
    spec = ContainerSpec(
        name="udp",
        rootfs=Path("/"),
        command=sys.executable if sys.executable.startswith("/usr/") else "/usr/bin/python3",
        args=("-c", UDP_ECHO),
        ports=(PortForward(port, 9000, "udp"),),
    )
    container = await runtime.start(spec)

    assert await anyio.to_thread.run_sync(udp_exchange, port) == b"echo:ping"
    await runtime.stop(container.id)


async def test_ports_change_without_restart(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    first, second = free_port(), free_port()
    container = await runtime.start(web_spec(base_rootfs, www, PortForward(first, 8080)))
    await anyio.to_thread.run_sync(http_get, first)
    pid = runtime.get(container.id).pid
    assert pid is not None

    updated = await runtime.update_ports(container.id, [PortForward(second, 8080)])
    assert updated.ports == (PortForward(second, 8080),)
    assert await anyio.to_thread.run_sync(http_get, second) == b"hello from squish\n"
    assert refused(first)

    await runtime.update_ports(container.id, [])
    assert refused(second)
    await runtime.update_ports(container.id, [PortForward(first, 8080)])
    await anyio.to_thread.run_sync(http_get, first)
    assert runtime.get(container.id).pid == pid
    await runtime.stop(container.id)


async def test_port_in_use_fails_before_anything_starts(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=str(port)):
            await runtime.start(web_spec(base_rootfs, www, PortForward(port, 8080)))
    assert runtime.list() == []
    assert live_children() == []
    assert container_dirs(runtime.run_dir) == []


async def test_ports_need_a_network(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    with pytest.raises(RuntimeFailure, match="network"):
        await runtime.start(sh(base_rootfs, "true", ports=(PortForward(free_port(), 80),)))


# -- stopping and exits ------------------------------------------------------------


async def test_stop_sends_sigterm_and_waits(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    script = "trap 'echo got-term; exit 0' TERM; echo up; while true; do sleep 0.05; done"
    with runtime.subscribe() as events:
        container = await runtime.start(sh(base_rootfs, script))
        await anyio.sleep(0.2)
        started = time.monotonic()
        stopped = await runtime.stop(container.id, grace=10)
        assert time.monotonic() - started < 5
        assert stopped.exit_code == 0
        event = await events.receive()
    assert event.stopped and event.exit_code == 0
    assert container.log_path is not None
    assert "got-term" in container.log_path.read_text()


async def test_stop_kills_what_ignores_sigterm(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    script = "trap '' TERM; while true; do sleep 0.05; done"
    container = await runtime.start(sh(base_rootfs, script))
    await anyio.sleep(0.2)
    started = time.monotonic()
    stopped = await runtime.stop(container.id, grace=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    assert stopped.exit_code == 128 + signal.SIGKILL


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 137), ("kill -TERM $$", 143)],
)
async def test_exit_codes_are_reported(
    runtime: BwrapRuntime, base_rootfs: Path, script: str, code: int
) -> None:
    event, _ = await run_to_exit(runtime, sh(base_rootfs, script))
    assert event.exit_code == code
    assert not event.stopped


async def test_exit_is_noticed_promptly(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    with runtime.subscribe() as events:
        await runtime.start(sh(base_rootfs, "sleep 0.3"))
        with anyio.fail_after(5):
            event = await events.receive()
    # The event comes from a pidfd, not a poll: well within 100 ms of the exit.
    assert event.exit_code == 0


async def test_missing_command_is_reported(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    spec = ContainerSpec(name="typo", rootfs=base_rootfs, command="/bin/nope", network=False)
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code != 0
    assert "/bin/nope" in event.reason
    assert "No such file" in log


async def test_nothing_is_left_after_stop(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    port = free_port()
    container = await runtime.start(web_spec(base_rootfs, www, PortForward(port, 8080)))
    await anyio.to_thread.run_sync(http_get, port)
    running = runtime.get(container.id)
    assert running.pid is not None and running.init_pid is not None
    ours = live_children()
    assert len(ours) == 2  # bwrap's monitor and slirp4netns
    slirp = next(pid for pid in ours if Path(f"/proc/{pid}/comm").read_text() == "slirp4netns\n")
    # slirp4netns runs sandboxed: a mount namespace of its own, a seccomp
    # filter, and of all capabilities (in the container's user namespace)
    # only CAP_NET_BIND_SERVICE.
    assert os.readlink(f"/proc/{slirp}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    status = Path(f"/proc/{slirp}/status").read_text()
    assert "CapBnd:\t0000000000000400" in status
    assert "Seccomp:\t2" in status
    assert any(runtime.run_dir.iterdir())

    await runtime.stop(container.id)

    for pid in (*ours, running.pid, running.init_pid):
        assert not alive(pid), pid
    assert live_children() == []
    assert container_dirs(runtime.run_dir) == []
    assert runtime.list() == []
    with socket.socket() as probe:  # the host port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


OWNER = """
import anyio, json, sys
from pathlib import Path
from squish.layers import Mount
from squish.runtime import ContainerSpec, PortForward
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime import kernel
import os

async def main():
    rootfs, www, work = (Path(arg) for arg in sys.argv[1:4])
    port = int(sys.argv[4])
    async with BwrapRuntime(run_dir=work / "run", log_dir=work / "logs") as rt:
        c = await rt.start(ContainerSpec(
            name="orphan", rootfs=rootfs, command="httpd",
            args=("-f", "-p", "8080", "-h", "/app/www"),
            mounts=(Mount(www, "/app/www", False),), ports=(PortForward(port, 8080),)))
        while rt.get(c.id).pid is None:
            await anyio.sleep(0.01)
        pids = [rt.get(c.id).pid, c.init_pid, *kernel.LinuxKernel().children(os.getpid())]
        print(json.dumps(pids), flush=True)
        await anyio.sleep(600)

anyio.run(main)
"""


async def test_no_orphan_when_the_owner_is_killed(
    rootless: None, base_rootfs: Path, www: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(base_rootfs), str(www), str(tmp_path), str(port)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert owner.stdout is not None
    line = await anyio.to_thread.run_sync(owner.stdout.readline)
    pids = json.loads(line)
    assert len(pids) == 4  # command, sandbox init, bwrap monitor, slirp4netns
    assert await anyio.to_thread.run_sync(http_get, port) == b"hello from squish\n"

    owner.kill()
    owner.wait()
    owner.stdout.close()

    with anyio.fail_after(5):
        while any(alive(pid) for pid in pids):
            await anyio.sleep(0.02)
    assert refused(port)


async def test_networked_containers_started_together_all_start(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    # slirp4netns and bwrap both bring up the sandbox's loopback; started at
    # once, slirp4netns used to win now and then and bwrap died
    # ("loopback: Failed RTM_NEWADDR"), about one start in ten at this load.
    failures: list[str] = []
    started: list[str] = []

    async def start(index: int) -> None:
        spec = sh(base_rootfs, "sleep 60", name=f"c{index}", network=True)
        spec = ContainerSpec(**{**spec.__dict__, "ports": (PortForward(free_port(), 8080),)})
        try:
            started.append((await runtime.start(spec)).id)
        except RuntimeFailure as exc:
            failures.append(str(exc))

    for _ in range(2):
        async with anyio.create_task_group() as tg:
            for index in range(16):
                tg.start_soon(start, index)
        async with anyio.create_task_group() as tg:
            for container_id in started:
                tg.start_soon(runtime.stop, container_id)
        started.clear()
    assert failures == []


async def test_an_archive_layer_is_unpacked_and_mounted_read_only(
    runtime: BwrapRuntime, tmp_path: Path
) -> None:
    with tarfile.open(tmp_path / "tool.tar.gz", "w:gz") as archive:
        script = b"#!/bin/sh\necho from the archive\n"
        info = tarfile.TarInfo("bin/hello")
        info.size, info.mode = len(script), 0o755
        archive.addfile(info, io.BytesIO(script))
    manifest = b"""
network = "none"
[layers]
tool = { path = "./tool.tar.gz", target = "/sdk/tool" }
[run]
command = "/bin/sh"
args = ["-c", "/sdk/tool/bin/hello; touch /sdk/tool/x || echo read-only"]
"""
    squishfile = parse_squishfile(
        manifest, file="tool.toml", paths=host_paths(tmp_path), name="tool"
    )
    spec = container_spec(squishfile, LayerStore(tmp_path / "state"))
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code == 0
    assert log.split("\n")[:2] == ["from the archive", "touch: /sdk/tool/x: Read-only file system"]
    assert "read-only" in log


def real_minirootfs(version: str) -> bytes:
    """A minirootfs that runs: the host's static busybox, linked as Alpine does."""
    buffer = io.BytesIO()
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, mode in (
            ("etc/alpine-release", f"{version}\n".encode(), 0o644),
            ("bin/busybox", busybox, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
        for applet in ("sh", "cat", "sleep"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
            archive.addfile(link)
    return buffer.getvalue()


async def test_two_alpine_versions_side_by_side(
    runtime: BwrapRuntime, tmp_path: Path, mirror: Mirror
) -> None:
    mirror.publish("3.14", "3.14.10", real_minirootfs("3.14.10"))
    mirror.publish("3.15", "3.15.4", real_minirootfs("3.15.4"))
    store = LayerStore(tmp_path / "state", alpine_mirror=mirror.url)
    seen = {}
    for branch in ("3.14", "3.15"):
        manifest = (
            f'network = "none"\n[layers]\nalpine = "{branch}"\n'
            '[run]\ncommand = "/bin/cat"\nargs = ["/etc/alpine-release"]\n'
        ).encode()
        squishfile = parse_squishfile(
            manifest, file="a.toml", paths=host_paths(tmp_path), name=f"a{branch}"
        )
        spec = await anyio.to_thread.run_sync(container_spec, squishfile, store)
        event, log = await run_to_exit(runtime, spec)
        assert event.exit_code == 0, log
        seen[branch] = log.strip()
    assert seen == {"3.14": "3.14.10", "3.15": "3.15.4"}
