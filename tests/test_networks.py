"""Named networks, for real: bwrap sandboxes wired by the network host.

Containers on one network reach each other by name (their ``/etc/hosts``),
over TCP and UDP, on any port; networks are apart from each other; the way
out and the forwards go through the one slirp4netns; nothing outlives the
runtime.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from squish.layers import Mount
from squish.runtime import Container, ContainerSpec, PortForward
from squish.runtime.bwrap_runtime import BwrapRuntime
from tests.conftest import free_port, musl_probe
from tests.test_runtime import (
    alive,
    http_get,
    live_children,
    run_to_exit,
    udp_exchange,
    web_spec,
)

pytestmark = pytest.mark.anyio


def on(rootfs: Path, name: str, script: str, *networks: str, **kw: object) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=rootfs,
        command="/bin/sh",
        args=("-c", script),
        networks=networks,
        **kw,  # type: ignore[arg-type]
    )


def web(rootfs: Path, www: Path, name: str, *networks: str, **kw: object) -> ContainerSpec:
    """test_runtime's busybox httpd serving ``www``, on ``networks``."""
    return replace(web_spec(rootfs, www, name=name), networks=networks, **kw)  # type: ignore[arg-type]


@pytest.fixture
def www(tmp_path: Path) -> Path:
    site = tmp_path / "www"
    site.mkdir()
    (site / "index.html").write_text("served by name\n")
    site.chmod(0o755)
    return site


async def log_of(container: Container, wanted: str, timeout: float = 10.0) -> str:
    assert container.log_path is not None
    with anyio.fail_after(timeout):
        while True:
            text = container.log_path.read_text() if container.log_path.exists() else ""
            if wanted in text:
                return text
            await anyio.sleep(0.02)


