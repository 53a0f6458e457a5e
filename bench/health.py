"""Health checks: what one check costs, and what checking many containers costs the daemon.

Run as an ordinary user (squish is rootless), with squish importable by this
interpreter:

    .venv/bin/python bench/health.py
    .venv/bin/python bench/health.py -m 200 --windows 6 --window 5 -n 200 --kinds tcp,http

Three kinds of check: ``command`` (``[health] command = ["true"]``, run
inside the container through the exec server), and the daemon's own
``tcp`` (a connection to port 8080) and ``http`` (a GET of ``/`` there),
made through sockets the exec server makes in the container's network
namespace, a batch at a time. Every container is busybox ``httpd`` on
port 8080, ``network = "none"``, with or without checks.

1. One check, from the runtime's side. A ``BwrapRuntime`` of its own runs
   one container and checks it ``-n`` times with each kind: the time from
   the call until the result is back, median and p90, and the CPU each
   costs (this process's, and the exec server's with its runners, which
   it reaps: ``/proc`` utime + stime + cutime + cstime, over the run, per
   check). Then, in the same run, the anchor: ``true`` run on the host by
   ``subprocess.run`` from this process (a process started and waited for,
   no namespaces), and the ratio to it.
2. At scale. A fresh daemon (``squish daemon`` on temporary directories)
   per run: ``-m`` containers, first without checks, then, each run, with
   one kind at ``interval = "1s"``. Once all run (and, with checks, all
   are healthy), ``--windows`` windows of ``--window`` seconds: the
   daemon's CPU (utime + stime of its process) and its exec server's (with
   its runners: + cutime + cstime), each in % of one core per window;
   median and p90 of each, and of the two together their mean over all the
   windows (the exec server's share for http and tcp checks comes in
   bursts: a batch of sockets per container every 30 s); the runs side by
   side, and what the checks add (that mean, with checks less without). The
   daemon's own check durations (``squish_health_check_duration_seconds``,
   sum over count between the scrapes around the windows) are printed too.
   The anchor, in windows of the same length right after: ``true`` spawned
   on the host (``posix_spawn`` and ``waitpid`` from this process, no
   namespaces) as many times a second as the command checks ran: what
   merely starting a process per check costs here (this process's CPU with
   its children's), and the ratio of what each kind adds to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from daemon_under_test import DaemonUnderTest, cpu_seconds, processes
from stats import median_p90

from squish.layers import LayerStore, Mount
from squish.runtime import ContainerSpec, ExecResult, Probe
from squish.runtime.bwrap_runtime import BwrapRuntime

EXEC_SERVER = "exec_helper.py"
KINDS = ("command", "tcp", "http")
HEALTH = {
    "command": 'command = ["true"]',
    "tcp": "tcp = 8080",
    "http": 'http = { port = 8080, path = "/" }',
}


def exec_server(parent: int) -> int | None:
    for proc in processes(os.getuid()).values():
        if proc.ppid == parent and any(EXEC_SERVER in arg for arg in proc.argv):
            return proc.pid
    return None


# -- 1. one check ------------------------------------------------------------------


def site(work: Path) -> Path:
    """What the containers' httpd serves: an index of a few bytes."""
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text("ok\n")
    return www


async def one_check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rootfs = LayerStore(work / "state").builtin_base()
    timings: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    cpu: dict[str, dict[str, float]] = {}
    anchor: list[float] = []
    async with BwrapRuntime(run_dir=work / "run", log_dir=work / "logs") as runtime:
        spec = ContainerSpec(
            name="checked",
            rootfs=rootfs,
            command="httpd",
            args=("-f", "-p", "8080", "-h", "/www"),
            mounts=(Mount(site(work), "/www", rw=False),),
            network=False,
        )
        container = await runtime.start(spec)

        async def check(kind: str) -> ExecResult:
            if kind == "command":
                return await runtime.exec(container.id, ["/bin/true"])
            probe = Probe(8080) if kind == "tcp" else Probe(8080, "/")
            return await runtime.probe(container.id, probe, timeout=5)

        for kind in args.kinds:
            for _ in range(100):  # the server started, httpd up, the caches warm
                if (await check(kind)).exit_code == 0:
                    break
                await anyio.sleep(0.05)
            for _ in range(20):
                await check(kind)
        server = exec_server(os.getpid())
        assert server is not None, "no exec server found"
        for kind in args.kinds:
            own_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(server, children=True)
            for _ in range(args.n):
                began = time.perf_counter()
                result = await check(kind)
                timings[kind].append(time.perf_counter() - began)
                assert result.exit_code == 0, result.output
            own_after, server_after = cpu_seconds(os.getpid()), cpu_seconds(server, children=True)
            cpu[kind] = {
                "runtime": round((own_after - own_before) / args.n * 1e3, 3),
                "exec_server": round((server_after - server_before) / args.n * 1e3, 3),
            }
        for _ in range(args.n):
            began = time.perf_counter()
            subprocess.run(["true"], check=True)  # noqa: ASYNC221 (the anchor: a plain spawn)
            anchor.append(time.perf_counter() - began)
        await runtime.stop(container.id, grace=0)
    am, ap = median_p90(anchor)
    found: dict[str, Any] = {
        "n": args.n,
        "anchor_ms": (round(am * 1e3, 3), round(ap * 1e3, 3)),
    }
    for kind in args.kinds:
        median, p90 = median_p90(timings[kind])
        found[kind] = {
            "ms": (round(median * 1e3, 3), round(p90 * 1e3, 3)),
            "ratio": round(median / am, 2),
            "cpu_ms": cpu[kind],
        }
    return found


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


