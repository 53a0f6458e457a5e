"""CLI latency: how long ``squish --version`` and ``squish ps`` take, beside a bare interpreter.

Run as an ordinary user (squish is rootless), with ``squish`` on PATH or
squish importable by this interpreter:

    .venv/bin/python bench/cli_latency.py -n 30
    .venv/bin/python bench/cli_latency.py -n 30 --baseline /tmp/squish-before

What it measures: the wall time of one command as a fresh process, from
spawn to exit (``subprocess.run``, output to a pipe, so ``ps`` prints its
plain table), N times each, interleaved round by round so that machine
noise hits every series alike:

- ``python3 -c pass`` (the anchor): this interpreter starting and exiting,
  with the same ``site`` (a virtual environment's path hooks included) as
  squish's own command;
- ``squish --version``: the command line loaded and its parser built;
- ``squish ps``: the same plus one API call to a daemon holding
  ``--containers`` (10) running containers (``network = "none"``, busybox
  ``sleep``), the table printed;
- ``squish ps`` of ``--rows`` (1000) containers: the same command against a
  stand-in on a socket of its own that answers every request with one
  stored container list, the real daemon's rows copied under new names and
  ids. It measures the client (start-up, reading 1000 rows, the table)
  without holding 1000 real containers; the daemon's own time to answer is
  not in it (``scale.py`` measures ``ps`` against a real daemon holding
  1000).

With ``--baseline DIR`` (a directory holding another ``squish`` package,
say ``git archive REV squish | tar -x -C DIR``) every ``squish`` series is
measured twice in the same rounds, "before" with DIR's package, "after"
with this checkout's; both then run as ``python -m squish`` with
``PYTHONPATH`` set to their tree, so that they start the same way (and in
a directory of their own: ``-m`` puts the current directory first on the
path, which would run a checkout's package both times).

The commands run with bytecode caching on (``PYTHONDONTWRITEBYTECODE``
dropped from their environment), as for an installed squish, whose
bytecode pip compiles at install time; the warm-up rounds write the cache.

The daemon is a real ``squish daemon`` on temporary directories (own socket,
free metrics port), stopped with SIGTERM at the end. Prints n, median and p90
of each series and its ratio to the anchor's median.

Targets: ``ps`` (10 containers) within 4x of the bare interpreter; from
issue 13, ``ps`` of 1000 containers within 50 ms wall, client included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from daemon_under_test import DaemonUnderTest, sleep_squishfile, squish_command
from stats import rows_against

CONTAINERS = 10
ROWS = 1000
TARGET_PS_RATIO = 4.0
TARGET_PS_ROWS_MS = 50.0
RUNNING_TIMEOUT_S = 60.0
ANCHOR = "python3 -c pass"
CHECKOUT = Path(__file__).resolve().parent.parent


ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def time_command(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, bytes]:
    """Seconds from spawn to exit of ``argv``, and what it printed; fails unless it exits 0."""
    started = time.perf_counter()
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, env=env or ENV, cwd=cwd, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {error}")
    return elapsed, done.stdout


def wait_running(daemon: DaemonUnderTest, count: int) -> list[dict[str, Any]]:
    """The daemon's container list once ``count`` of them run."""
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    with daemon.client() as client:
        while True:
            listed = client.containers()
            running = [s for s in listed if s.get("phase") == "running"]
            if len(running) >= count:
                return [dict(s) for s in listed]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(running)} of {count} containers running after "
                    f"{RUNNING_TIMEOUT_S:g} s:\n{daemon.log_tail()}"
                )
            time.sleep(0.05)


