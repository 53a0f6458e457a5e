"""Fleets: many nodes, each with its own git source, syncing from one git server.

Every host of a fleet runs its own squish daemon, and each daemon's
``GitSource`` keeps its own bare clone and fetches the one shared repository
every ``interval`` seconds (30 s by default). This script plays such a fleet
on one machine, to find how many nodes one git server sustains at which
interval. Run as an ordinary user (nothing here needs privileges):

    .venv/bin/python bench/fleet_sim.py -n 2 --nodes 1 10 50 100 200

Set-up, in a temporary directory:

- The fleet repository: ``--squishfiles`` squishfiles under ``apps/`` (200 by
  default: busybox services, a quarter without network and the rest with one
  TCP forward, a quarter with a per-app config file as a single-file layer)
  and four small layer directories under ``layers/`` (a static site, worker
  scripts, an SDK, proxy configuration: 133 files, 480 kB) that they share,
  with ``--history`` commits behind it, packed (``git gc``) into a bare
  repository as a server keeps it.
- The git server (``--server``), serving that bare repository on 127.0.0.1:
  ``daemon`` (the default), ``git daemon --reuseaddr --base-path=...
  --export-all --listen=127.0.0.1 --port=...`` with ``--max-connections=0``
  (``--max-connections`` to change it); or ``socket-activated``, the same
  ``git-daemon --inetd`` started per connection by ``systemd-socket-activate
  --accept``, as a systemd socket unit with ``Accept=yes`` runs it. The
  difference that shows: git daemon listens with a queue of 5 connections,
  systemd with one of 4096.
- The nodes: ``max(--nodes)`` real ``GitSource`` objects, each with its own
  work directory (its bare clone) and its own ``LayerCache``, what a daemon
  owns per repository, all pointing at ``git://127.0.0.1:PORT/fleet.git``.
  A node's sync is ``GitSource.sync_now()``: ``git fetch --depth=1`` into its
  clone and, if the commit is new, the snapshot built from git objects (the
  squishfiles read and parsed, changed layers exported into its cache). The
  nodes live in one worker process per core (see "the nodes" below).

What it measures:

1. The first sync of every node at once: the shallow clone and the first
   build, as after a fleet-wide restart.
2. For each concurrency C of ``--nodes``, ``-n`` times, interleaved: a new
   commit (one squishfile's version bumped, one file of one layer changed,
   pushed into the bare repository), then a round in which nodes 0 to C-1
   sync at once (released together; ``--spread S``: each after a random
   delay of up to S seconds) and must each apply it, then a round in which
   the same nodes sync again with nothing new, the common case. Per node:
   the ``sync_now()`` latency (median, p90, max); per round: the time until
   all C are done. A sync whose connection the server's kernel reset or
   refused (its listen queue full) is counted as dropped, not timed, and done
   again after the round, unmeasured, as the node would at its next interval.
   The anchor, five times after each pair of rounds: the same no-change
   fetch as a bare ``git fetch`` command on a clone of its own, one at a
   time.
3. The CPU of each round. Server: utime + stime + cutime + cstime of the
   accepting process (``/proc/PID/stat``: git-daemon, or
   systemd-socket-activate) read once all its connection children have been
   reaped. Each connection is a child (``git-daemon --serve``, or
   ``git-daemon --inetd``) running ``git upload-pack`` and that ``git
   pack-objects``, each waiting for its children, so the cumulative children
   times hold every finished connection's whole tree. They are counted in
   10 ms clock ticks: a round of one fetch is ±10 ms, the totals over many
   are exact. Nodes, per worker: ``RUSAGE_CHILDREN`` (the git processes
   ``sync_now`` runs and reaps: fetch, index-pack, rev-parse, ls-tree,
   cat-file, archive) and ``RUSAGE_SELF`` (the Python side: watching git,
   parsing squishfiles, unpacking layers). Divided by the syncs that
   succeeded: CPU per sync.

From the server's CPU per no-change fetch (the larger of the nodes' rounds
and the anchor's) it derives the fleet one server core sustains:
``interval / (server CPU s per fetch)`` nodes at 10, 30 and 60 s, and at
300 s, an interval a webhook allows: a webhook makes every node sync right
after a push, and the interval only bounds how stale a node gets if a
webhook is lost. A push then costs the
server ``nodes x (CPU per changed fetch)`` at once.

This is one 2-core machine playing the server and the whole fleet: the
nodes' work (above all building snapshots after a commit, about 0.25 s of
CPU each) competes with the server's for the same cores, so latencies under
load are far above what one server with a real fleet would see; the CPU per
fetch, which decides capacity, does not depend on who else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from stats import median_p90

from squish.layers.cache import LayerCache
from squish.sources.git import FETCH_OPTIONS, GitSource

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_NODES = (1, 10, 50, 100, 200)
INTERVALS = (10.0, 30.0, 60.0)
WEBHOOK_INTERVAL = 300.0
ANCHOR_FETCHES = 5  # bare fetches after each pair of rounds
RETRY_SPACING = 0.05  # seconds between the dropped nodes' second tries, on average
REPO = "fleet.git"
BRANCH = "main"
APPS = "apps"
LAYERS = ("web", "worker", "sdk", "proxy")

# Commits are made with a fixed identity and no user configuration, so the
# script runs the same under any HOME.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "fleet",
    "GIT_AUTHOR_EMAIL": "fleet@example.invalid",
    "GIT_COMMITTER_NAME": "fleet",
    "GIT_COMMITTER_EMAIL": "fleet@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


# -- the fleet repository -----------------------------------------------------


def squishfile(index: int, version: int) -> str:
    """App ``index``: a busybox service on one of the shared layers."""
    layer = LAYERS[index % len(LAYERS)]
    lines = [f"# app {index:04d}, generated by bench/fleet_sim.py"]
    kind = index % 4
    if kind == 1:
        lines.append('network = "none"')
    lines += ["", "[layers]", 'base = "busybox"', f'{layer} = "../layers/{layer}"']
    if kind == 2:
        lines.append(
            f'conf = {{ path = "../config/app-{index:04d}.conf", target = "/etc/app.conf" }}'
        )
    lines += [
        "",
        "[run]",
        'command = "/bin/sh"',
        f'args = ["-c", "exec httpd -f -p 8080 -h /app/{layer}"]',
        "",
        "[env]",
        f'APP = "app-{index:04d}"',
        f'VERSION = "1.{version}.{index}"',
        'LOG_LEVEL = "info"',
    ]
    if kind != 1:
        lines += ["", "[[ports]]", "container = 8080", f"host = {20000 + index}"]
    lines += ["", "[restart]", 'policy = "always"', ""]
    return "\n".join(lines)


def layer_files(layer: str) -> dict[str, bytes]:
    """The files of one shared layer directory: small, text, a few dozen each."""
    filler = b"# " + b"configuration and code of a small service " * 40 + b"\n"
    files: dict[str, bytes] = {}
    if layer == "web":
        for page in range(30):
            files[f"page-{page:02d}.html"] = b"<html><body>" + filler * 2 + b"</body></html>\n"
        files["style.css"] = filler * 4
        files["version.txt"] = b"0\n"
    elif layer == "worker":
        for script in range(20):
            files[f"bin/job-{script:02d}.sh"] = b"#!/bin/sh\n" + filler
    elif layer == "sdk":
        for module in range(60):
            files[f"lib/module_{module:02d}.py"] = filler * 3
        files["bin/render"] = b"#!/bin/sh\necho hello\n"
    else:
        for site in range(20):
            files[f"sites/site-{site:02d}.conf"] = filler
    return files


@dataclass
class FleetRepo:
    """The fleet's repository: a work tree (where commits are made) and the bare
    repository the git server serves (where they are pushed)."""

    work: Path
    bare: Path
    squishfiles: int
    bumps: int = 0

    @classmethod
    def create(cls, root: Path, squishfiles: int, history: int) -> FleetRepo:
        work, bare = root / "work", root / "server" / REPO
        work.mkdir(parents=True)
        (work / APPS).mkdir()
        (work / "config").mkdir()
        for index in range(squishfiles):
            (work / APPS / f"app-{index:04d}.toml").write_text(squishfile(index, 0))
            if index % 4 == 2:
                (work / "config" / f"app-{index:04d}.conf").write_text(f"app = {index}\n")
        for layer in LAYERS:
            for name, data in layer_files(layer).items():
                target = work / "layers" / layer / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        git("init", "--quiet", f"--initial-branch={BRANCH}", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", "the fleet", cwd=work)
        repo = cls(work, bare, squishfiles)
        for _ in range(history):
            repo.bump(push=False)
        git("clone", "--quiet", "--bare", str(work), str(bare), cwd=root)
        git("gc", "--quiet", cwd=bare)
        git("remote", "add", "origin", str(bare), cwd=work)
        return repo

    def bump(self, *, push: bool = True) -> str:
        """A commit as a deploy makes one: an app's version and a web file changed."""
        self.bumps += 1
        index = (self.bumps * 7) % self.squishfiles
        (self.work / APPS / f"app-{index:04d}.toml").write_text(squishfile(index, self.bumps))
        (self.work / "layers" / "web" / "version.txt").write_text(f"{self.bumps}\n")
        git("commit", "--quiet", "-am", f"app-{index:04d}: 1.{self.bumps}", cwd=self.work)
        if push:
            git("push", "--quiet", "origin", BRANCH, cwd=self.work)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)