def squishfile(kind: str | None, www: Path) -> str:
    text = (
        f'network = "none"\n[layers]\nbase = "busybox"\nwww = {{ path = "{www}", '
        'target = "/www" }\n[run]\ncommand = "httpd"\nargs = ["-f", "-p", "8080", "-h", "/www"]\n'
    )
    if kind is not None:
        text += f'[health]\n{HEALTH[kind]}\ninterval = "1s"\n'
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


def at_scale(args: argparse.Namespace, work: Path, kind: str | None) -> dict[str, Any]:
    checked = kind is not None
    with DaemonUnderTest(work) as daemon:
        staging = work / "staging"
        staging.mkdir()
        www = site(work)
        for index in range(args.m):
            path = staging / f"c{index:04d}.toml"
            path.write_text(squishfile(kind, www))
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
        "kind": kind,
        "m": args.m,
        "ready_s": round(ready, 1),
        "daemon_pct": [round(x, 1) for x in median_p90(daemon_pct)],
        "server_pct": [round(x, 1) for x in median_p90(server_pct)],
        "total_pct": [
            round(x, 1)
            for x in median_p90([a + b for a, b in zip(daemon_pct, server_pct, strict=True)])
        ],
        # Over all windows together: the exec server's share comes in bursts
        # (a batch of sockets per container every 30 s) that a window's
        # median would miss.
        "mean_pct": round(statistics.fmean(daemon_pct) + statistics.fmean(server_pct), 1),
        "checks_per_s": round(count / (args.windows * args.window), 1) if count else 0.0,
        "check_mean_ms": round(total / count * 1e3, 2) if count else None,
        "exit_code": code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="checks of each kind in part 1")
    parser.add_argument("-m", type=int, default=200, help="containers in part 2")
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument(
        "--kinds",
        type=lambda text: [kind for kind in text.split(",") if kind],
        default=list(KINDS),
        help="the kinds of check, of: command,tcp,http (default: all)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if unknown := set(args.kinds) - set(KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="squish-health-") as tmp:
        work = Path(tmp)
        one = anyio.run(one_check, args, work / "one")
        plain = at_scale(args, work / "plain", None)
        runs = {kind: at_scale(args, work / kind, kind) for kind in args.kinds}
    rate = runs["command"]["checks_per_s"] if "command" in runs else float(args.m)
    anchor = spawn_anchor(rate, args.windows, args.window)
    found: dict[str, Any] = {"one_check": one, "without_checks": plain, "runs": runs}
    found["anchor_pct"] = [round(x, 1) for x in median_p90(anchor)]
    found["anchor_mean_pct"] = round(statistics.fmean(anchor), 1)
    found["add_pct"] = {
        kind: round(run["mean_pct"] - plain["mean_pct"], 1) for kind, run in runs.items()
    }
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"1. one check ({one['n']} of each kind; a container serving httpd)")
    print("| series | median | p90 | ratio | CPU: runtime | CPU: exec server |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds:
        row = one[kind]
        print(
            f"| {kind} | {row['ms'][0]} ms | {row['ms'][1]} ms | {row['ratio']} "
            f"| {row['cpu_ms']['runtime']} ms | {row['cpu_ms']['exec_server']} ms |"
        )
    anchor_ms = one["anchor_ms"]
    print(f"| anchor: true spawned on the host | {anchor_ms[0]} ms | {anchor_ms[1]} ms | 1.0 | | |")
    print()
    print(f"2. {args.m} containers, {args.windows} windows of {args.window:g} s (% of one core)")
    print(
        "| run | daemon median | p90 | exec server median | p90 | both median | p90 | both mean "
        "| checks/s | check mean | checks add (mean) | ratio to anchor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    spawns = found["anchor_pct"]
    for run in (plain, *runs.values()):
        kind = run["kind"]
        name = f"{kind} checks every 1 s" if kind else "without checks"
        mean = f"{run['check_mean_ms']} ms" if run["check_mean_ms"] is not None else "-"
        added = found["add_pct"].get(kind)
        print(
            f"| {name} | {run['daemon_pct'][0]} | {run['daemon_pct'][1]} | {run['server_pct'][0]} "
            f"| {run['server_pct'][1]} | {run['total_pct'][0]} | {run['total_pct'][1]} "
            f"| {run['mean_pct']} | {run['checks_per_s']} | {mean} "
            f"| {'-' if added is None else added} "
            f"| {'-' if added is None else round(added / found['anchor_mean_pct'], 2)} |"
        )
    print(
        f"| anchor: true spawned on the host {rate:g} times/s "
        f"| | | | | {spawns[0]} | {spawns[1]} | {round(statistics.fmean(anchor), 1)} | | | | |"
    )
    codes = [plain["exit_code"], *(run["exit_code"] for run in runs.values())]
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
