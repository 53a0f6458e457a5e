"""Named networks: start latency, host memory and throughput, each against its anchor.

Run as an ordinary user (squish is rootless):

    .venv/bin/python bench/network.py
    .venv/bin/python bench/network.py -n 100 --containers 20 --mib 256 --json

Four measures, each series beside its anchor in the same run, their samples
interleaved (the order rotated each round) so that machine noise hits them
alike; each prints median and p90 per series and the ratio to its anchor:

1. Start latency (``-n`` starts per series), from the start call:
   ``none`` (the anchor, ``network=False``) until its command has run (it
   writes to a FIFO in a bind-mounted directory, as in start_latency.py);
   ``slirp`` (``network=True``, a slirp4netns of its own) the same;
   ``named`` (on a named network a peer container is already on) the same;
   and ``named, by name``: busybox httpd in the new container, until the
   peer (the host's Python, running already; told the new name through a
   FIFO once the command has run) gets an HTTP answer from ``NAME:8080``,
   the name resolved through its /etc/hosts, trying again at once while
   httpd is not listening yet, and says so through another FIFO. httpd's
   own start (its exec and bind after the command has run) and the
   exchange are in it and not in the anchor. A third container stays on the network throughout,
   so every sample finds its bridge up. The peer is started afresh
   (untimed) before each sample, so that every sample is a first contact.
2. Host memory per container: ``--containers`` busybox ``sleep`` containers
   on one named network, then as many each with a slirp4netns of its own
   (the anchor), each set on a runtime of its own (nothing else of squish
   alive). PSS (``smaps_rollup``) of every process the runtime added (the
   network helper and the shared slirp4netns amortized over the set, each
   container's bwrap monitor and sandbox pid 1, the per-container
   slirp4netns), over the number of containers; the containers' own
   commands apart, in both. ``--rounds`` sets, alternating.
3. Container to container TCP throughput: ``--mib`` MiB over one socket,
   the host's Python as the rootfs of both containers (iperf3 is not
   assumed), from a new container to one on the same named network by name,
   against the same two scripts in two plain network namespaces joined by a
   veth (made here, as this user: a user namespace by ``unshare``, the
   second network namespace by ``unshare``, the veth by ``ip``; both ends at
   the runtime's MTU, 65520), the anchor. The sender times from
   connect to the receiver's count after its EOF; p90 is the rate of the
   slow tenth (the 90th percentile of the times).
4. Container to the host outside: the same transfer to a receiver on this
   host's own non-loopback address (found by a UDP connect, which sends
   nothing), from a container on a named network against one with a
   slirp4netns of its own (the anchor).

All traffic stays on this host (its own address, loopback) or in namespaces
the benchmark or the runtime made.

Targets (the named-networks issue): ``named, by name`` median <= 1.3x
``none``; <= 300 KiB per container on a named network (about 612 KiB with
a slirp4netns each); container to container >= 0.8x the plain veth; to the
host outside no worse (>= 1.0x) than a slirp4netns of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from daemon_under_test import processes, pss_kib
from stats import median_p90, rows_against

from squish.layers import LayerStore, Mount
from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime

READY = "/mnt/ready"
HTTPD_PORT = 8080
SINK_PORT = 5001
HOST_PYTHON = "/usr/bin/python3"
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (the receiver's, inside its container)
START_TIMEOUT = 10.0
TARGETS = {
    "start": 1.3,  # named, by name / none: at most
    "memory_kib": 300,  # per container on a named network: at most
    "c2c": 0.8,  # named / veth: at least
    "outside": 1.0,  # named / slirp: at least
}

# The peer (the host's Python, already running): says it is up, reads a
# name from /mnt/go, connects to it by name (getaddrinfo: /etc/hosts) and
# asks for / until it answers, says so on /mnt/answered. One process for
# every attempt: what is measured is the new container and the network,
# not a client starting (a busybox wget per attempt costs about 1 ms).
PEER_SCRIPT = """
import socket, time
socket.getaddrinfo("peer", 8080)  # the resolver loaded (NSS) before the clock
with open("/mnt/answered", "w") as fifo:
    fifo.write("up\\n")
with open("/mnt/go") as fifo:
    name = fifo.readline().strip()
while True:
    try:
        with socket.create_connection((name, 8080), timeout=1) as conn:
            conn.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            if conn.recv(64).startswith(b"HTTP/1."):
                break
    except OSError:
        time.sleep(0.0001)
with open("/mnt/answered", "w") as fifo:
    fifo.write(name + "\\n")