# -- the git server -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GitServer:
    """The git server on 127.0.0.1 serving ``base``; its CPU, children included.

    ``daemon``: ``git daemon --listen``, one process accepting connections
    and forking a child per connection; it listens with a queue of 5.
    ``socket-activated``: ``systemd-socket-activate --accept --inetd`` running
    ``git-daemon --inetd`` per connection, as a systemd socket unit with
    ``Accept=yes`` would; it listens with a queue of SOMAXCONN (4096).
    """

    KINDS = ("daemon", "socket-activated")

    def __init__(self, kind: str, base: Path, log: Path, max_connections: int | None) -> None:
        self.kind = kind
        self.port = free_port()
        self.log = log
        serve = ["--reuseaddr", f"--base-path={base}", "--export-all"]
        if kind == "daemon":
            argv = ["git", "daemon", *serve, "--listen=127.0.0.1", f"--port={self.port}"]
            if max_connections is not None:
                argv.append(f"--max-connections={max_connections}")
        else:
            # git-daemon itself, as distributions' git-daemon@.service runs it:
            # ``git daemon`` would add a git process waiting for it.
            program = Path(git("--exec-path", cwd=base)) / "git-daemon"
            argv = [
                "systemd-socket-activate",
                f"--listen=127.0.0.1:{self.port}",
                "--accept",
                "--inetd",
                str(program),
                "--inetd",
                *serve,
            ]
        # Its messages go to a file: a pipe nobody reads while it runs would
        # fill up and stop the server.
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **_GIT_ENV},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:
            self.pid = self._server_pid()
            deadline = time.monotonic() + 10
            # Waiting for the listening socket rather than connecting to it:
            # a probe connection would be a client that hangs up unannounced.
            while not self.listening():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not listen on {self.port}")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def _server_pid(self, timeout: float = 10.0) -> int:
        """The accepting process: ``git`` runs git-daemon as its child, and waits."""
        started = self.process.pid
        if self.kind != "daemon":
            return started
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{started}/comm").read_text().strip() == "git-daemon":
                    return started
                for child in Path(f"/proc/{started}/task/{started}/children").read_text().split():
                    if Path(f"/proc/{child}/comm").read_text().strip() == "git-daemon":
                        return int(child)
            time.sleep(0.01)
        raise RuntimeError("git daemon did not start")

    def listening(self) -> bool:
        """Whether a socket listens on 127.0.0.1:port (``/proc/net/tcp``)."""
        local = f"0100007F:{self.port:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # TCP_LISTEN
                return True
        return False

    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/{REPO}"

    def children(self) -> list[str]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return path.read_text().split()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until every connection's child has exited and been reaped."""
        deadline = time.monotonic() + timeout
        while self.children():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the git server still has children {self.children()}")
            time.sleep(0.005)

    def cpu_seconds(self) -> float:
        """The server's own CPU plus that of every reaped connection (cumulative)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the comm: state is index 0; utime, stime, cutime, cstime 11..14.
        return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS

    def stop(self) -> list[str]:
        """SIGTERM to the process started here (``git`` passes it on); its last words."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        lines = self.log.read_text(errors="replace").splitlines()
        if self.kind != "daemon":
            # systemd-socket-activate narrates every connection.
            lines = [line for line in lines if "rror" in line or "fatal" in line]
        return lines[-10:]


