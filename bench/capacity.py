"""Capacity: how many containers one daemon on one host runs, and which limit stops it.

Run as an ordinary user (squish is rootless), with ``squish`` on PATH or
squish importable by this interpreter:

    .venv/bin/python bench/capacity.py --step 500 --max 5000

What it measures, on one daemon of its own (``squish daemon`` on temporary
directories, its own socket, a free metrics port; one container started and
removed first, so that the built-in base is built before any clock runs):

First the limits that bound it, as this user sees them: the soft and hard
``RLIMIT_NOFILE`` and ``RLIMIT_NPROC`` (``ulimit -n``, ``ulimit -u``: the
latter counts every task, thread or process, of the user), both soft limits
raised before the daemon starts (to the hard limit, or to ``--nofile`` and
``--nproc``), since a daemon would be run so; ``kernel.pid_max``,
``kernel.threads-max``, ``fs.file-max``, ``fs.nr_open``, ``fs.inotify.*``,
every ``user.max_*`` (``/proc/sys/user``: the namespaces a user may hold,
one user, mount, pid, ... namespace per container), the ``pids.max`` and
``memory.max`` of the cgroups above this process (a systemd user slice's
``TasksMax``), and MemAvailable.

Then steps: ``--step`` (500) more ``network = "none"`` busybox ``sleep
3600`` squishfiles renamed in at once, until the daemon's API lists all of
them running, a ``container.failed`` event comes (its event stream, read
from a thread), ``--step-timeout`` (300 s) passes, or the daemon exits;
until ``--max`` containers run or a step did not complete. After each
step: the containers running (the API), the step's time (from the first
rename to the last ``container.started`` event of the step), the daemon's
VmRSS, its open fds per container (less those it had before the first
step), its threads, the user's tasks (against ``ulimit -u``), the
namespaces this user's processes are in (each kind against its
``user.max_*``), the nearest cgroup's ``pids.current``, and MemAvailable.

At the end: what stopped it (the first ``container.failed`` message and
the tail of that container's log, where bwrap says what the kernel refused,
or the daemon's own warnings), and for each limit the share of it the last
step used and where, at the same cost per container, it would run out:
a projection, to say which limit is nearest, not a measurement.

Then SIGTERM to the daemon (which stops every container): its exit status,
the time it took, and a check that no bwrap process of this run is left.

Anchor: the step times compare with each other (the first step is the
anchor: a later step taking longer is a cost growing with what the daemon
already holds), and the projections with ``--max``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon_under_test import (
    DaemonUnderTest,
    StartWatcher,
    container_processes,
    processes,
    sleep_squishfile,
    status_kib,
    warm_up,
)

from squish.errors import SquishError

NAMESPACES = ("user", "mnt", "pid", "ipc", "uts", "net", "cgroup")
LIST_INTERVAL_S = 1.0  # listing thousands is not free for the daemon
SYSCTLS = (
    "kernel/pid_max",
    "kernel/threads-max",
    "fs/file-max",
    "fs/nr_open",
    "fs/inotify/max_user_instances",
    "fs/inotify/max_user_watches",
    "fs/inotify/max_queued_events",
)


# -- limits --------------------------------------------------------------------


def read_int(path: Path) -> int | str | None:
    """An integer from a /proc or /sys file; its text if it is not one ("max")."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else text


