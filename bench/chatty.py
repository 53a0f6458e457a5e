"""Chatty: what one container writing as fast as it can costs the daemon.

Run as an ordinary user (squish is rootless), with ``squish`` on PATH or
squish importable by this interpreter:

    .venv/bin/python bench/chatty.py -n 10

On a daemon of its own (``squish daemon`` on temporary directories), one
``network = "none"`` container on the built-in base writes to its stdout as
fast as it can, in one of two ways (each measured in turn, on a fresh
container):

- ``yes``: busybox ``yes``, a line of 2 bytes, written by stdio in 4 KiB
  blocks: few large writes.
- ``echo``: a shell loop of ``echo`` (a builtin): one small write per line,
  the worst case for a reader woken per write.

After a second of warm-up, ``-n`` windows of ``--window`` seconds each; in
every window the daemon process's CPU (utime + stime of ``/proc/PID/stat``,
% of one core, the daemon only) and, as the anchor in the same window, the
container's own CPU (``squish_container_cpu_seconds`` of its process tree:
what producing the output costs). Printed: median and p90 of both, their
ratio, and the bytes the daemon kept in the log and dropped over the run
(``squish_log_bytes_total`` and ``squish_log_bytes_dropped_total``, when the
daemon exports them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon_under_test import DaemonUnderTest, cpu_seconds
from stats import median_p90

WORKLOADS = {
    "yes": ["yes"],
    "echo": ["sh", "-c", "while :; do echo chatty line of about forty bytes here; done"],
}


def squishfile(argv: list[str]) -> str:
    return (
        'network = "none"\n\n[layers]\nbase = "busybox"\n\n[run]\n'
        f"command = {json.dumps(argv[0])}\nargs = {json.dumps(argv[1:])}\n"
    )


def sample(metrics: dict[str, float], name: str, container: str) -> float:
    """The sum of ``name``'s samples for ``container``, over any other labels."""
    exact, labelled = f'{name}{{container="{container}"}}', f'{name}{{container="{container}",'
    return sum(value for key, value in metrics.items() if key == exact or key.startswith(labelled))


def measure(daemon: DaemonUnderTest, name: str, argv: list[str], args: argparse.Namespace) -> Any:
    (daemon.manifests / f"{name}.toml").write_text(squishfile(argv))
    deadline = time.monotonic() + 30
    with daemon.client() as client:
        while time.monotonic() < deadline:
            rows = {row["name"]: row for row in client.containers()}
            if rows.get(name, {}).get("phase") == "running":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start: {rows.get(name)}")
    time.sleep(1.0)
    daemon_pct: list[float] = []
    container_pct: list[float] = []
    first = daemon.metrics()
    for _ in range(args.n):
        before_daemon = cpu_seconds(daemon.pid)
        before_container = sample(daemon.metrics(), "squish_container_cpu_seconds_total", name)
        began = time.monotonic()
        time.sleep(args.window)
        after_daemon = cpu_seconds(daemon.pid)
        after_container = sample(daemon.metrics(), "squish_container_cpu_seconds_total", name)
        elapsed = time.monotonic() - began
        daemon_pct.append((after_daemon - before_daemon) / elapsed * 100)
        container_pct.append((after_container - before_container) / elapsed * 100)
    last = daemon.metrics()
    seconds = args.n * args.window
    (daemon.manifests / f"{name}.toml").unlink()
    with daemon.client() as client:
        while any(row["name"] == name for row in client.containers()):
            time.sleep(0.05)
    kept = "squish_log_bytes_total"
    dropped = "squish_log_bytes_dropped_total"
    return {
        "workload": name,
        "n": args.n,
        "daemon_cpu_pct": median_p90(daemon_pct),
        "container_cpu_pct": median_p90(container_pct),
        "kept_bytes_per_s": (sample(last, kept, name) - sample(first, kept, name)) / seconds,
        "dropped_bytes_per_s": (sample(last, dropped, name) - sample(first, dropped, name))
        / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="windows per workload")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="squish-chatty-") as work,
        DaemonUnderTest(Path(work)) as daemon,
    ):
        for name in args.workload or sorted(WORKLOADS):
            results.append(measure(daemon, name, WORKLOADS[name], args))
        code = daemon.stop()
    if args.json:
        print(json.dumps(results))
    else:
        print(
            "| workload | n | daemon CPU median | p90 | container CPU (anchor) median | p90 "
            "| daemon / container | kept | dropped |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            (dm, dp), (cm, cp) = r["daemon_cpu_pct"], r["container_cpu_pct"]
            print(
                f"| {r['workload']} | {r['n']} | {dm:.1f} % | {dp:.1f} % | {cm:.1f} % | {cp:.1f} % "
                f"| {dm / cm if cm else float('nan'):.2f} | {r['kept_bytes_per_s'] / 1e6:.2f} MB/s "
                f"| {r['dropped_bytes_per_s'] / 1e6:.2f} MB/s |"
            )
    print(f"daemon exit code {code}", file=sys.stderr)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