time.sleep(1000)
"""

# Receiver: counts what each connection sends until EOF, answers the count.
SINK = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
print(server.getsockname()[1], flush=True)
buffer = bytearray(1 << 20)
while True:
    conn, _ = server.accept()
    with conn:
        count = 0
        while received := conn.recv_into(buffer):
            count += received
        conn.sendall(str(count).encode())
"""

# Sender: MiB of zeros to HOST:PORT, timed from connect to the count back.
SOURCE = """
import json, socket, sys, time
host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = memoryview(bytes(1 << 20))
conn = socket.create_connection((host, port))
began = time.perf_counter()
for _ in range(mib):
    conn.sendall(chunk)
conn.shutdown(socket.SHUT_WR)
count = int(conn.recv(64))
seconds = time.perf_counter() - began
assert count == mib << 20, count
print(json.dumps({"bytes": count, "seconds": seconds}), flush=True)
"""

# Two network namespaces joined by a veth, as an ordinary user: run under
# ``unshare --user --map-root-user --net`` (namespace A); makes B, the veth,
# and the receiver in B; then one transfer A -> B per line on stdin.
VETH_PAIR = """
import ctypes, ctypes.util, os, subprocess, sys

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
python, sink, source, mib = sys.argv[1:5]

def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what)

def ip(*args, netns=None):
    enter = ["nsenter", f"--net={netns}"] if netns else []
    subprocess.run([*enter, "ip", *args], check=True)

a = os.open("/proc/self/ns/net", os.O_RDONLY)
check(libc.unshare(CLONE_NEWNET), "unshare")
receiver = subprocess.Popen([python, "-c", sink, "0.0.0.0", "5001"], stdout=subprocess.PIPE)
b = f"/proc/{receiver.pid}/ns/net"  # B, for as long as the receiver runs
check(libc.setns(a, CLONE_NEWNET), "setns")
# The runtime's MTU on both ends (slirp4netns's, 65520): like for like.
ip("link", "add", "va", "mtu", "65520", "type", "veth", "peer", "name", "vb", "mtu", "65520",
   "netns", str(receiver.pid))
for netns, ifname, address in ((None, "va", "10.99.0.1"), (b, "vb", "10.99.0.2")):
    ip("link", "set", "lo", "up", netns=netns)
    ip("addr", "add", f"{address}/24", "dev", ifname, netns=netns)
    ip("link", "set", ifname, "up", netns=netns)
receiver.stdout.readline()
print("ready", flush=True)
try:
    for _ in sys.stdin:
        sent = subprocess.run(
            [python, "-c", source, "10.99.0.2", "5001", mib],
            stdout=subprocess.PIPE, check=True, timeout=120,
        )
        sys.stdout.buffer.write(sent.stdout)
        sys.stdout.flush()
finally:
    receiver.kill()
    receiver.wait()
"""


# -- 1. start latency ----------------------------------------------------------