# -- the nodes ----------------------------------------------------------------
#
# The nodes live in worker processes, one per core, each owning every
# W-th node: building a snapshot is mostly Python (reading and parsing the
# squishfiles), and one process would run the builds of all nodes on one
# core, under one GIL. Inside a worker each syncing node is a thread, as a
# daemon runs its source's sync in a worker thread.


def node_home(root: Path, index: int) -> Path:
    return root / f"node-{index:03d}"


def client_cpu() -> tuple[float, float]:
    """(git processes reaped by this process, this process): CPU seconds so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime, own.ru_utime + own.ru_stime


# What git says when the server's kernel dropped or reset the connection (a
# full listen queue), as opposed to a fetch that failed on its merits.
DROPPED = ("Connection reset by peer", "Connection refused", "remote end hung up")


@dataclass(frozen=True)
class Outcome:
    """One node's sync: how long it took and, if it failed, why."""

    index: int
    latency: float
    error: str | None = None

    @property
    def dropped(self) -> bool:
        return self.error is not None and any(reason in self.error for reason in DROPPED)


class Node:
    """One simulated host: its git source, with its own clone and layer cache."""

    def __init__(self, url: str, root: Path, index: int, squishfiles: int) -> None:
        self.index = index
        self.squishfiles = squishfiles
        self.source = GitSource(
            url,
            ref=BRANCH,
            path=APPS,
            work_dir=node_home(root, index) / "git",
            cache=LayerCache(node_home(root, index) / "cache"),
            name="fleet",
        )

    def sync(self, expected: str, gate: threading.Barrier, delay: float) -> Outcome:
        """``delay`` seconds after ``gate`` opens, one sync; checks what it applied.

        Wrong: an error, another commit applied than ``expected``, or not
        every squishfile in the snapshot and valid.
        """
        gate.wait()
        time.sleep(delay)
        started = time.perf_counter()
        status = self.source.sync_now()
        latency = time.perf_counter() - started
        snapshot = self.source.snapshot()
        broken = [str(m.error) for m in snapshot.values() if m.error is not None]
        if status.error is not None:
            return Outcome(self.index, latency, status.error)
        if status.applied_revision != expected:
            return Outcome(
                self.index, latency, f"applied {status.applied_revision}, not {expected}"
            )
        if broken or len(snapshot) != self.squishfiles:
            return Outcome(self.index, latency, f"{len(snapshot)} manifests, errors {broken[:2]}")
        return Outcome(self.index, latency)