def cgroup_dirs() -> list[Path]:
    """This process's cgroup (v2) and those above it, nearest first."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, _, path = line.split(":", 2)
        if hierarchy == "0":
            here = Path("/sys/fs/cgroup") / path.lstrip("/")
            return [here, *[p for p in here.parents if p.is_relative_to("/sys/fs/cgroup")]]
    return []


def cgroup_limits() -> list[dict[str, Any]]:
    found = []
    for directory in cgroup_dirs():
        pids_max = read_int(directory / "pids.max")
        memory_max = read_int(directory / "memory.max")
        if pids_max is None and memory_max is None:
            continue
        found.append(
            {
                "cgroup": str(directory.relative_to("/sys/fs/cgroup")) or "/",
                "pids.max": pids_max,
                "memory.max": memory_max,
            }
        )
    return found


def nearest_pids_cgroup() -> Path | None:
    """The nearest cgroup above this process with a pids.max that is a number."""
    for directory in cgroup_dirs():
        if isinstance(read_int(directory / "pids.max"), int):
            return directory
    return None


def daemon_limits(pid: int) -> dict[str, int | str]:
    """The soft open-files and tasks limits the daemon runs with (it may raise its own)."""
    wanted = {"Max open files": "nofile", "Max processes": "nproc"}
    found: dict[str, int | str] = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        for label, key in wanted.items():
            if line.startswith(label):
                soft = line[len(label) :].split()[0]
                found[key] = int(soft) if soft.isdigit() else soft
    return found


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError("MemAvailable")


def raise_soft(kind: int, wanted: int) -> tuple[int, int]:
    """Soft limit ``kind`` raised to ``wanted`` (0: to the hard limit); (soft, hard) after."""
    soft, hard = resource.getrlimit(kind)
    target = hard if wanted == 0 else wanted
    if target != soft:
        resource.setrlimit(kind, (target, hard))
    return resource.getrlimit(kind)


def limits(before: dict[str, tuple[int, int]]) -> dict[str, Any]:
    def rlimit(value: int) -> int | str:
        return "unlimited" if value == resource.RLIM_INFINITY else value

    found: dict[str, Any] = {
        f"ulimit {flag}": {
            "soft_before": rlimit(before[name][0]),
            "soft": rlimit(resource.getrlimit(kind)[0]),
            "hard": rlimit(resource.getrlimit(kind)[1]),
        }
        for flag, name, kind in (
            ("-n", "nofile", resource.RLIMIT_NOFILE),
            ("-u", "nproc", resource.RLIMIT_NPROC),
        )
    }
    for sysctl in SYSCTLS:
        found[sysctl.replace("/", ".")] = read_int(Path("/proc/sys") / sysctl)
    for entry in sorted(Path("/proc/sys/user").glob("max_*")):
        found[f"user.{entry.name}"] = read_int(entry)
    found["cgroups"] = cgroup_limits()
    found["MemAvailable_mb"] = mem_available_mb()
    return found


# -- usage ---------------------------------------------------------------------


def user_usage(uid: int) -> dict[str, int]:
    """Tasks of ``uid`` (ulimit -u counts them) and the namespaces of each kind they are in."""
    tasks = 0
    spaces: dict[str, set[str]] = {kind: set() for kind in NAMESPACES}
    for pid in processes(uid):
        try:
            tasks += len(os.listdir(f"/proc/{pid}/task"))
            for kind in NAMESPACES:
                spaces[kind].add(os.readlink(f"/proc/{pid}/ns/{kind}"))
        except OSError:
            continue  # gone meanwhile
    return {"tasks": tasks, **{f"{kind}_namespaces": len(found) for kind, found in spaces.items()}}


def step_figures(
    daemon: DaemonUnderTest, uid: int, fds_before: int, running: int, pids_cgroup: Path | None
) -> dict[str, Any]:
    fds = daemon.fd_count()
    return {
        "running": running,
        "rss_mb": round(status_kib(daemon.pid, "VmRSS") / 1024, 1),
        "fds": fds,
        "fds_per_container": round((fds - fds_before) / running, 2) if running else None,
        "threads": status_kib(daemon.pid, "Threads"),
        **user_usage(uid),
        "cgroup_pids": read_int(pids_cgroup / "pids.current") if pids_cgroup else None,
        "MemAvailable_mb": mem_available_mb(),
    }


def projections(
    last: dict[str, Any], found: dict[str, Any], baseline: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each limit's share used at the last step, and the containers at which it would run out.

    The cost per container is the growth since before the first step, over
    the containers running; the projection assumes it stays so.
    """
    running = last["running"]
    if not running:
        return []
    pairs: list[tuple[str, str, Any]] = [
        ("ulimit -u (tasks)", "tasks", found["ulimit -u"]["soft"]),
        ("the daemon's fds (its own ulimit -n)", "fds", found["daemon"]["nofile"]),
        # System-wide: other users' tasks count too; these are this user's.
        ("kernel.pid_max (tasks)", "tasks", found["kernel.pid_max"]),
        ("kernel.threads-max (tasks)", "tasks", found["kernel.threads-max"]),
        ("MemAvailable (MB)", "MemAvailable_mb", None),
    ]
    for kind in NAMESPACES:
        sysctl = f"user.max_{kind}_namespaces"
        pairs.append((sysctl, f"{kind}_namespaces", found.get(sysctl)))
    nearest = next((g for g in found["cgroups"] if isinstance(g["pids.max"], int)), None)
    if nearest and last["cgroup_pids"] is not None:
        pairs.append((f"pids.max of {nearest['cgroup']}", "cgroup_pids", nearest["pids.max"]))
    rows = []
    for label, key, bound in pairs:
        limit = bound
        if key == "MemAvailable_mb":  # runs out when nothing is left available
            used = round(baseline[key] - last[key], 1)
            limit, now = baseline[key], used
        else:
            used = last[key] - baseline[key]
            now = last[key]
        if not isinstance(limit, int | float) or used <= 0:
            rows.append({"limit": label, "value": limit, "used": now, "share": None, "at": None})
            continue
        per_container = used / running
        at = running + int((limit - now) / per_container)
        share = round(now / limit, 4)
        rows.append({"limit": label, "value": limit, "used": now, "share": share, "at": at})
    return sorted(rows, key=lambda row: (row["at"] is None, row["at"] or 0))


