"""Container start latency: squish's runtime side by side with raw bwrap.

Run as an ordinary user (squish is rootless):

    .venv/bin/python bench/start_latency.py -n 100

Five series, interleaved so that machine noise hits them alike:

- ``bwrap``: raw bwrap with the same isolation squish uses (all namespaces,
  fresh /proc, /dev and /tmp, the built-in base read-only), spawned from
  Python with ``subprocess.Popen``: the anchor.
- ``bwrap + filter``: the same with squish's default seccomp filter
  (``--seccomp``), the anchor of squish's default start.
- ``squish``: ``BwrapRuntime.start`` of a ``network = "none"`` container
  (with the default seccomp filter, as every container has by default).
- ``squish unconfined``: the same with ``seccomp = "unconfined"``: what the
  filter costs a start is the ratio of the two.
- ``squish+net``: ``BwrapRuntime.start`` with slirp4netns and one TCP
  forward, until busybox httpd answers an HTTP request through the forward.

"Running" is the moment the command inside has executed: it writes to a
FIFO in a bind-mounted directory that the benchmark waits on, the same for
bwrap and squish. Prints median and p90 per series and the ratio to bwrap.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from stats import median_p90

from squish.layers import LayerStore, Mount
from squish.runtime import DEFAULT_PATH, ContainerSpec, PortForward
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime.seccomp import default_filter

READY = "/mnt/ready"


def raw_bwrap_argv(rootfs: Path, bench_dir: Path) -> list[str]:
    return [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "raw",
        "--ro-bind",
        str(rootfs),
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        str(bench_dir),
        "/mnt",
        "--clearenv",
        "--setenv",
        "PATH",
        DEFAULT_PATH,
        "--",
        "/bin/sh",
        "-c",
        f"echo > {READY}; exec sleep 1000",
    ]


class Fifo:
    """A FIFO in the bind-mounted directory; the command's write is the signal."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "ready"
        self.path.unlink(missing_ok=True)
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    async def wait(self) -> float:
        await anyio.wait_readable(self.fd)
        return time.perf_counter()

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


async def time_raw(rootfs: Path, bench_dir: Path, *, seccomp: bool = False) -> float:
    fifo = Fifo(bench_dir)
    argv = raw_bwrap_argv(rootfs, bench_dir)
    passed: tuple[int, ...] = ()
    try:
        started = time.perf_counter()
        if seccomp:
            # The same filter squish gives, in a memfd bwrap reads and closes.
            program = os.memfd_create("seccomp")
            os.write(program, default_filter())
            os.lseek(program, 0, os.SEEK_SET)
            passed = (program,)
            argv[1:1] = ["--seccomp", str(program)]
        process = subprocess.Popen(argv, pass_fds=passed)
        for fd in passed:
            os.close(fd)
        ready = await fifo.wait()
        process.kill()
        process.wait()
        return ready - started
    finally:
        fifo.close()


async def time_squish(
    runtime: BwrapRuntime, rootfs: Path, bench_dir: Path, *, seccomp: bool = True
) -> float:
    fifo = Fifo(bench_dir)
    spec = ContainerSpec(
        name="bench",
        rootfs=rootfs,
        command="/bin/sh",
        args=("-c", f"echo > {READY}; exec sleep 1000"),
        mounts=(Mount(bench_dir, "/mnt", rw=True),),
        network=False,
        seccomp=seccomp,
    )
    try:
        started = time.perf_counter()
        container = await runtime.start(spec)
        ready = await fifo.wait()
        await runtime.stop(container.id, grace=0)
        return ready - started
    finally:
        fifo.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return conn.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


async def time_networked(runtime: BwrapRuntime, rootfs: Path, site: Path) -> float:
    port = free_port()
    spec = ContainerSpec(
        name="bench-net",
        rootfs=rootfs,
        command="httpd",
        args=("-f", "-p", "8080", "-h", "/mnt"),
        mounts=(Mount(site, "/mnt", rw=False),),
        ports=(PortForward(port, 8080),),
    )
    started = time.perf_counter()
    container = await runtime.start(spec)
    while not http_answers(port):
        await anyio.sleep(0.0001)
    answered = time.perf_counter()
    await runtime.stop(container.id, grace=0)
    return answered - started


def summary(samples: list[float]) -> tuple[float, float]:
    """Median and p90, in milliseconds."""
    median, p90 = median_p90(samples)
    return median * 1e3, p90 * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50, help="starts per series")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    with tempfile.TemporaryDirectory(prefix="squish-bench-") as tmp:
        work = Path(tmp)
        rootfs = LayerStore(work / "state").builtin_base()
        bench_dir = work / "bench"
        bench_dir.mkdir()
        site = work / "site"
        site.mkdir()
        (site / "index.html").write_text("ok\n")
        series: dict[str, list[float]] = {
            "bwrap": [],
            "bwrap + filter": [],
            "squish": [],
            "squish unconfined": [],
            "squish+net": [],
        }
        async with BwrapRuntime(run_dir=work / "run", log_dir=work / "logs") as runtime:
            for _ in range(3):  # warm caches for every series
                await time_raw(rootfs, bench_dir)
                await time_raw(rootfs, bench_dir, seccomp=True)
                await time_squish(runtime, rootfs, bench_dir)
                await time_squish(runtime, rootfs, bench_dir, seccomp=False)
                await time_networked(runtime, rootfs, site)
            for _ in range(args.n):
                # A start that never comes is a failure to report, not a hang.
                with anyio.fail_after(10):
                    series["bwrap"].append(await time_raw(rootfs, bench_dir))
                    series["bwrap + filter"].append(await time_raw(rootfs, bench_dir, seccomp=True))
                    series["squish"].append(await time_squish(runtime, rootfs, bench_dir))
                    series["squish unconfined"].append(
                        await time_squish(runtime, rootfs, bench_dir, seccomp=False)
                    )
                    series["squish+net"].append(await time_networked(runtime, rootfs, site))
    anchor, _ = summary(series["bwrap"])
    rows = []
    for name, samples in series.items():
        median, p90 = summary(samples)
        rows.append(
            {
                "series": name,
                "n": len(samples),
                "median_ms": round(median, 2),
                "p90_ms": round(p90, 2),
                "ratio_to_bwrap": round(median / anchor, 2),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'series':<18} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'x bwrap':>8}")
    for row in rows:
        print(
            f"{row['series']:<18} {row['n']:>4} {row['median_ms']:>10.2f} "
            f"{row['p90_ms']:>8.2f} {row['ratio_to_bwrap']:>8.2f}"
        )
    confined, _ = summary(series["squish"])
    unconfined, _ = summary(series["squish unconfined"])
    filtered, _ = summary(series["bwrap + filter"])
    print(f"the default seccomp filter: {confined / unconfined:.2f}x a start without it")
    print(f"squish with it: {confined / filtered:.2f}x bwrap with the same filter")


if __name__ == "__main__":
    anyio.run(main)
