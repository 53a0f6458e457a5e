"""Event cost: what one event costs the daemon, as the number of containers it holds grows.

Run as an ordinary user (squish is rootless), with ``squish`` on PATH or
squish importable by this interpreter:

    .venv/bin/python bench/event_cost.py -n 20
    .venv/bin/python bench/event_cost.py -n 10 --size 5 --size 20 --size 50

What it measures, on one daemon of its own (``squish daemon`` on temporary
directories, its own socket, a free metrics port; started with
``--backoff-reset``, see below; one container started and removed first, so
that the built-in base is built before any clock runs):

The daemon is made to hold ``--size`` containers, 10, then 200, then 1000
by default: ``network = "none"`` busybox ``sleep 3600``, named
``held-NNNN``, the population grown between sizes (the new squishfiles
renamed in at once). At each size, once the API lists all of them running
and the daemon is idle (its CPU, utime + stime from ``/proc``, under 10 % of
a core over 0.3 s; at most 30 s, and the report counts the waits that gave
up), ``-n`` rounds (20) of two events, each after the daemon is idle again,
after ``--warmup`` unmeasured rounds (1):

a. A drop: one squishfile renamed in, until it serves, and removed again;
   exactly ``bench/drop_to_running.py``'s measure (its ``time_drop``): busybox
   httpd with one TCP forward to a fresh free port, the time from just
   before the rename until an HTTP GET through the forward gets a status
   line back. So the figure at 10 compares with that benchmark's.
b. A restart: the command (``sleep``) of one held container is killed from
   the host (SIGKILL to the pid ``squish inspect`` reports, checked to be a
   ``sleep`` of this user); the time from just before the kill until the
   wall-clock time (``at``) of the daemon's ``container.started`` event for
   that container's next start, read from its event stream. A first crash
   restarts at once, later ones back off; so each round takes the held
   container whose current start is the oldest, and when there are fewer
   held containers than rounds (the smallest size), one is used again only
   once it has run ``--backoff-reset`` seconds (2), the daemon's setting
   after which a crash counts as a first one again (waited for outside the
   clock).

c. The kernel's anchor: a raw bwrap start (``bench/start_latency.py``'s
   ``bwrap`` series: the same namespaces, the built-in base, spawned from
   this small process), until the command inside has run. Creating a
   sandbox costs the kernel more on a host with more tasks (``pivot_root``
   looks at every task's root and working directory), whoever starts it;
   its growth from the smallest size is what the host adds to every start,
   and the restart's growth beyond it is the daemon's.

Beside each size: the daemon's reconcile rounds per round of events (its
``squish_reconcile_duration_seconds`` histogram, scraped before and after
the rounds, every scope) and their seconds, and the daemon's VmRSS.

Prints, per size, median and p90 of (a), (b) and (c) and each median's
ratio to the smallest size's (the anchor, in the same run on the same
daemon), and the restart with (c)'s growth taken out.

Target (from the issue): the median at 1000 <= 1.2 x the median at 10, for
both (a) and (b): an event's cost does not grow with what the daemon holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from daemon_under_test import (
    DaemonUnderTest,
    StartWatcher,
    cpu_seconds,
    histogram_delta,
    make_site,
    sleep_squishfile,
    status_kib,
    warm_up,
)
from drop_to_running import time_drop
from start_latency import time_raw
from stats import median_p90

from squish.errors import SquishError
from squish.layers import LayerStore

TARGET_RATIO = 1.2
KINDS = ("drop", "restart", "bwrap")
RECONCILE_HISTOGRAM = "squish_reconcile_duration_seconds"
START_HISTOGRAM = "squish_container_start_duration_seconds"
IDLE_WINDOW_S = 0.3
IDLE_CPU_PCT = 10.0
IDLE_TIMEOUT_S = 30.0
RESTART_TIMEOUT_S = 30.0
LIST_INTERVAL_S = 0.5  # listing is not free for the daemon: not faster than this


def held_name(index: int) -> str:
    return f"held-{index:04d}"


class Idle:
    """Waits until the daemon is idle; counts the waits that gave up."""

    def __init__(self, daemon: DaemonUnderTest) -> None:
        self.daemon = daemon
        self.gave_up = 0

    def wait(self, timeout: float = IDLE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cpu, clock = cpu_seconds(self.daemon.pid), time.monotonic()
            time.sleep(IDLE_WINDOW_S)
            used = cpu_seconds(self.daemon.pid) - cpu
            if 100 * used / (time.monotonic() - clock) < IDLE_CPU_PCT:
                return
        self.gave_up += 1


def grow(daemon: DaemonUnderTest, staging: Path, have: int, size: int, timeout: float) -> float:
    """Held containers ``have`` .. ``size`` renamed in at once; seconds until all run."""
    staging.mkdir(exist_ok=True)
    for index in range(have, size):
        (staging / f"{held_name(index)}.toml").write_text(sleep_squishfile())
    began = time.perf_counter()
    for index in range(have, size):
        name = f"{held_name(index)}.toml"
        os.rename(staging / name, daemon.manifests / name)
    with daemon.client(timeout=60.0) as client:
        while True:
            statuses = client.containers()
            running = sum(
                1 for s in statuses if s["name"].startswith("held-") and s["phase"] == "running"
            )
            if running == size:
                return time.perf_counter() - began
            if time.perf_counter() - began > timeout:
                failing = [
                    f"{s['name']}: {s['phase']} {s['reason']}"
                    for s in statuses
                    if s["name"].startswith("held-") and s["phase"] != "running"
                ]
                raise TimeoutError(
                    f"{running} of {size} held containers running after {timeout:g} s: "
                    f"{failing[:5]}\n{daemon.log_tail()}"
                )
            time.sleep(LIST_INTERVAL_S)


class Victims:
    """Which held container's command to kill next: the one whose current start is oldest."""

    def __init__(self, watcher: StartWatcher, reset_after: float) -> None:
        self.watcher = watcher
        self.reset_after = reset_after

    def next(self, size: int) -> str:
        names = [held_name(index) for index in range(size)]
        # A name the stream has not seen start (started before it subscribed)
        # has not crashed since: oldest of all.
        name = min(names, key=lambda n: self.watcher.starts.get(n, [0.0])[-1])
        last = self.watcher.starts.get(name, [0.0])[-1]
        # Outside the clock: wait until a crash of it is a first crash again.
        wait = last + self.reset_after + 0.2 - time.time()
        if wait > 0:
            time.sleep(wait)
        return name