def serve_nodes(
    conn: Connection, url: str, root: Path, indices: list[int], squishfiles: int
) -> None:
    """A worker: the nodes ``indices``, syncing when told to.

    Takes ``(indices, expected commit, spread)``, starts a thread per node
    held at a barrier, answers "ready", and on "go" lets them all sync (each
    after a random delay up to ``spread`` seconds); answers with each node's
    ``Outcome``, the wall time and the CPU used. ``None`` ends it.
    """
    # A dropped connection is a failed sync, which the source logs as a
    # warning; the rounds count them, the terminal need not show each one.
    logging.getLogger("squish").addHandler(logging.NullHandler())
    nodes = {index: Node(url, root, index, squishfiles) for index in indices}
    delays = random.Random(indices[0] if indices else 0)  # noqa: S311 - delays, not secrets
    while (order := conn.recv()) is not None:
        chosen, expected, spread = order
        gate = threading.Barrier(len(chosen) + 1)
        with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
            futures = [
                pool.submit(nodes[index].sync, expected, gate, delays.uniform(0, spread))
                for index in chosen
            ]
            conn.send("ready")
            conn.recv()
            git_before, python_before = client_cpu()
            started = time.perf_counter()
            gate.wait()
            outcomes = [future.result() for future in futures]
            all_synced = time.perf_counter() - started
            git_after, python_after = client_cpu()
        conn.send(
            {
                "outcomes": outcomes,
                "all_synced_s": all_synced,
                "git_cpu_s": git_after - git_before,
                "python_cpu_s": python_after - python_before,
            }
        )


@dataclass
class Round:
    """One round: ``nodes`` nodes syncing at once."""

    kind: str  # "first", "no-change", "change" or "git fetch"
    nodes: int
    outcomes: list[Outcome]
    all_synced_s: float
    server_cpu_s: float
    git_cpu_s: float
    python_cpu_s: float
    retried: int = 0  # dropped syncs done again after the round, unmeasured
    retry_s: float = 0.0  # how long that took

    @property
    def synced(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.error is None]

    @property
    def dropped(self) -> int:
        return sum(outcome.dropped for outcome in self.outcomes)

    @property
    def errors(self) -> list[str]:
        return [
            f"node {outcome.index}: {outcome.error}"
            for outcome in self.outcomes
            if outcome.error is not None and not outcome.dropped
        ]