class Fifo:
    """A FIFO in a bind-mounted directory, open here for reading and writing.

    Both ends, so that it never reads as end of file: once a writer inside
    has closed it, a read end alone would poll readable for good, and every
    later wait on it would return at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    async def wait(self) -> float:
        """When something was written (and drained)."""
        await anyio.wait_readable(self.fd)
        at = time.perf_counter()
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        return at

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


@dataclass
class StartBench:
    runtime: BwrapRuntime
    rootfs: Path
    bench_dir: Path  # /mnt of the started containers: the ready FIFO, the site
    go: Fifo
    answered: Fifo
    count: int = 0

    def spec(self, command: str, **kw: Any) -> ContainerSpec:
        self.count += 1
        return ContainerSpec(
            name=f"web{self.count}",
            rootfs=self.rootfs,
            command="/bin/sh",
            args=("-c", f"echo > {READY}; exec {command}"),
            mounts=(Mount(self.bench_dir, "/mnt", rw=True),),
            **kw,
        )

    async def until_run(self, **kw: Any) -> float:
        fifo = Fifo(self.bench_dir / "ready")
        try:
            started = time.perf_counter()
            container = await self.runtime.start(self.spec("sleep 1000", **kw))
            ready = await fifo.wait()
            await self.runtime.stop(container.id, grace=0)
            return ready - started
        finally:
            fifo.close()

    async def named(self) -> tuple[float, float]:
        """Until the command has run, and until the peer has its answer by name."""
        fifo = Fifo(self.bench_dir / "ready")
        try:
            spec = self.spec(f"httpd -f -p {HTTPD_PORT} -h /mnt/site", networks=("bench",))
            started = time.perf_counter()
            container = await self.runtime.start(spec)
            ready = await fifo.wait()
            os.write(self.go.fd, f"{spec.name}\n".encode())
            answered = await self.answered.wait()
            await self.runtime.stop(container.id, grace=0)
            return ready - started, answered - started
        finally:
            fifo.close()


async def start_latency(
    runtime: BwrapRuntime, rootfs: Path, work: Path, n: int
) -> dict[str, list[float]]:
    bench_dir = work / "start"
    (bench_dir / "site").mkdir(parents=True)
    (bench_dir / "site" / "index.html").write_text("ok\n")
    peer_dir = work / "peer"
    peer_dir.mkdir()
    go = Fifo(peer_dir / "go")
    answered = Fifo(peer_dir / "answered")
    bench = StartBench(runtime, rootfs, bench_dir, go, answered)
    series: dict[str, list[float]] = {"none": [], "slirp": [], "named": [], "named, by name": []}

    async def none() -> None:
        series["none"].append(await bench.until_run(network=False))

    async def slirp() -> None:
        series["slirp"].append(await bench.until_run(network=True))

    peer_spec = ContainerSpec(
        name="peer",
        rootfs=Path("/"),
        command=HOST_PYTHON,
        args=("-c", PEER_SCRIPT),
        mounts=(Mount(peer_dir, "/mnt", rw=True),),
        networks=("bench",),
    )

    async def named() -> None:
        # A fresh peer each time: see the module docstring.
        peer = await runtime.start(peer_spec)
        await answered.wait()  # up, waiting for the name
        ran, by_name = await bench.named()
        series["named"].append(ran)
        series["named, by name"].append(by_name)
        await runtime.stop(peer.id, grace=0)

    kinds = [none, slirp, named]
    try:
        # Keeps the network, its bridge, up between the samples.
        member = await runtime.start(
            ContainerSpec(
                name="member", rootfs=rootfs, command="sleep", args=("3600",), networks=("bench",)
            )
        )
        for _ in range(3):  # warm caches for every series
            with anyio.fail_after(START_TIMEOUT):
                for kind in kinds:
                    await kind()
        for values in series.values():
            values.clear()
        for i in range(n):
            # A start that never comes is a failure to report, not a hang.
            with anyio.fail_after(START_TIMEOUT):
                for kind in kinds[i % 3 :] + kinds[: i % 3]:
                    await kind()
        await runtime.stop(member.id, grace=0)
    finally:
        go.close()
        answered.close()
    return series


# -- 2. memory -----------------------------------------------------------------


def descendants(root: int) -> list[int]:
    procs = processes(os.getuid())
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def memory_round(rootfs: Path, work: Path, count: int, named: bool) -> dict[str, float]:
    """PSS of what one runtime added for ``count`` sleeping containers, KiB."""
    run = work / f"mem-{'named' if named else 'slirp'}"
    async with BwrapRuntime(run_dir=run / "run", log_dir=run / "logs") as runtime:
        for i in range(count):
            spec = ContainerSpec(
                name=f"m{i}",
                rootfs=rootfs,
                command="sleep",
                args=("3600",),
                network=True,
                networks=("mem",) if named else (),
            )
            with anyio.fail_after(START_TIMEOUT):
                await runtime.start(spec)
        with anyio.fail_after(START_TIMEOUT):
            while True:  # every command exec'd: sleep, not bwrap any more
                commands = {c.pid for c in runtime.list() if c.pid and comm(c.pid) == "sleep"}
                if len(commands) == count:
                    break
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # let slirp4netns and the helper settle
        parts = {"bwrap": 0, "slirp4netns": 0, "helper": 0, "commands": 0}
        for pid in descendants(os.getpid()):
            try:
                pss = pss_kib(pid)
            except (OSError, KeyError):
                continue  # gone meanwhile, or a zombie
            name = comm(pid)
            if pid in commands:
                parts["commands"] += pss
            elif name in ("bwrap", "slirp4netns"):
                parts[name] += pss
            else:
                parts["helper"] += pss  # the network helper (python)
        await runtime.stop_all(grace=0)
    per = {key: value / count for key, value in parts.items()}
    per["total"] = per["bwrap"] + per["slirp4netns"] + per["helper"]
    return per


async def memory(
    rootfs: Path, work: Path, count: int, rounds: int
) -> dict[str, list[dict[str, float]]]:
    series: dict[str, list[dict[str, float]]] = {"named": [], "slirp": []}
    for r in range(rounds):
        order = ("named", "slirp") if r % 2 == 0 else ("slirp", "named")
        for kind in order:
            series[kind].append(await memory_round(rootfs, work, count, kind == "named"))
            shutil.rmtree(work / f"mem-{kind}", ignore_errors=True)
    return series


# -- 3. and 4. throughput ------------------------------------------------------


def local_address() -> str:
    """This host's own non-loopback address (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address: str = probe.getsockname()[0]
    if address.startswith("127."):
        sys.exit("this host has no address but loopback")
    return address