def time_restart(daemon: DaemonUnderTest, watcher: StartWatcher, name: str) -> tuple[float, float]:
    """Kill ``name``'s command; seconds until the daemon says it started again.

    And seconds until its ``container.exited``: the part of the restart that
    is the sandbox ending (the kernel's) and the runtime noticing it.
    """
    with daemon.client() as client:
        detail = client.inspect(name)
    pid = detail.get("pid")
    if detail["phase"] != "running" or pid is None:
        raise RuntimeError(f"{name} is {detail['phase']}, not running: {detail['reason']}")
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm != "sleep" or os.stat(f"/proc/{pid}").st_uid != os.getuid():
        raise RuntimeError(f"pid {pid} of {name} is {comm!r}, not this user's sleep")
    number = watcher.start_count(name)
    exits = len(watcher.exits.get(name, ()))
    began = time.time()
    os.kill(pid, signal.SIGKILL)
    started = watcher.wait_start(name, number, RESTART_TIMEOUT_S)
    exited = watcher.exits.get(name, [])[exits:]
    return started - began, (exited[0] if exited else started) - began


def measure_size(
    daemon: DaemonUnderTest,
    watcher: StartWatcher,
    *,
    victims: Victims,
    idle: Idle,
    site: Path,
    anchor: tuple[Path, Path],
    size: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``args.n`` rounds of a drop, a restart and a raw bwrap start with ``size`` held."""
    drops: list[float] = []
    restarts: list[float] = []
    exits: list[float] = []
    raws: list[float] = []
    gave_up = idle.gave_up
    scrape_before = daemon.metrics()
    idle.wait()
    for index in range(-args.warmup, args.n):
        drop_s = anyio.run(time_drop, daemon, site, size * 10_000 + args.warmup + index)
        idle.wait()
        restart_s, exit_s = time_restart(daemon, watcher, victims.next(size))
        idle.wait()
        raw_s = anyio.run(time_raw, *anchor)
        if index >= 0:
            drops.append(drop_s)
            restarts.append(restart_s)
            exits.append(exit_s)
            raws.append(raw_s)
    scrape_after = daemon.metrics()
    rounds, seconds = histogram_delta(scrape_before, scrape_after, RECONCILE_HISTOGRAM)
    starts, start_seconds = histogram_delta(scrape_before, scrape_after, START_HISTOGRAM)
    rounds_of_events = args.warmup + args.n
    return {
        "size": size,
        "drop": drops,
        "restart": restarts,
        "restart_exited": exits,
        "bwrap": raws,
        "reconciles_per_round": round(rounds / rounds_of_events, 1),
        "reconcile_ms_per_round": round(1e3 * seconds / rounds_of_events, 2),
        "start_ms_mean": round(1e3 * start_seconds / starts, 2) if starts else None,
        "idle_waits_given_up": idle.gave_up - gave_up,
        "rss_mb": round(status_kib(daemon.pid, "VmRSS") / 1024, 1),
    }


def rows_from(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    anchor = {kind: median_p90(sizes[0][kind])[0] for kind in KINDS}
    rows = []
    for measured in sizes:
        row: dict[str, Any] = {"size": measured["size"]}
        for kind in KINDS:
            median, p90 = median_p90(measured[kind])
            row[kind] = {
                "n": len(measured[kind]),
                "median_ms": round(median * 1e3, 2),
                "p90_ms": round(p90 * 1e3, 2),
                "ratio_to_smallest": round(median / anchor[kind], 2),
            }
        for key in (
            "reconciles_per_round",
            "reconcile_ms_per_round",
            "idle_waits_given_up",
            "start_ms_mean",
        ):
            row[key] = measured[key]
        row["rss_mb"] = measured["rss_mb"]
        exited = median_p90(measured["restart_exited"])[0]
        row["restart_split_ms"] = {
            "kill_to_exited": round(exited * 1e3, 2),
            "exited_to_started": round((median_p90(measured["restart"])[0] - exited) * 1e3, 2),
        }
        # The restart with the kernel's growth since the smallest size taken out.
        grown = 1e3 * (median_p90(measured["bwrap"])[0] - anchor["bwrap"])
        row["restart_less_kernel_growth"] = {
            "median_ms": round(row["restart"]["median_ms"] - grown, 2),
            "ratio_to_smallest": round(
                (row["restart"]["median_ms"] - grown) / (1e3 * anchor["restart"]), 2
            ),
        }
        rows.append(row)
    return rows


def report(result: dict[str, Any]) -> None:
    print(
        f"{'held':>5} {'kind':<8} {'n':>3} {'median ms':>10} {'p90 ms':>8} "
        f"{'x smallest':>11}   daemon per round of events"
    )
    for row in result["rows"]:
        for kind in KINDS:
            cell = row[kind]
            extra = ""
            if kind == "drop":
                extra = (
                    f"   {row['reconciles_per_round']} reconciles, "
                    f"{row['reconcile_ms_per_round']} ms; RSS {row['rss_mb']} MB"
                )
                if row["idle_waits_given_up"]:
                    extra += f"; {row['idle_waits_given_up']} idle waits gave up"
            print(
                f"{row['size']:>5} {kind:<8} {cell['n']:>3} {cell['median_ms']:>10.2f} "
                f"{cell['p90_ms']:>8.2f} {cell['ratio_to_smallest']:>11.2f}{extra}"
            )
    for row in result["rows"]:
        split = row["restart_split_ms"]
        print(
            f"{row['size']:>5} restart split (medians): kill -> exited "
            f"{split['kill_to_exited']:.2f} ms (the sandbox ending, the runtime noticing), "
            f"exited -> started {split['exited_to_started']:.2f} ms (the round, the new start; "
            f"the daemon's starts took {row['start_ms_mean']} ms on average, layers resolved "
            "until running)"
        )
    for row in result["rows"][1:]:
        less = row["restart_less_kernel_growth"]
        print(
            f"{row['size']:>5} restart less the kernel's growth (raw bwrap's median at this size "
            f"minus at the smallest): {less['median_ms']:.2f} ms, "
            f"{less['ratio_to_smallest']:.2f} x smallest"
        )
    for kind, label in (("drop", "drop -> HTTP answered"), ("restart", "kill -> restarted")):
        target = result["targets"][kind]
        verdict = "met" if target["met"] else "NOT met"
        print(
            f"{label}: median at {target['large']} / at {target['small']} = {target['ratio']:.2f}"
            f" (target <= {TARGET_RATIO:g}: {verdict})"
        )
    print(
        f"grew to each size in {result['grow_s']} s (the API polled every {LIST_INTERVAL_S:g} s); "
        f"daemon exit code "
        f"{result['daemon_exit_code']}; {len(result['daemon_log_problems'])} warning/error "
        "records in its log"
    )
    for record in result["daemon_log_problems"][:5]:
        print("  " + record.replace("\n", "\n  "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20, help="rounds of events measured per size")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds per size first")
    parser.add_argument(
        "--size",
        type=int,
        action="append",
        help="containers held, growing; repeatable (default: 10, 200, 1000)",
    )
    parser.add_argument(
        "--backoff-reset",
        type=float,
        default=2.0,
        help="the daemon's --backoff-reset: a held container is killed again only after it "
        "has run this long",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for each size to be running"
    )
    parser.add_argument(
        "--nofile", type=int, default=0, help="raise the daemon's soft open-files limit to this"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    sizes = args.size or [10, 200, 1000]
    if sizes != sorted(set(sizes)):
        sys.exit("--size: the population only grows; give distinct sizes, smallest first")
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    if args.nofile:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    measured = []
    grow_s = []
    with tempfile.TemporaryDirectory(prefix="squish-bench-event-") as tmp:
        work = Path(tmp)
        site = make_site(work / "site")
        anchor_dir = work / "anchor"
        anchor_dir.mkdir()
        anchor = (LayerStore(work / "anchor-state").builtin_base(), anchor_dir)
        extra = ("--backoff-reset", str(args.backoff_reset))
        with DaemonUnderTest(work / "daemon", extra_args=extra) as daemon:
            watcher = StartWatcher(daemon.socket)
            watcher.start()
            warm_up(daemon, watcher)
            idle = Idle(daemon)
            victims = Victims(watcher, args.backoff_reset)
            have = 0
            for size in sizes:
                grow_s.append(round(grow(daemon, work / "staging", have, size, args.timeout), 2))
                have = size
                measured.append(
                    measure_size(
                        daemon,
                        watcher,
                        victims=victims,
                        idle=idle,
                        site=site,
                        anchor=anchor,
                        size=size,
                        args=args,
                    )
                )
            try:
                exit_code = daemon.stop(timeout=120.0)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                exit_code = daemon.exit_code
            problems = daemon.log_problems()
        watcher.join(timeout=5)
    rows = rows_from(measured)
    targets = {}
    for kind in ("drop", "restart"):
        ratio = rows[-1][kind]["ratio_to_smallest"]
        targets[kind] = {
            "small": rows[0]["size"],
            "large": rows[-1]["size"],
            "ratio": ratio,
            "met": ratio <= TARGET_RATIO,
        }
    result = {
        "rows": rows,
        "samples_s": {row["size"]: {k: row[k] for k in KINDS} for row in measured},
        "grow_s": grow_s,
        "targets": targets,
        "daemon_exit_code": exit_code,
        "daemon_log_problems": problems,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    if exit_code != 0:
        sys.exit(f"the daemon exited with {exit_code}, not 0")


if __name__ == "__main__":
    try:
        main()
    except SquishError as exc:
        sys.exit(f"the daemon's API: {exc}")