class Fleet:
    """The worker processes and which nodes each owns."""

    def __init__(self, url: str, root: Path, count: int, squishfiles: int, spread: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.spread = spread
        self.workers = max(1, min(os.cpu_count() or 1, count))
        self.conns: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for worker in range(self.workers):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=serve_nodes,
                args=(theirs, url, root, list(range(worker, count, self.workers)), squishfiles),
                name=f"fleet-nodes-{worker}",
            )
            process.start()
            theirs.close()
            self.conns.append(mine)
            self.processes.append(process)

    def sync(self, kind: str, count: int, server: GitServer, expected: str) -> Round:
        """Nodes 0 to ``count - 1`` sync at once; each must apply ``expected``.

        A node whose connection the server dropped syncs again afterwards,
        unmeasured and spread out in time, as it would at its next interval:
        every node starts the next round at the commit it is meant to have.
        """
        server.wait_idle()
        server_before = server.cpu_seconds()
        answers, all_synced = self._round(range(count), expected, self.spread)
        server.wait_idle()
        measured = Round(
            kind=kind,
            nodes=count,
            outcomes=[outcome for answer in answers for outcome in answer["outcomes"]],
            all_synced_s=all_synced,
            server_cpu_s=server.cpu_seconds() - server_before,
            git_cpu_s=sum(answer["git_cpu_s"] for answer in answers),
            python_cpu_s=sum(answer["python_cpu_s"] for answer in answers),
        )
        behind = [outcome.index for outcome in measured.outcomes if outcome.dropped]
        started = time.perf_counter()
        for _attempt in range(20):
            if not behind:
                break
            measured.retried += len(behind)
            answers, _ = self._round(behind, expected, RETRY_SPACING * len(behind))
            behind = [o.index for answer in answers for o in answer["outcomes"] if o.error]
        if behind:
            raise RuntimeError(f"nodes {behind} could not sync {expected} in 20 attempts")
        measured.retry_s = time.perf_counter() - started
        server.wait_idle()
        return measured

    def _round(
        self, indices: Sequence[int], expected: str, spread: float
    ) -> tuple[list[dict[str, Any]], float]:
        orders: dict[int, list[int]] = {}
        for index in indices:
            orders.setdefault(index % self.workers, []).append(index)
        for worker, chosen in orders.items():
            self.conns[worker].send((chosen, expected, spread))
        for worker in orders:
            if self.conns[worker].recv() != "ready":
                raise RuntimeError(f"node worker {worker} is not ready")
        started = time.perf_counter()
        for worker in orders:
            self.conns[worker].send("go")
        answers = [self.conns[worker].recv() for worker in orders]
        return answers, time.perf_counter() - started

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()


class PlainClone:
    """The anchor: the fetch a git source runs, as a bare ``git fetch``, timed alone.

    Its own bare clone; the command line of ``GitSource``'s fetch (the URL in
    argv here, where squish passes it through the environment).
    """

    def __init__(self, root: Path, url: str) -> None:
        self.repo = root / "anchor.git"
        self.url = url
        git("init", "--quiet", "--bare", str(self.repo), cwd=root)

    def fetch(self) -> None:
        git(
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "transfer.fsckObjects=true",
            "--git-dir",
            str(self.repo),
            "fetch",
            *FETCH_OPTIONS,
            self.url,
            f"+{BRANCH}:refs/squish/fetched",
            cwd=self.repo,
        )

    def timed(self, server: GitServer) -> Round:
        """One fetch with nothing new (call ``fetch`` first after a commit)."""
        server.wait_idle()
        server_before, (git_before, _) = server.cpu_seconds(), client_cpu()
        started = time.perf_counter()
        self.fetch()
        latency = time.perf_counter() - started
        git_after, _ = client_cpu()
        server.wait_idle()
        return Round(
            kind="git fetch",
            nodes=1,
            outcomes=[Outcome(0, latency)],
            all_synced_s=latency,
            server_cpu_s=server.cpu_seconds() - server_before,
            git_cpu_s=git_after - git_before,
            python_cpu_s=0.0,
        )


# -- figures ------------------------------------------------------------------


def directory_bytes(root: Path) -> int:
    return sum(
        os.lstat(os.path.join(dirpath, name)).st_size
        for dirpath, _dirs, names in os.walk(root)
        for name in names
    )