def copied_rows(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` rows made of ``rows`` in turn, each with a name and an id of its own."""
    copies = []
    for index in range(count):
        row = dict(rows[index % len(rows)])
        name = f"sleep-{index:04d}"
        row["name"] = name
        if row.get("id"):
            row["id"] = hashlib.sha256(name.encode()).hexdigest()[: len(row["id"])]
        copies.append(row)
    return copies


class ReplayedList:
    """A unix socket answering every request with one stored container list.

    Answered as the daemon (uvicorn) answers ``GET /v1/containers``: HTTP/1.1
    200, ``content-length``, JSON, then the connection closed. One thread
    serves one connection at a time; ``squish ps`` makes one.
    """

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self.path = path
        body = json.dumps(rows).encode()
        self._answer = (
            b"HTTP/1.1 200 OK\r\n"
            b"date: Mon, 01 Dec 2025 10:00:00 GMT\r\n"
            b"server: uvicorn\r\n"
            + f"content-length: {len(body)}\r\n".encode()
            + b"content-type: application/json\r\n\r\n"
            + body
        )
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="replayed-list", daemon=True)

    def __enter__(self) -> Self:
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        self._listener.settimeout(0.2)  # to notice the end
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(5.0)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5.0)
                request = b""
                try:
                    while b"\r\n\r\n" not in request:
                        chunk = connection.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    connection.sendall(self._answer)
                except OSError:
                    pass  # that client went away; the next one is served


def variants(baseline: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The squish commands measured: label -> (argv prefix, environment)."""
    if baseline is None:
        return {"": (squish_command(), ENV)}
    module = [sys.executable, "-m", "squish"]
    return {
        f"{label}: ": (module, {**ENV, "PYTHONPATH": str(tree)})
        for label, tree in (("before", baseline.resolve()), ("after", CHECKOUT))
    }


def check_imported_from(env: dict[str, str], cwd: Path) -> None:
    """Fails unless ``squish`` is imported from the tree ``env``'s ``PYTHONPATH`` names."""
    if "PYTHONPATH" not in env:
        return
    _, where = time_command(
        [sys.executable, "-c", "import squish; print(squish.__file__)"], env, cwd
    )
    tree = Path(env["PYTHONPATH"])
    if tree not in Path(where.decode().strip()).parents:
        raise RuntimeError(f"squish was imported from {where.decode().strip()}, not from {tree}")


def listed(table: bytes) -> int:
    return len(table.decode().splitlines()) - 1  # less the header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="runs of each command measured")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument(
        "--containers", type=int, default=CONTAINERS, help="real containers the daemon runs"
    )
    parser.add_argument(
        "--rows", type=int, default=ROWS, help="containers of the replayed list (0: no such series)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="a directory holding another squish package, measured beside this one",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    if args.baseline is not None and not (args.baseline / "squish" / "__init__.py").exists():
        sys.exit(f"--baseline {args.baseline}: no squish package there")
    with (
        tempfile.TemporaryDirectory(prefix="squish-bench-cli-") as tmp,
        DaemonUnderTest(Path(tmp) / "daemon") as daemon,
    ):
        for index in range(args.containers):
            (daemon.manifests / f"sleep-{index:04d}.toml").write_text(sleep_squishfile())
        rows = wait_running(daemon, args.containers)
        replayed = Path(tmp) / "replayed.sock"
        with ReplayedList(replayed, copied_rows(rows, args.rows) if args.rows else []):
            commands: dict[str, tuple[list[str], dict[str, str]]] = {
                ANCHOR: ([sys.executable, "-c", "pass"], ENV)
            }
            expected: dict[str, int] = {}
            for label, (squish, env) in variants(args.baseline).items():
                check_imported_from(env, Path(tmp))
                commands[f"{label}squish --version"] = ([*squish, "--version"], env)
                name = f"{label}squish ps ({args.containers} running)"
                commands[name] = ([*squish, "--socket", str(daemon.socket), "ps"], env)
                expected[name] = args.containers
                if args.rows:
                    name = f"{label}squish ps ({args.rows} replayed)"
                    commands[name] = ([*squish, "--socket", str(replayed), "ps"], env)
                    expected[name] = args.rows
            for name, count in expected.items():
                argv, env = commands[name]
                shown = listed(time_command(argv, env, cwd=Path(tmp))[1])
                if shown != count:
                    raise RuntimeError(f"{name} listed {shown} containers, not {count}")
            series: dict[str, list[float]] = {name: [] for name in commands}
            for index in range(-args.warmup, args.n):
                for name, (argv, env) in commands.items():
                    elapsed, _ = time_command(argv, env, cwd=Path(tmp))
                    if index >= 0:
                        series[name].append(elapsed)
        exit_code = daemon.stop()
    table = rows_against(series, ANCHOR, "ratio_to_python")
    last = {row["series"]: row for row in table}
    label = next(reversed(variants(args.baseline)))
    ps_ratio = last[f"{label}squish ps ({args.containers} running)"]["ratio_to_python"]
    met = {"ps_ratio": ps_ratio <= TARGET_PS_RATIO}
    if args.rows:
        met["ps_rows_ms"] = (
            last[f"{label}squish ps ({args.rows} replayed)"]["median_ms"] <= TARGET_PS_ROWS_MS
        )
    result = {
        "rows": table,
        "containers": args.containers,
        "replayed_rows": args.rows,
        "command": variants(args.baseline)[label][0],
        "baseline": str(args.baseline) if args.baseline else None,
        "target_ps_ratio": TARGET_PS_RATIO,
        "target_ps_rows_ms": TARGET_PS_ROWS_MS,
        "met": met,
        "daemon_exit_code": exit_code,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(len(row["series"]) for row in table)
        print(f"{'series':<{width}} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'x python':>9}")
        for row in table:
            print(
                f"{row['series']:<{width}} {row['n']:>4} {row['median_ms']:>10.2f} "
                f"{row['p90_ms']:>8.2f} {row['ratio_to_python']:>9.2f}"
            )
        print(
            f"target ps <= {TARGET_PS_RATIO:g}x {ANCHOR} ({args.containers} containers): "
            f"{'met' if met['ps_ratio'] else 'NOT met'}"
        )
        if args.rows:
            print(
                f"target ps <= {TARGET_PS_ROWS_MS:g} ms ({args.rows} replayed): "
                f"{'met' if met['ps_rows_ms'] else 'NOT met'}"
            )
        print(f"daemon exit code {exit_code}")
    if exit_code != 0:
        sys.exit(f"the daemon exited with {exit_code}, not 0")


if __name__ == "__main__":
    main()