# -- the ramp ------------------------------------------------------------------


def ramp_step(
    daemon: DaemonUnderTest,
    watcher: StartWatcher,
    staging: Path,
    *,
    have: int,
    want: int,
    timeout: float,
) -> dict[str, Any]:
    """Containers ``have`` .. ``want`` renamed in at once, until they run or one fails."""
    names = [f"cap-{index:05d}" for index in range(have, want)]
    staging.mkdir(exist_ok=True)
    for name in names:
        (staging / f"{name}.toml").write_text(sleep_squishfile())
    wall, began = time.time(), time.perf_counter()
    for name in names:
        os.rename(staging / f"{name}.toml", daemon.manifests / f"{name}.toml")
    outcome = "timeout"
    running = 0
    with daemon.client(timeout=120.0) as client:
        while time.perf_counter() - began < timeout:
            if daemon.process is not None and daemon.process.poll() is not None:
                outcome = f"the daemon exited with {daemon.process.returncode}"
                break
            if watcher.failed:
                outcome = "a start failed"
                break
            try:
                statuses = client.containers()
            except SquishError as exc:  # too busy to answer: say so, try again
                print(f"  API: {exc}", file=sys.stderr)
                continue
            running = sum(
                1 for s in statuses if s["name"].startswith("cap-") and s["phase"] == "running"
            )
            if running == want:
                outcome = "all running"
                break
            time.sleep(LIST_INTERVAL_S)
        alive = daemon.process is not None and daemon.process.poll() is None
        if outcome != "all running" and alive:
            # What runs now, not at the last look.
            with contextlib.suppress(SquishError):
                running = sum(
                    1
                    for s in client.containers()
                    if s["name"].startswith("cap-") and s["phase"] == "running"
                )
    starts = [watcher.started[name] - wall for name in names if name in watcher.started]
    return {
        "outcome": outcome,
        "running": running,
        "step_s": round(max(starts), 2) if outcome == "all running" and starts else None,
        "waited_s": round(time.perf_counter() - began, 2),
    }


def run(args: argparse.Namespace, work: Path, found: dict[str, Any]) -> dict[str, Any]:
    uid = os.getuid()
    steps: list[dict[str, Any]] = []
    stopped_by = f"reached --max {args.max}"
    pids_cgroup = nearest_pids_cgroup()
    with DaemonUnderTest(work / "daemon") as daemon:
        watcher = StartWatcher(daemon.socket)
        watcher.start()
        warm_up(daemon, watcher)
        fds_before = daemon.fd_count()
        baseline = step_figures(daemon, uid, fds_before, 0, pids_cgroup)
        found["daemon"] = daemon_limits(daemon.pid)
        if not args.json:
            print(f"the daemon's own: {found['daemon']}")
            print(STEP_HEADER)
        have = 0
        while have < args.max:
            want = min(have + args.step, args.max)
            step = ramp_step(
                daemon, watcher, work / "staging", have=have, want=want, timeout=args.step_timeout
            )
            if daemon.process is not None and daemon.process.poll() is None:
                step.update(step_figures(daemon, uid, fds_before, step["running"], pids_cgroup))
            step["wanted"] = want
            steps.append(step)
            if not args.json:
                print_step(step)
            if step["outcome"] != "all running":
                stopped_by = step["outcome"]
                break
            have = want
        failures = [
            {
                "name": name,
                "message": watcher.failed[name],
                "log": _tail(daemon.state / "logs" / f"{name}.log", 5),
            }
            for name in watcher.failed_order[:3]
        ]
        measured = [s for s in steps if "rss_mb" in s]
        projected = projections(measured[-1], found, baseline) if measured else []
        before_stop = len(container_processes(work, uid))
        try:
            exit_code = daemon.stop(timeout=args.stop_wait)
            stop_error = None
        except RuntimeError as exc:
            exit_code, stop_error = daemon.exit_code, str(exc)
        problems = daemon.log_problems()
        stop_s = daemon.stop_seconds
    watcher.join(timeout=5)
    return {
        "steps": steps,
        "baseline": baseline,
        "stopped_by": stopped_by,
        "first_failures": failures,
        "projections": projected,
        "container_processes_before_stop": before_stop,
        "left_over": [
            f"{p.pid} {p.comm} {' '.join(p.argv)[:120]}" for p in container_processes(work, uid)
        ],
        "daemon_exit_code": exit_code,
        "daemon_stop_s": None if stop_s is None else round(stop_s, 2),
        "stop_error": stop_error,
        "daemon_log_problems": problems,
    }


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