def summarise(rounds: list[Round]) -> dict[str, Any]:
    """The rounds of one kind and concurrency: latencies and CPU per sync.

    Latencies are those of the syncs that succeeded; CPU is divided by them
    too (a dropped attempt costs the server nothing it accounts, the node a
    git start).
    """
    latencies = [outcome.latency for r in rounds for outcome in r.synced]
    synced = len(latencies)
    median, p90 = median_p90(latencies) if latencies else (float("nan"), float("nan"))
    server = sum(r.server_cpu_s for r in rounds)
    git_cpu = sum(r.git_cpu_s for r in rounds)
    python_cpu = sum(r.python_cpu_s for r in rounds)
    per = 1e3 / max(synced, 1)
    return {
        "kind": rounds[0].kind,
        "nodes": rounds[0].nodes,
        "rounds": len(rounds),
        "syncs": sum(r.nodes for r in rounds),
        "synced": synced,
        "dropped": sum(r.dropped for r in rounds),
        "median_ms": round(median * 1e3, 1),
        "p90_ms": round(p90 * 1e3, 1),
        "max_ms": round(max(latencies, default=float("nan")) * 1e3, 1),
        "all_synced_s": round(statistics.median(r.all_synced_s for r in rounds), 3),
        "retried": sum(r.retried for r in rounds),
        "retry_s": round(sum(r.retry_s for r in rounds), 2),
        "server_cpu_s": round(server, 3),
        "node_cpu_s": round(git_cpu + python_cpu, 3),
        "server_cpu_ms_per_sync": round(server * per, 2),
        "node_cpu_ms_per_sync": round((git_cpu + python_cpu) * per, 2),
        "node_git_cpu_ms_per_sync": round(git_cpu * per, 2),
        "node_python_cpu_ms_per_sync": round(python_cpu * per, 2),
        "errors": [error for r in rounds for error in r.errors][:10],
        "error_count": sum(len(r.errors) for r in rounds),
    }


def capacity(rows: list[dict[str, Any]], kind: str) -> tuple[float, float]:
    """Server and node CPU seconds per sync of ``kind``, over the rounds of it.

    The server's: its CPU over all rounds divided by all syncs, so the 10 ms
    clock ticks average out. The node's: over the rounds of at most 10 nodes
    at once (or the smallest); in larger ones each worker process juggles
    dozens of threads contending for one GIL, and retries failed attempts,
    which a node syncing alone does not.
    """
    chosen = [row for row in rows if row["kind"] == kind]
    server = sum(row["server_cpu_s"] for row in chosen) / sum(row["synced"] for row in chosen)
    smallest = min(row["nodes"] for row in chosen)
    clean = [row for row in chosen if row["nodes"] <= max(10, smallest)]
    node = sum(row["node_cpu_s"] for row in clean) / sum(row["synced"] for row in clean)
    return server, node


def derive(rows: list[dict[str, Any]], anchor: dict[str, Any]) -> dict[str, Any]:
    """Fleet sizes from CPU per sync: what one server core sustains at each interval.

    The server's CPU per no-change fetch is the larger of the nodes' rounds
    and the anchor's: fetches arriving one at a time (the anchor) cost it a
    little more than fetches in a burst, and a fleet's fetches arrive spread
    over its interval.
    """
    server_burst, node_idle = capacity(rows, "no-change")
    server_alone = anchor["server_cpu_s"] / anchor["synced"]
    server_idle = max(server_burst, server_alone)
    server_change, node_change = capacity(rows, "change")
    at: dict[str, Any] = {}
    for interval in (*INTERVALS, WEBHOOK_INTERVAL):
        at[f"{interval:g}"] = {
            "nodes_per_server_core": int(interval / server_idle),
            "server_fetches_per_s_per_1000_nodes": round(1000 / interval, 1),
            "server_core_pct_per_1000_nodes": round(100 * 1000 * server_idle / interval, 2),
            "node_core_pct": round(100 * node_idle / interval, 4),
        }
    largest = max((row for row in rows if row["kind"] == "change"), key=lambda row: row["nodes"])
    return {
        "server_cpu_ms_per_nochange_fetch": round(server_idle * 1e3, 2),
        "server_cpu_ms_per_nochange_fetch_in_bursts": round(server_burst * 1e3, 2),
        "server_cpu_ms_per_nochange_fetch_alone": round(server_alone * 1e3, 2),
        "server_cpu_ms_per_change_fetch": round(server_change * 1e3, 2),
        "node_cpu_ms_per_nochange_sync": round(node_idle * 1e3, 2),
        "node_cpu_ms_per_change_sync": round(node_change * 1e3, 2),
        "at_interval_s": at,
        "push_server_cpu_s_per_1000_nodes": round(1000 * server_change, 2),
        "largest_change_round": {
            key: largest[key] for key in ("nodes", "all_synced_s", "dropped", "syncs")
        },
    }