async def test_containers_on_a_network_reach_each_other_by_name(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    server = await runtime.start(web(base_rootfs, www, "db", "backend"))
    event, log = await run_to_exit(
        runtime,
        on(base_rootfs, "app", "cat /etc/hosts; timeout 5 wget -q -O - http://db:8080/", "backend"),
    )
    assert event.exit_code == 0, log
    assert "served by name" in log
    assert f"{server.addresses['backend']}\tdb" in log
    await runtime.stop(server.id)


def host_python() -> str:
    return sys.executable if sys.executable.startswith("/usr/") else "/usr/bin/python3"


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""

UDP_ASK = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
for _ in range(50):
    s.sendto(b"ping", ("echo", 9000))
    try:
        print(s.recv(2048).decode(), flush=True)
        break
    except TimeoutError:
        pass
"""


async def test_udp_by_name_with_the_hosts_python(runtime: BwrapRuntime) -> None:
    """The host's root (and its glibc resolver) as the base: names still resolve."""
    python = host_python()
    echo = await runtime.start(
        ContainerSpec(
            name="echo", rootfs=Path("/"), command=python, args=("-c", UDP_ECHO), networks=("u",)
        )
    )
    await log_of(echo, "listening")
    event, log = await run_to_exit(
        runtime,
        ContainerSpec(
            name="ask", rootfs=Path("/"), command=python, args=("-c", UDP_ASK), networks=("u",)
        ),
    )
    assert event.exit_code == 0, log
    assert "echo:ping" in log
    await runtime.stop(echo.id)


async def test_networks_are_apart_and_a_container_on_two_reaches_both(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    red = await runtime.start(web(base_rootfs, www, "red", "x"))
    blue = await runtime.start(web(base_rootfs, www, "blue", "y"))
    red_ip, blue_ip = red.addresses["x"], blue.addresses["y"]
    assert red_ip.rsplit(".", 2)[0] != blue_ip.rsplit(".", 2)[0] or red_ip != blue_ip

    def probe(*targets: str) -> str:
        return "; ".join(
            f"timeout 3 wget -q -O - http://{t}:8080/ >/dev/null 2>&1; echo {t}=$?" for t in targets
        )

    # From x: blue is neither known by name nor reachable by address; and back.
    _, log = await run_to_exit(
        runtime, on(base_rootfs, "from-x", probe("red", "blue", blue_ip), "x")
    )
    assert "red=0" in log and "blue=1" in log and f"{blue_ip}=0" not in log, log
    _, log = await run_to_exit(
        runtime, on(base_rootfs, "from-y", probe("blue", "red", red_ip), "y")
    )
    assert "blue=0" in log and "red=1" in log and f"{red_ip}=0" not in log, log
    # On both: both, by name.
    _, log = await run_to_exit(runtime, on(base_rootfs, "both", probe("red", "blue"), "x", "y"))
    assert "red=0" in log and "blue=0" in log, log
    await runtime.stop(red.id)
    await runtime.stop(blue.id)


async def test_a_later_member_is_known_at_once_and_a_leaver_is_forgotten(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    watcher = await runtime.start(
        on(
            base_rootfs,
            "watcher",
            "until wget -q -O - http://late:8080/ 2>/dev/null; do sleep 0.05; done; "
            "echo reached; while grep -q late /etc/hosts; do sleep 0.05; done; echo forgotten; "
            "sleep 100",
            "n",
        )
    )
    await anyio.sleep(0.3)
    late = await runtime.start(web(base_rootfs, www, "late", "n"))
    began = time.monotonic()
    await log_of(watcher, "reached", timeout=5)
    assert time.monotonic() - began < 1.0
    await runtime.stop(late.id)
    await log_of(watcher, "forgotten", timeout=5)
    # Replaced: the name comes back, on whatever address.
    again = await runtime.start(web(base_rootfs, www, "late", "n"))
    _, log = await run_to_exit(
        runtime, on(base_rootfs, "check", "timeout 3 wget -q -O - http://late:8080/", "n")
    )
    assert "served by name" in log
    for container in (again, watcher):
        await runtime.stop(container.id, grace=0)


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (TCP), by /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        if local == f"0100007F:{port:04X}" and state == "0A":
            return True
    return False


async def test_forward_and_the_way_out_through_the_shared_slirp4netns(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    port = free_port()
    server = await runtime.start(
        web(base_rootfs, www, "pub", "front", ports=(PortForward(port, 8080),))
    )
    assert await anyio.to_thread.run_sync(http_get, port) == b"served by name\n"
    assert listening(port)
    # Changed in place: the old forward goes, the new one comes.
    other = free_port()
    await runtime.update_ports(server.id, [PortForward(other, 8080)])
    assert await anyio.to_thread.run_sync(http_get, other) == b"served by name\n"
    assert not listening(port)
    # The host's loopback stays out of reach through the gateway.
    _, log = await run_to_exit(
        runtime,
        on(
            base_rootfs,
            "out",
            f"ip route; timeout 5 wget -q -O - http://10.0.2.2:{other}/; echo wget=$?",
            "front",
        ),
    )
    assert "default via 10.89." in log, log
    assert "wget: can't connect to remote host (10.0.2.2)" in log and "wget=1" in log, log
    await runtime.stop(server.id)
    # Its forward went with it, from the slirp4netns that stays.
    assert not listening(other)


def local_address() -> str:
    """This host's own non-loopback address (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "the host has no address but loopback"
    return address


async def test_a_container_on_a_network_reaches_the_host_outside_loopback(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    """The way out: a server on this host's own address, not its loopback."""
    address = local_address()
    with socket.socket() as server:
        server.bind((address, 0))
        server.listen()
        port = server.getsockname()[1]
        done = anyio.Event()

        def accept() -> bytes:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nfrom outside\n")
                return conn.recv(1024)

        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                await anyio.to_thread.run_sync(accept)
                done.set()

            tg.start_soon(serve)
            _, log = await run_to_exit(
                runtime,
                on(base_rootfs, "out", f"timeout 5 wget -q -O - http://{address}:{port}/", "o"),
            )
            with anyio.fail_after(5):
                await done.wait()
    assert "from outside" in log


def processes_of_mine() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == os.getuid():
                    found[int(entry.name)] = (
                        (entry / "cmdline").read_bytes().decode(errors="replace")
                    )
            except OSError:
                continue
    return found


async def test_nothing_of_the_networks_outlives_the_runtime(
    tmp_path: Path, rootless: None, base_rootfs: Path, www: Path
) -> None:
    before = set(processes_of_mine())
    async with BwrapRuntime(run_dir=tmp_path / "run", log_dir=tmp_path / "logs") as rt:
        await rt.start(web(base_rootfs, www, "a", "n1"))
        await rt.start(web(base_rootfs, www, "b", "n1", "n2"))
        assert [n.name for n in rt.networks()] == ["n1", "n2"]
        assert set(rt.networks()[0].members) == {"a", "b"}
        during = {pid: cmd for pid, cmd in processes_of_mine().items() if pid not in before}
        assert any("netns_helper" in cmd for cmd in during.values())
        assert any(cmd.split("\0")[0].endswith("slirp4netns") for cmd in during.values())
    with anyio.fail_after(5):
        while left := {
            pid: cmd
            for pid, cmd in processes_of_mine().items()
            if pid not in before
            and ("netns_helper" in cmd or "slirp4netns" in cmd or "bwrap" in cmd)
        }:
            await anyio.sleep(0.05)
    assert not left
    assert not live_children()


KILLED_OWNER = """
import anyio, sys
from pathlib import Path
from squish.layers import Mount
from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime

async def main() -> None:
    tmp, rootfs, www = (Path(arg) for arg in sys.argv[1:4])
    async with BwrapRuntime(run_dir=tmp / "run", log_dir=tmp / "logs") as rt:
        for name in ("a", "b"):
            await rt.start(ContainerSpec(name=name, rootfs=rootfs, command="httpd",
                args=("-f", "-p", "8080", "-h", "/app/www"),
                mounts=(Mount(www, "/app/www", rw=False),), networks=("n",)))
        print("up", flush=True)
        await anyio.sleep(100)

anyio.run(main)
"""


async def test_nothing_is_left_when_the_owner_is_killed(
    tmp_path: Path, rootless: None, base_rootfs: Path, www: Path
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", KILLED_OWNER, str(tmp_path), str(base_rootfs), str(www)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert owner.stdout is not None
    assert owner.stdout.readline() == b"up\n"
    descendants = [
        pid
        for pid, cmd in processes_of_mine().items()
        if "netns_helper" in cmd or cmd.split("\0")[0].endswith("slirp4netns") or "httpd" in cmd
    ]
    assert len(descendants) >= 4  # the helper, slirp4netns, two httpd
    owner.kill()
    owner.wait()
    owner.stdout.close()
    with anyio.move_on_after(5):
        while [pid for pid in descendants if alive(pid)]:
            await anyio.sleep(0.05)
    left = {pid: cmd for pid, cmd in processes_of_mine().items() if pid in descendants}
    assert not {pid: cmd for pid, cmd in left.items() if alive(pid)}


async def test_a_container_on_a_network_has_no_power_over_it(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    """Made in the network host's user namespace, but with no capabilities there."""
    script = (
        "grep CapEff /proc/self/status; cat /proc/self/uid_map; "
        "ip link show eth0 | grep -o 'mtu [0-9]*'; "
        "ip addr add 10.89.0.250/24 dev eth0; echo add=$?; "
        "ip link set eth0 down; echo down=$?"
    )
    _, log = await run_to_exit(runtime, on(base_rootfs, "weak", script, "n"))
    assert "CapEff:\t0000000000000000" in log
    assert "mtu 65520" in log  # slirp4netns's, end to end
    assert log.split()[2:5] == ["0", str(os.getuid()), "1"], log
    assert "add=2" in log or "add=1" in log, log
    assert "down=2" in log or "down=1" in log, log
    assert "Operation not permitted" in log


async def test_the_fake_runtime_keeps_networks_as_the_real_one(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    """The reconciler's tests see what the daemon would: the same book, checked here."""
    from squish.runtime.fake import FakeRuntime

    async with FakeRuntime() as fake:
        started: dict[str, tuple[str, str]] = {}
        for name, networks in (("a", ("n1",)), ("b", ("n1", "n2")), ("c", ("n2",))):
            real = await runtime.start(web(base_rootfs, www, name, *networks))
            faked = await fake.start(web(base_rootfs, www, name, *networks))
            assert real.addresses == faked.addresses
            started[name] = (real.id, faked.id)
        assert runtime.networks() == fake.networks()
        await runtime.stop(started["b"][0], grace=0)
        await fake.stop(started["b"][1], grace=0)
        assert runtime.networks() == fake.networks()
        assert [(n.name, set(n.members)) for n in fake.networks()] == [
            ("n1", {"a"}),
            ("n2", {"c"}),
        ]
        for real_id, _ in (started["a"], started["c"]):
            await runtime.stop(real_id, grace=0)
    assert runtime.networks() == ()


async def test_a_replaced_container_is_reached_at_once_by_a_peer_that_knew_the_old_one(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path
) -> None:
    """Same address, same MAC: the peer's neighbour cache stays right."""
    old = await runtime.start(web(base_rootfs, www, "late", "n"))
    knower = await runtime.start(
        on(
            base_rootfs,
            "knower",
            "while :; do if wget -q -O /dev/null http://late:8080/ 2>/dev/null; "
            "then echo up; else echo down; fi; sleep 0.05; done",
            "n",
        )
    )
    await log_of(knower, "up")
    await runtime.stop(old.id, grace=0)
    await log_of(knower, "down")
    new = await runtime.start(web(base_rootfs, www, "late", "n"))
    assert new.addresses == old.addresses
    began = time.monotonic()
    assert knower.log_path is not None
    with anyio.fail_after(5):
        while not knower.log_path.read_text().rstrip().endswith("up"):
            await anyio.sleep(0.02)
    assert time.monotonic() - began < 1.0
    for container in (new, knower):
        await runtime.stop(container.id, grace=0)


@pytest.fixture(scope="session")
def musl_fetch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/probes/fetch.c built static against musl, Alpine's C library."""
    return musl_probe(tmp_path_factory, "fetch")


async def test_a_musl_program_resolves_a_peer_by_name(
    runtime: BwrapRuntime, base_rootfs: Path, www: Path, musl_fetch: Path
) -> None:
    """musl's resolver (what an Alpine base has) reads the same hosts file."""
    server = await runtime.start(web(base_rootfs, www, "db", "backend"))

    def fetch(name: str, network: str) -> ContainerSpec:
        return ContainerSpec(
            name=name,
            rootfs=base_rootfs,
            command="/sdk/fetch",
            args=("db", "8080"),
            mounts=(Mount(musl_fetch, "/sdk/fetch", rw=False),),
            networks=(network,),
        )

    event, log = await run_to_exit(runtime, fetch("alpine-like", "backend"))
    assert event.exit_code == 0, log
    assert "200 OK" in log and "served by name" in log
    _, log = await run_to_exit(runtime, fetch("stranger", "elsewhere"))
    assert "fetch: db:" in log  # not known on another network
    await runtime.stop(server.id)


async def test_a_udp_forward_of_a_container_on_a_network(runtime: BwrapRuntime) -> None:
    port = free_port(socket.SOCK_DGRAM)
    echo = await runtime.start(
        ContainerSpec(
            name="echo",
            rootfs=Path("/"),
            command=host_python(),
            args=("-c", UDP_ECHO),
            networks=("u",),
            ports=(PortForward(port, 9000, "udp"),),
        )
    )
    await log_of(echo, "listening")

    assert await anyio.to_thread.run_sync(udp_exchange, port) == b"echo:ping"
    await runtime.stop(echo.id)