# -- the report ----------------------------------------------------------------

STEP_HEADER = (
    f"{'running':>8} {'step s':>7} {'RSS MB':>7} {'fds/c':>6} {'thr':>4} {'tasks':>6} "
    f"{'userns':>6} {'cg pids':>7} {'MemAvail MB':>11}  outcome"
)


def print_step(step: dict[str, Any]) -> None:
    step_s = "-" if step["step_s"] is None else f"{step['step_s']:.2f}"
    if "rss_mb" not in step:
        print(f"{step['running']:>8} {step_s:>7}  (the daemon is gone)  {step['outcome']}")
        return
    print(
        f"{step['running']:>8} {step_s:>7} {step['rss_mb']:>7.1f} "
        f"{step['fds_per_container'] or 0:>6.2f} {step['threads']:>4} {step['tasks']:>6} "
        f"{step['user_namespaces']:>6} {step['cgroup_pids'] or '-':>7} "
        f"{step['MemAvailable_mb']:>11.1f}  {step['outcome']} (wanted {step['wanted']}, "
        f"waited {step['waited_s']:.1f} s)",
        flush=True,
    )


def report_limits(found: dict[str, Any]) -> None:
    print("limits (this user, before the daemon started):")
    for key, value in found.items():
        if key == "cgroups":
            for group in value:
                print(
                    f"  cgroup {group['cgroup']}: pids.max {group['pids.max']}, "
                    f"memory.max {group['memory.max']}"
                )
        elif isinstance(value, dict):
            print(
                f"  {key}: soft {value['soft']} (was {value['soft_before']}), hard {value['hard']}"
            )
        else:
            print(f"  {key}: {value}")


def report_end(result: dict[str, Any]) -> None:
    steps = [s for s in result["steps"] if s["step_s"] is not None]
    if steps:
        anchor = steps[0]["step_s"]
        ratios = ", ".join(f"{s['step_s'] / anchor:.2f}" for s in steps) if anchor else "-"
        print(f"step times against the first ({anchor:.2f} s): {ratios}")
    print(f"stopped by: {result['stopped_by']}")
    for failure in result["first_failures"]:
        print(f"  {failure['name']}: {failure['message']}")
        for line in failure["log"]:
            print(f"    {failure['name']}.log: {line}")
    if result["projections"]:
        print("limits, nearest first (projected at the last step's cost per container):")
        for row in result["projections"]:
            share = "-" if row["share"] is None else f"{row['share']:.1%}"
            at = "-" if row["at"] is None else str(row["at"])
            print(
                f"  {row['limit']:<34} limit {row['value']!s:>12}  used {row['used']!s:>8} "
                f"({share:>6})  runs out at ~{at} containers"
            )
    stop_s = "-" if result["daemon_stop_s"] is None else f"{result['daemon_stop_s']:.2f} s"
    print(
        f"stop (SIGTERM): exit code {result['daemon_exit_code']} after {stop_s}; "
        f"bwrap processes: {result['container_processes_before_stop']} before, "
        f"{len(result['left_over'])} after"
    )
    if result["stop_error"]:
        print(f"  {result['stop_error']}")
    for line in result["left_over"][:10]:
        print(f"  left over: {line}")
    problems = result["daemon_log_problems"]
    print(f"daemon log: {len(problems)} warning/error records")
    for record in problems[:5]:
        print("  " + record.replace("\n", "\n  "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=int, default=500, help="containers added per step")
    parser.add_argument("--max", type=int, default=5000, help="stop once this many run")
    parser.add_argument(
        "--step-timeout", type=float, default=300.0, help="seconds for a step to be running"
    )
    parser.add_argument(
        "--nofile", type=int, default=0, help="soft open-files limit (0: the hard limit)"
    )
    parser.add_argument(
        "--nproc", type=int, default=0, help="soft tasks limit, ulimit -u (0: the hard limit)"
    )
    parser.add_argument(
        "--stop-wait",
        type=float,
        default=600.0,
        help="seconds to wait for the daemon after SIGTERM before killing it",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    before = {
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
    }
    # Inherited by the daemon (and by this process, which does not care).
    raise_soft(resource.RLIMIT_NOFILE, args.nofile)
    raise_soft(resource.RLIMIT_NPROC, args.nproc)
    found = limits(before)
    if not args.json:
        report_limits(found)
    with tempfile.TemporaryDirectory(prefix="squish-bench-capacity-") as tmp:
        result = run(args, Path(tmp), found)
    result["limits"] = found
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report_end(result)
    if result["daemon_exit_code"] != 0 or result["left_over"]:
        sys.exit("the daemon did not exit 0, or left processes behind")


if __name__ == "__main__":
    main()