# -- the run ------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    levels = sorted(set(args.nodes))
    repo = FleetRepo.create(root / "repo", args.squishfiles, args.history)
    server = GitServer(args.server, repo.bare.parent, root / "server.log", args.max_connections)
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "git": git("--version", cwd=root),
        "squishfiles": args.squishfiles,
        "history": args.history,
        "repo_bytes_packed": directory_bytes(repo.bare),
        "server": args.server,
        "max_connections": args.max_connections,
        "spread_s": args.spread,
    }
    try:
        fleet = Fleet(server.url(), root / "nodes", max(levels), args.squishfiles, args.spread)
        try:
            result.update(
                measure(
                    args, levels=levels, repo=repo, server=server, fleet=fleet, nodes=root / "nodes"
                )
            )
        finally:
            fleet.close()
    finally:
        result["server_log"] = server.stop()
    return result


def measure(
    args: argparse.Namespace,
    *,
    levels: list[int],
    repo: FleetRepo,
    server: GitServer,
    fleet: Fleet,
    nodes: Path,
) -> dict[str, Any]:
    result: dict[str, Any] = {"node_workers": fleet.workers}
    head = repo.head()
    result["first_sync"] = summarise([fleet.sync("first", max(levels), server, head)])
    node = node_home(nodes, 0)
    result["clone_bytes"] = directory_bytes(node / "git")
    result["cache_bytes"] = directory_bytes(node / "cache")
    rounds: dict[tuple[str, int], list[Round]] = {}
    anchor = PlainClone(nodes, server.url())
    for _ in range(args.n):
        for level in levels:
            # A new commit first, then the same nodes again with nothing
            # new: each node of the second round is at the server's head.
            head = repo.bump()
            for kind in ("change", "no-change"):
                rounds.setdefault((kind, level), []).append(fleet.sync(kind, level, server, head))
            anchor.fetch()
            for _ in range(ANCHOR_FETCHES):
                rounds.setdefault(("git fetch", 1), []).append(anchor.timed(server))
    result["rows"] = [
        summarise(rounds[(kind, level)]) for kind in ("no-change", "change") for level in levels
    ]
    result["anchor"] = summarise(rounds[("git fetch", 1)])
    result["clone_bytes_after"] = directory_bytes(node / "git")
    result["commits_fetched_by_node_0"] = args.n * len(levels)
    result["derived"] = derive(result["rows"], result["anchor"])
    return result