def python_spec(name: str, script: str, *args: str, **kw: Any) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=Path("/"),
        command=HOST_PYTHON,
        args=("-c", script, *args),
        **kw,
    )


async def log_line(path: Path | None, timeout: float = START_TIMEOUT) -> str:
    """The first line a container wrote to its log."""
    assert path is not None
    with anyio.fail_after(timeout):
        while True:
            log = anyio.Path(path)
            text = await log.read_text() if await log.exists() else ""
            if "\n" in text:
                return text.split("\n", 1)[0]
            await anyio.sleep(0.01)


async def transfer(runtime: BwrapRuntime, spec: ContainerSpec) -> float:
    """Start a sender, wait for its exit; the seconds it reports."""
    with runtime.subscribe() as events:
        container = await runtime.start(spec)
        with anyio.fail_after(300):
            async for event in events:
                if event.container_id == container.id:
                    break
    assert container.log_path is not None
    log = container.log_path.read_text()
    if event.exit_code != 0:
        raise RuntimeError(f"{spec.name} exited {event.exit_code}:\n{log}")
    return float(json.loads(log.strip().splitlines()[-1])["seconds"])


class VethPair:
    """Two plain network namespaces joined by a veth, a receiver in one."""

    def __init__(self, mib: int) -> None:
        argv = ["unshare", "--user", "--map-root-user", "--net", "--"]
        argv += [sys.executable, "-c", VETH_PAIR, HOST_PYTHON, SINK, SOURCE, str(mib)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            self.close()
            raise RuntimeError("the veth pair did not come up")

    def transfer(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()
        return float(json.loads(self.process.stdout.readline())["seconds"])

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


async def throughput(
    runtime: BwrapRuntime, mib: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per transfer: (container to container, to the host outside)."""
    address = local_address()
    c2c: dict[str, list[float]] = {"veth": [], "named": []}
    outside: dict[str, list[float]] = {"slirp": [], "named": []}
    sink = await runtime.start(
        python_spec("sink", SINK, ANY_ADDRESS, str(SINK_PORT), networks=("tput",))
    )
    await log_line(sink.log_path)
    host_sink = subprocess.Popen(
        [HOST_PYTHON, "-c", SINK, address, "0"], stdout=subprocess.PIPE, text=True
    )
    veth = VethPair(mib)
    try:
        assert host_sink.stdout is not None
        host_port = host_sink.stdout.readline().strip()
        count = 0

        def sender(target: str, port: object, **kw: Any) -> ContainerSpec:
            nonlocal count
            count += 1
            return python_spec(f"source{count}", SOURCE, target, str(port), str(mib), **kw)

        async def c2c_veth() -> None:
            c2c["veth"].append(await anyio.to_thread.run_sync(veth.transfer))

        async def c2c_named() -> None:
            spec = sender("sink", SINK_PORT, networks=("tput",))
            c2c["named"].append(await transfer(runtime, spec))

        async def out_slirp() -> None:
            spec = sender(address, host_port, network=True)
            outside["slirp"].append(await transfer(runtime, spec))

        async def out_named() -> None:
            spec = sender(address, host_port, networks=("tput",))
            outside["named"].append(await transfer(runtime, spec))

        kinds = [c2c_veth, c2c_named, out_slirp, out_named]
        for kind in kinds:  # warm up
            await kind()
        for values in (*c2c.values(), *outside.values()):
            values.clear()
        for i in range(rounds):
            for kind in kinds[i % 4 :] + kinds[: i % 4]:
                await kind()
    finally:
        veth.close()
        host_sink.kill()
        host_sink.wait()
        await runtime.stop(sink.id, grace=0)
    return c2c, outside


# -- report --------------------------------------------------------------------


def rate_rows(series: dict[str, list[float]], anchor: str, mib: int) -> list[dict[str, Any]]:
    """MiB/s at the median and p90 transfer time; anchor's median time over each's."""
    base = statistics.median(series[anchor])
    rows = []
    for name, seconds in series.items():
        median, p90 = median_p90(seconds)
        rows.append(
            {
                "series": name,
                "n": len(seconds),
                "median_mib_s": round(mib / median, 1),
                "p90_mib_s": round(mib / p90, 1),
                f"x_{anchor}": round(base / median, 2),
            }
        )
    return rows


def memory_rows(series: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    base = statistics.median(r["total"] for r in series["slirp"])
    rows = []
    for name, rounds in series.items():
        totals = [r["total"] for r in rounds]
        median, p90 = median_p90(totals)
        rows.append(
            {
                "series": name,
                "n": len(rounds),
                "median_kib": round(median),
                "p90_kib": round(p90),
                "x_slirp": round(median / base, 2),
                **{
                    f"{key}_kib": round(statistics.median(r[key] for r in rounds))
                    for key in ("bwrap", "slirp4netns", "helper", "commands")
                },
            }
        )
    return rows


def named_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(row for row in rows if row["series"] == "named")


def print_table(
    title: str, rows: list[dict[str, Any]], unit: str, target: str, digits: int = 2
) -> None:
    ratio = next(key for key in rows[0] if key.startswith("x_"))
    print(f"\n{title}")
    header = f"{'median ' + unit:>14} {'p90 ' + unit:>12} {ratio.replace('_', ' '):>10}"
    print(f"  {'series':<16} {'n':>4} {header}")
    keys = [key for key in rows[0] if key.startswith(("median", "p90"))]
    for row in rows:
        print(
            f"  {row['series']:<16} {row['n']:>4} "
            f"{row[keys[0]]:>14.{digits}f} {row[keys[1]]:>12.{digits}f} "
            f"{row[ratio]:>10.2f}"
        )
    print(f"  target: {target}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="starts per latency series")
    parser.add_argument("--containers", type=int, default=20, help="containers per memory set")
    parser.add_argument("--rounds", type=int, default=7, help="memory sets and transfers")
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    with tempfile.TemporaryDirectory(prefix="squish-bench-") as tmp:
        work = Path(tmp)
        rootfs = LayerStore(work / "state").builtin_base()
        async with BwrapRuntime(run_dir=work / "run", log_dir=work / "logs") as runtime:
            latency = await start_latency(runtime, rootfs, work, args.n)
            c2c, outside = await throughput(runtime, args.mib, args.rounds)
        mem = await memory(rootfs, work, args.containers, args.rounds)
    start_rows = rows_against(latency, "none", "x_none")
    mem_rows = memory_rows(mem)
    c2c_rows = rate_rows(c2c, "veth", args.mib)
    out_rows = rate_rows(outside, "slirp", args.mib)
    by_name = next(r for r in start_rows if r["series"] == "named, by name")
    named_mem = named_of(mem_rows)
    met = {
        "start": by_name["x_none"] <= TARGETS["start"],
        "memory_kib": named_mem["median_kib"] <= TARGETS["memory_kib"],
        "c2c": named_of(c2c_rows)["x_veth"] >= TARGETS["c2c"],
        "outside": named_of(out_rows)["x_slirp"] >= TARGETS["outside"],
    }
    if args.json:
        report = {
            "start_latency": start_rows,
            "memory_per_container": mem_rows,
            "container_to_container": c2c_rows,
            "to_host_outside": out_rows,
            "targets": TARGETS,
            "met": met,
            "settings": vars(args),
        }
        print(json.dumps(report, indent=2))
        return

    def said(key: str) -> str:
        return "met" if met[key] else "MISSED"

    print_table(
        "start latency, start call to command run (named, by name: to the peer's answer)",
        start_rows,
        "ms",
        f"named, by name <= {TARGETS['start']}x none: {said('start')}",
    )
    print_table(
        f"host PSS per container, {args.containers} containers (commands apart)",
        mem_rows,
        "KiB",
        f"named <= {TARGETS['memory_kib']} KiB: {said('memory_kib')}",
        digits=0,
    )
    for row in mem_rows:
        parts = ", ".join(
            f"{key} {row[key + '_kib']}" for key in ("bwrap", "slirp4netns", "helper", "commands")
        )
        print(f"    {row['series']}: KiB per container: {parts}")
    print_table(
        f"container to container, {args.mib} MiB over TCP",
        c2c_rows,
        "MiB/s",
        f"named >= {TARGETS['c2c']}x veth: {said('c2c')}",
        digits=1,
    )
    print_table(
        f"container to this host's own address, {args.mib} MiB over TCP",
        out_rows,
        "MiB/s",
        f"named >= {TARGETS['outside']}x slirp: {said('outside')}",
        digits=1,
    )


if __name__ == "__main__":
    anyio.run(main)
