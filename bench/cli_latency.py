"""CLI latency: how long ``squish --version`` and ``squish ps`` take, beside a bare interpreter.

Run as an ordinary user (squish is rootless), with ``squish`` on PATH or
squish importable by this interpreter:

    .venv/bin/python bench/cli_latency.py -n 30

What it measures: the wall time of one command as a fresh process, from
spawn to exit (``subprocess.run``, output to a pipe, so ``ps`` prints its
plain table), N times each, interleaved round by round so that machine
noise hits every series alike:

- ``python3 -c pass`` (the anchor): this interpreter starting and exiting,
  with the same ``site`` (a virtual environment's path hooks included) as
  squish's own command;
- ``squish --version``: the command line loaded and its parser built;
- ``squish ps``: the same plus one API call to a daemon holding 10 running
  containers (``network = "none"``, busybox ``sleep``), the table printed.

The commands run with bytecode caching on (``PYTHONDONTWRITEBYTECODE``
dropped from their environment), as for an installed squish, whose
bytecode pip compiles at install time; the warm-up rounds write the cache.

The daemon is a real ``squish daemon`` on temporary directories (own socket,
free metrics port), stopped with SIGTERM at the end. Prints n, median and p90
of each series and its ratio to the anchor's median.

Target (from the issue): ``ps`` within 4x of the bare interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon_under_test import DaemonUnderTest, sleep_squishfile, squish_command
from stats import median_p90

CONTAINERS = 10
TARGET_PS_RATIO = 4.0
RUNNING_TIMEOUT_S = 60.0


ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def time_command(argv: list[str]) -> tuple[float, bytes]:
    """Seconds from spawn to exit of ``argv``, and what it printed; fails unless it exits 0."""
    started = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=ENV, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {error}")
    return elapsed, done.stdout


def wait_running(daemon: DaemonUnderTest, count: int) -> None:
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    with daemon.client() as client:
        while True:
            running = [s for s in client.containers() if s.get("phase") == "running"]
            if len(running) >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(running)} of {count} containers running after "
                    f"{RUNNING_TIMEOUT_S:g} s:\n{daemon.log_tail()}"
                )
            time.sleep(0.05)


def rows_from(series: dict[str, list[float]]) -> list[dict[str, Any]]:
    anchor = median_p90(series["python3 -c pass"])[0]
    rows = []
    for name, samples in series.items():
        median, p90 = median_p90(samples)
        rows.append(
            {
                "series": name,
                "n": len(samples),
                "median_ms": round(median * 1e3, 2),
                "p90_ms": round(p90 * 1e3, 2),
                "ratio_to_python": round(median / anchor, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="runs of each command measured")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    squish = squish_command()
    with (
        tempfile.TemporaryDirectory(prefix="squish-bench-cli-") as tmp,
        DaemonUnderTest(Path(tmp) / "daemon") as daemon,
    ):
        for index in range(CONTAINERS):
            (daemon.manifests / f"sleep-{index:02d}.toml").write_text(sleep_squishfile())
        wait_running(daemon, CONTAINERS)
        commands = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "squish --version": [*squish, "--version"],
            "squish ps": [*squish, "--socket", str(daemon.socket), "ps"],
        }
        _, table = time_command(commands["squish ps"])
        listed = len(table.decode().splitlines()) - 1  # less the header
        if listed != CONTAINERS:
            raise RuntimeError(f"squish ps listed {listed} containers, not {CONTAINERS}")
        series: dict[str, list[float]] = {name: [] for name in commands}
        for index in range(-args.warmup, args.n):
            for name, argv in commands.items():
                elapsed, _ = time_command(argv)
                if index >= 0:
                    series[name].append(elapsed)
        exit_code = daemon.stop()
    rows = rows_from(series)
    ps_ratio = rows[-1]["ratio_to_python"]
    result = {
        "rows": rows,
        "containers": CONTAINERS,
        "command": squish,
        "target_ps_ratio": TARGET_PS_RATIO,
        "met": ps_ratio <= TARGET_PS_RATIO,
        "daemon_exit_code": exit_code,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'series':<18} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'x python':>9}")
        for row in rows:
            print(
                f"{row['series']:<18} {row['n']:>4} {row['median_ms']:>10.2f} "
                f"{row['p90_ms']:>8.2f} {row['ratio_to_python']:>9.2f}"
            )
        verdict = "met" if result["met"] else "NOT met"
        print(
            f"target ps <= {TARGET_PS_RATIO:g}x python3 -c pass ({CONTAINERS} containers): "
            f"{verdict}; daemon exit code {exit_code}"
        )
    if exit_code != 0:
        sys.exit(f"the daemon exited with {exit_code}, not 0")


if __name__ == "__main__":
    main()