def report(result: dict[str, Any]) -> None:
    spread = f", each node after 0 to {result['spread_s']:g} s" if result["spread_s"] else ""
    print(
        f"server: {result['server']}; {result['git']}, {result['cores']} cores, nodes in "
        f"{result['node_workers']} worker "
        f"processes; repository: {result['squishfiles']} squishfiles, {len(LAYERS)} layer "
        f"directories, {result['history']} commits of history, "
        f"{result['repo_bytes_packed'] / 1e3:.0f} kB packed on the server"
    )
    first = result["first_sync"]
    print(
        f"first sync (shallow clone + build), {first['nodes']} nodes at once{spread}: "
        f"median {first['median_ms']:.0f} ms, p90 {first['p90_ms']:.0f} ms, all in "
        f"{first['all_synced_s']:.2f} s, {first['dropped']} dropped; per clone: server "
        f"{first['server_cpu_ms_per_sync']:.1f} ms CPU, node {first['node_cpu_ms_per_sync']:.0f} ms"
    )
    for error in first["errors"][:3]:
        print(f"  {error}")
    print(
        f"a node's clone: {result['clone_bytes'] / 1e3:.0f} kB, "
        f"{result['clone_bytes_after'] / 1e3:.0f} kB after "
        f"{result['commits_fetched_by_node_0']} new commits; its layer cache "
        f"{result['cache_bytes'] / 1e3:.0f} kB"
    )
    print()
    print(
        f"{'sync':<10} {'at once':>7} {'synced':>9} {'dropped':>7} {'median':>9} {'p90':>9} "
        f"{'max':>9} {'all done':>8} {'server CPU':>10} {'node CPU':>9} {'(git':>8} "
        f"{'+ python)':>9}"
    )
    for row in [*result["rows"], result["anchor"]]:
        print(
            f"{row['kind']:<10} {row['nodes']:>7} {row['synced']:>4}/{row['syncs']:<4} "
            f"{row['dropped']:>7} {row['median_ms']:>6.1f} ms {row['p90_ms']:>6.1f} ms "
            f"{row['max_ms']:>6.0f} ms "
            f"{row['all_synced_s']:>6.2f} s {row['server_cpu_ms_per_sync']:>7.2f} ms "
            f"{row['node_cpu_ms_per_sync']:>6.1f} ms {row['node_git_cpu_ms_per_sync']:>5.1f} ms "
            f"{row['node_python_cpu_ms_per_sync']:>6.1f} ms"
            + (f"  {row['error_count']} errors" if row["error_count"] else "")
        )
        for error in row["errors"][:3]:
            print(f"  {error}")
    print(
        "dropped: connection reset or refused by the server's kernel, its listen queue full "
        "(git daemon's holds 5); the node syncs again at its next interval. CPU per sync that "
        "succeeded; the server's is counted in 10 ms ticks, exact only over many syncs. "
        "git fetch: the anchor, the same fetch as a bare command"
    )
    derived = result["derived"]
    print()
    print(
        f"server CPU per fetch with nothing new: {derived['server_cpu_ms_per_nochange_fetch']:.2f}"
        f" ms (in bursts {derived['server_cpu_ms_per_nochange_fetch_in_bursts']:.2f}, one at a "
        f"time {derived['server_cpu_ms_per_nochange_fetch_alone']:.2f}: the larger counts); with "
        f"a new commit {derived['server_cpu_ms_per_change_fetch']:.2f} ms. Node CPU per sync "
        f"(rounds of up to 10 nodes): {derived['node_cpu_ms_per_nochange_sync']:.1f} ms and "
        f"{derived['node_cpu_ms_per_change_sync']:.1f} ms"
    )
    print(
        f"{'interval':<16} {'nodes per server core':>21} {'server, 1000 nodes':>19} "
        f"{'node CPU':>10}"
    )
    for interval, row in derived["at_interval_s"].items():
        label = f"{interval} s" + (" (webhook)" if float(interval) == WEBHOOK_INTERVAL else "")
        print(
            f"{label:<16} {row['nodes_per_server_core']:>21} "
            f"{row['server_core_pct_per_1000_nodes']:>12.1f} % core "
            f"{row['node_core_pct']:>7.3f} % core"
        )
    largest = derived["largest_change_round"]
    print(
        f"a push: {derived['push_server_cpu_s_per_1000_nodes']:.1f} server CPU seconds per 1000 "
        f"nodes; {largest['nodes']} nodes woken at once here: all done in "
        f"{largest['all_synced_s']:.2f} s, {largest['dropped']} of {largest['syncs']} dropped "
        "over the rounds"
    )
    print(
        "one machine plays the server and the whole fleet: the nodes' work competes with the "
        "server's for its cores, so latencies under load are pessimistic; the CPU per fetch is "
        "what decides capacity"
    )
    for line in result["server_log"]:
        print(f"  git server: {line}")


def raise_nofile() -> None:
    # Each node in flight holds a few descriptors (git's stdout/stderr files,
    # its socket); 200 at once needs more than a soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2, help="rounds per concurrency and kind")
    parser.add_argument(
        "--nodes",
        type=int,
        nargs="+",
        default=list(DEFAULT_NODES),
        help="how many nodes sync at once, one round each (default: 1 10 50 100 200)",
    )
    parser.add_argument("--squishfiles", type=int, default=200, help="apps in the repository")
    parser.add_argument("--history", type=int, default=100, help="commits of history behind it")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="git daemon --max-connections (0: no limit; -1: git's default, 32)",
    )
    parser.add_argument(
        "--server",
        choices=GitServer.KINDS,
        default="daemon",
        help="git daemon --listen (default), or git-daemon --inetd behind systemd-socket-activate",
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=0.0,
        help="seconds over which the nodes of a round start, at random (0: all at once)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.max_connections < 0:
        args.max_connections = None
    if min(args.nodes) < 1 or args.n < 1 or args.spread < 0:
        parser.error("--nodes and -n must be at least 1, --spread not negative")
    if shutil.which("git") is None:
        sys.exit("git is not on PATH")
    if args.server == "socket-activated" and shutil.which("systemd-socket-activate") is None:
        sys.exit("systemd-socket-activate is not on PATH")
    raise_nofile()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="squish-bench-fleet-") as tmp:
        result = run(args, Path(tmp))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    rows = [result["first_sync"], result["anchor"], *result["rows"]]
    if any(row["error_count"] for row in rows):
        sys.exit("some syncs failed")


if __name__ == "__main__":
    main()
