"""Health checks: what one check costs, and what checking many containers costs the daemon.

Run as an ordinary user (squish is rootless), with squish importable by this
interpreter:

    .venv/bin/python bench/health.py
    .venv/bin/python bench/health.py -m 200 --windows 6 --window 5 -n 200

1. One check, from the runtime's side. A ``BwrapRuntime`` of its own runs
   one ``network = "none"`` container (busybox ``sleep``) and ``exec``s
   ``/bin/true`` in it ``-n`` times: the time from the call until the exit
   status is back (spawn into the namespaces, run, exit, reaped), median
   and p90, and the CPU each costs (this process's, and the exec server's
   with its runners, which it reaps: ``/proc`` utime + stime + cutime +
   cstime, over the run, per exec). Interleaved with the anchor: ``true``
   run on the host by ``subprocess.run`` from this process (a process
   started and waited for, no namespaces), and the ratio to it.
2. At scale. Two daemons in turn, each fresh (``squish daemon`` on
   temporary directories): ``-m`` containers (``network = "none"``, busybox
   ``sleep``), first without checks, then each with ``[health] command =
   ["true"]`` and ``interval = "1s"``. Once all run (and, with checks, all
   are healthy), ``--windows`` windows of ``--window`` seconds: the
   daemon's CPU (utime + stime of its process) and its exec server's (with
   its runners: + cutime + cstime), each in % of one core per window;
   median and p90 of each, the two runs side by side, and what the checks
   add (the daemon and the server together, with checks less without).
   The daemon's own check durations (``squish_health_check_duration_seconds``,
   sum over count between the scrapes around the windows) are printed too.
   The anchor, in windows of the same length right after: ``true`` spawned
   on the host (``posix_spawn`` and ``waitpid`` from this process, no
   namespaces) as many times a second as the checks ran: what merely
   starting a process per check costs here (this process's CPU with its
   children's), and the ratio of what the checks add to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from daemon_under_test import DaemonUnderTest, cpu_seconds, processes
from stats import median_p90

from squish.layers import LayerStore
from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime

EXEC_SERVER = "exec_helper.py"


def exec_server(parent: int) -> int | None:
    for proc in processes(os.getuid()).values():
        if proc.ppid == parent and any(EXEC_SERVER in arg for arg in proc.argv):
            return proc.pid
    return None


# -- 1. one check ------------------------------------------------------------------


async def one_check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rootfs = LayerStore(work / "state").builtin_base()
    squish: list[float] = []
    anchor: list[float] = []
    async with BwrapRuntime(run_dir=work / "run", log_dir=work / "logs") as runtime:
        spec = ContainerSpec(
            name="checked", rootfs=rootfs, command="sleep", args=("3600",), network=False
        )
        container = await runtime.start(spec)
        for _ in range(5):  # the server started, the caches warm
            await runtime.exec(container.id, ["/bin/true"])
        server = exec_server(os.getpid())
        assert server is not None, "no exec server found"
        own_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(server, children=True)
        for _ in range(args.n):
            began = time.perf_counter()
            result = await runtime.exec(container.id, ["/bin/true"])
            squish.append(time.perf_counter() - began)
            assert result.exit_code == 0, result.output
        own_after, server_after = cpu_seconds(os.getpid()), cpu_seconds(server, children=True)
        for _ in range(args.n):
            began = time.perf_counter()
            subprocess.run(["true"], check=True)  # noqa: ASYNC221 (the anchor: a plain spawn)
            anchor.append(time.perf_counter() - began)
        await runtime.stop(container.id, grace=0)
    (sm, sp), (am, ap) = median_p90(squish), median_p90(anchor)
    return {
        "n": args.n,
        "exec_ms": (round(sm * 1e3, 2), round(sp * 1e3, 2)),
        "anchor_ms": (round(am * 1e3, 2), round(ap * 1e3, 2)),
        "ratio": round(sm / am, 2),
        "cpu_ms_per_exec": {
            "runtime": round((own_after - own_before) / args.n * 1e3, 2),
            "exec_server": round((server_after - server_before) / args.n * 1e3, 2),
        },
    }


def spawn_anchor(rate: float, windows: int, window: float) -> list[float]:
    """% of one core, per window, of spawning ``true`` ``rate`` times a second."""
    true = "/bin/true"
    found: list[float] = []
    for _ in range(windows):
        began = time.monotonic()
        before = _self_and_children()
        spawned = 0
        while (elapsed := time.monotonic() - began) < window:
            due = spawned / rate
            if due <= elapsed:
                os.waitpid(os.posix_spawn(true, [true], {}), 0)
                spawned += 1
            else:
                time.sleep(due - elapsed)
        found.append((_self_and_children() - before) / (time.monotonic() - began) * 100)
    return found


def _self_and_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- 2. at scale -------------------------------------------------------------------


def squishfile(checked: bool) -> str:
    text = (
        'network = "none"\n[layers]\nbase = "busybox"\n[run]\ncommand = "sleep"\nargs = ["3600"]\n'
    )
    if checked:
        text += '[health]\ncommand = ["true"]\ninterval = "1s"\n'
    return text


def wait_ready(daemon: DaemonUnderTest, count: int, checked: bool, timeout: float) -> float:
    began = time.monotonic()
    with daemon.client(timeout=30.0) as client:
        while time.monotonic() - began < timeout:
            rows = [row for row in client.containers() if row["name"].startswith("c")]
            ready = [
                row
                for row in rows
                if row["phase"] == "running" and (not checked or row.get("health") == "healthy")
            ]
            if len(ready) == count:
                return time.monotonic() - began
            time.sleep(0.5)
    raise RuntimeError(f"not all {count} ready within {timeout:g} s")


def histogram(samples: dict[str, float], name: str) -> tuple[float, float]:
    return samples.get(f"{name}_sum", 0.0), samples.get(f"{name}_count", 0.0)


def at_scale(args: argparse.Namespace, work: Path, checked: bool) -> dict[str, Any]:
    with DaemonUnderTest(work) as daemon:
        staging = work / "staging"
        staging.mkdir()
        for index in range(args.m):
            path = staging / f"c{index:04d}.toml"
            path.write_text(squishfile(checked))
            path.rename(daemon.manifests / path.name)
        ready = wait_ready(daemon, args.m, checked, args.timeout)
        time.sleep(2.0)  # settled: every check has its rhythm
        server = exec_server(daemon.pid)
        if checked and server is None:
            raise RuntimeError("checks run, yet the daemon has no exec server")
        before = daemon.metrics()
        daemon_pct: list[float] = []
        server_pct: list[float] = []
        for _ in range(args.windows):
            d0 = cpu_seconds(daemon.pid)
            s0 = cpu_seconds(server, children=True) if server else 0.0
            began = time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - began
            daemon_pct.append((cpu_seconds(daemon.pid) - d0) / elapsed * 100)
            s1 = cpu_seconds(server, children=True) if server else 0.0
            server_pct.append((s1 - s0) / elapsed * 100)
        after = daemon.metrics()
        total, count = (
            a - b
            for a, b in zip(
                histogram(after, "squish_health_check_duration_seconds"),
                histogram(before, "squish_health_check_duration_seconds"),
                strict=True,
            )
        )
        code = daemon.stop()
    return {
        "checked": checked,
        "m": args.m,
        "ready_s": round(ready, 1),
        "daemon_pct": [round(x, 1) for x in median_p90(daemon_pct)],
        "server_pct": [round(x, 1) for x in median_p90(server_pct)],
        "total_pct": [
            round(x, 1)
            for x in median_p90([a + b for a, b in zip(daemon_pct, server_pct, strict=True)])
        ],
        "checks_per_s": round(count / (args.windows * args.window), 1) if count else 0.0,
        "check_mean_ms": round(total / count * 1e3, 2) if count else None,
        "exit_code": code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="execs in part 1")
    parser.add_argument("-m", type=int, default=200, help="containers in part 2")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="squish-health-") as tmp:
        work = Path(tmp)
        one = anyio.run(one_check, args, work / "one")
        plain = at_scale(args, work / "plain", checked=False)
        checked = at_scale(args, work / "checked", checked=True)
    anchor = spawn_anchor(checked["checks_per_s"], args.windows, args.window)
    found: dict[str, Any] = {"one_check": one, "without_checks": plain, "with_checks": checked}
    found["checks_add_pct"] = round(checked["total_pct"][0] - plain["total_pct"][0], 1)
    found["anchor_pct"] = [round(x, 1) for x in median_p90(anchor)]
    found["ratio_to_anchor"] = round(found["checks_add_pct"] / found["anchor_pct"][0], 2)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"1. one check ({one['n']} execs of /bin/true)")
    print("| series | median | p90 | ratio |")
    print("|---|---|---|---|")
    print(f"| squish exec | {one['exec_ms'][0]} ms | {one['exec_ms'][1]} ms | {one['ratio']} |")
    anchor = one["anchor_ms"]
    print(f"| anchor: true spawned on the host | {anchor[0]} ms | {anchor[1]} ms | 1.0 |")
    cpu = one["cpu_ms_per_exec"]
    print(f"CPU per exec: runtime {cpu['runtime']} ms, exec server and runners ", end="")
    print(f"{cpu['exec_server']} ms")
    print()
    print(f"2. {args.m} containers, {args.windows} windows of {args.window:g} s (% of one core)")
    print(
        "| run | daemon median | p90 | exec server median | p90 | both median | p90 "
        "| checks/s | check mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in (plain, checked):
        name = "with checks every 1 s" if run["checked"] else "without checks"
        mean = f"{run['check_mean_ms']} ms" if run["check_mean_ms"] is not None else "-"
        print(
            f"| {name} | {run['daemon_pct'][0]} | {run['daemon_pct'][1]} | {run['server_pct'][0]} "
            f"| {run['server_pct'][1]} | {run['total_pct'][0]} | {run['total_pct'][1]} "
            f"| {run['checks_per_s']} | {mean} |"
        )
    spawns = found["anchor_pct"]
    print(
        f"| anchor: true spawned on the host {checked['checks_per_s']:g} times/s "
        f"| | | | | {spawns[0]} | {spawns[1]} | | |"
    )
    print(
        f"checks add {found['checks_add_pct']} % of one core (median, daemon and exec server): "
        f"{found['ratio_to_anchor']}x the anchor"
    )
    return 0 if plain["exit_code"] == 0 and checked["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
