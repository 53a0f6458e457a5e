"""The Prometheus exporter: what squish says about itself on ``/metrics``.

The daemon owns one ``Metrics`` and hands it to the reconciler, which counts
every reconcile and keeps the container and manifest gauges level with what it
just observed; the runtime side reports starts, restarts and the pid of each
container's process tree. ``serve()`` exposes it all over HTTP for Prometheus,
``exposition()`` gives the same text to the API and to tests. The daemon's own
process (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
``process_open_fds``, ...) is exported too, by prometheus_client's
``ProcessCollector``.

Everything lives in a private ``CollectorRegistry``, never prometheus_client's
global one, so two daemons (or two tests) in one process never share samples.

Following controller-runtime, every label value that is known up front (the
container states, the reconcile results, the manifest states) is exported at 0
from the start: a dashboard's ``rate()`` and an alert's ``absent()`` then work
before the first event instead of seeing a series appear out of nowhere. The
per-container counters (restarts, start failures) follow the same rule from
the container's first start: Prometheus' ``increase()`` only counts what
happens after the first sample it sees, so a series born at 1 would hide the
first restart. ``squish_container_state{container,state}`` is exported as
kube-state-metrics does its phases: one series per phase of
``squish.reconcile.status.Phase``, 1 for the current phase and 0 for the others, so
"not running" is a plain comparison in an alert.

The only labels beyond those fixed sets are ``container``, whose value is a
container name, and ``network``, a network's name (``squish_network_containers``,
read from the runtime at scrape time); nothing else a user wrote (env values,
paths) ever becomes a label.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from squish.errors import SquishError
from squish.reconcile.health import HEALTH_STATUSES
from squish.reconcile.status import Phase
from squish.runtime.kernel import Kernel, LinuxKernel
from squish.runtime.logs import DROP_REASONS, DropReason

CONTAINER_STATES = ("running", "stopped", "failed", "backoff")
RECONCILE_RESULTS = ("success", "error", "requeue")
RECONCILE_SCOPES = ("full", "names")
"""``full``: a round of every name (the resync); ``names``: of the names that changed."""
MANIFEST_STATES = ("valid", "invalid")
SYNC_RESULTS = ("success", "error", "held")
"""``held``: fetched, but not applied (the prune guard, or nothing valid)."""
LAYER_KINDS = ("alpine", "registry", "archive")
LAYER_RESULTS = ("success", "error")
CONTAINER_PHASES = tuple(phase.value for phase in Phase)
"""The ``state`` values of ``squish_container_state``, as ``squish ps -a`` shows them."""

# Starting a container is a fork/exec of bwrap plus a few mounts: around a few
# milliseconds when the layers are cached, seconds when something is slow.
START_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A reconcile plans (microseconds) and then waits for its actions, which may
# include stopping a container with its grace period; hence the longer tail.
RECONCILE_BUCKETS = (*START_BUCKETS, 30.0, 60.0)


class Metrics:
    """Every metric squish exports, in a registry of its own."""

    def __init__(self, *, version: str) -> None:
        self.registry = CollectorRegistry()
        build = Info("squish_build", "Version of the running squish.", registry=self.registry)
        build.info({"version": version})

        self._manifests = Gauge(
            "squish_manifests",
            "Squishfiles last seen by the sources, by whether they validated.",
            ["state"],
            registry=self.registry,
        )
        for state in MANIFEST_STATES:
            self._manifests.labels(state).set(0)

        self._containers = Gauge(
            "squish_containers",
            "Containers known to the runtime, by state.",
            ["state"],
            registry=self.registry,
        )
        for state in CONTAINER_STATES:
            self._containers.labels(state).set(0)

        self._reconcile_duration = Histogram(
            "squish_reconcile_duration_seconds",
            "Time one reconcile round took, from reading state to launching its actions; "
            "scope full (every name, the resync) or names (the names that changed).",
            ["scope"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        for scope in RECONCILE_SCOPES:
            self._reconcile_duration.labels(scope)
        self._reconciles = Counter(
            "squish_reconciles",
            "Reconciles finished, by outcome.",
            ["result"],
            registry=self.registry,
        )
        for result in RECONCILE_RESULTS:
            self._reconciles.labels(result)

        self._starts = Counter(
            "squish_container_starts", "Containers started.", registry=self.registry
        )
        self._start_duration = Histogram(
            "squish_container_start_duration_seconds",
            "Time from asking the runtime to start a container until it was running.",
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self._restarts = Counter(
            "squish_container_restarts",
            "Times a container was restarted after it exited or crashed.",
            ["container"],
            registry=self.registry,
        )

        self._start_failures = Counter(
            "squish_container_start_failures",
            "Starts that failed before the command ran (layers, ports, runtime), by container.",
            ["container"],
            registry=self.registry,
        )

        self._log_bytes = Counter(
            "squish_log_bytes",
            "Bytes of container output written into its log.",
            ["container"],
            registry=self.registry,
        )
        self._log_dropped = Counter(
            "squish_log_bytes_dropped",
            "Bytes of container output dropped instead of logged, by container and why: "
            "rate (over the log rate limit) or error (the write failed, e.g. a full disk).",
            ["container", "reason"],
            registry=self.registry,
        )

        self._layer_fetches = Counter(
            "squish_layer_fetches",
            "Layers downloaded, imported or unpacked into the cache, by kind and outcome.",
            ["kind", "result"],
            registry=self.registry,
        )
        for kind in LAYER_KINDS:
            for result in LAYER_RESULTS:
                self._layer_fetches.labels(kind, result)
        self._layer_bytes = Counter(
            "squish_layer_download_bytes",
            "Bytes downloaded for layers (Alpine mirror, layer registries).",
            registry=self.registry,
        )

        self._source_revision = Info(
            "squish_source_revision",
            "The revision each source last applied (a git commit).",
            ["source"],
            registry=self.registry,
        )
        self._source_syncs = Counter(
            "squish_source_syncs",
            "Source syncs (git fetches), by outcome.",
            ["source", "result"],
            registry=self.registry,
        )
        self._source_failing = Gauge(
            "squish_source_failing",
            "1 while a source cannot be read (its last good state stays in force), else 0.",
            ["source"],
            registry=self.registry,
        )
        self._source_last_sync = Gauge(
            "squish_source_last_sync_timestamp_seconds",
            "When each source last synced successfully (Unix time).",
            ["source"],
            registry=self.registry,
        )

        self._processes = _ContainerProcessCollector()
        self.registry.register(self._processes)
        self._networks = _NetworkCollector()
        self.registry.register(self._networks)
        self._phases = _ContainerPhaseCollector()
        self.registry.register(self._phases)
        self._health = Gauge(
            "squish_container_health",
            "Each container's health ([health] checks): 1 for the current status, 0 for the "
            "others; no series for a container without checks.",
            ["container", "status"],
            registry=self.registry,
        )
        self._health_checks = Histogram(
            "squish_health_check_duration_seconds",
            "Time one health check took, from spawning it into the container until it exited.",
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        # The daemon's own RSS, CPU and fds, read from /proc/self at scrape time.
        ProcessCollector(registry=self.registry)

    def set_manifests(self, *, valid: int, invalid: int) -> None:
        self._manifests.labels("valid").set(valid)
        self._manifests.labels("invalid").set(invalid)

    def set_containers(self, counts: Mapping[str, int]) -> None:
        """Set the per-state container gauge; a state not in ``counts`` is 0."""
        unknown = set(counts) - set(CONTAINER_STATES)
        if unknown:
            raise ValueError(
                f"unknown container state {sorted(unknown)!r}; "
                f"expected one of {', '.join(CONTAINER_STATES)}"
            )
        for state in CONTAINER_STATES:
            self._containers.labels(state).set(counts.get(state, 0))

    def observe_reconcile(self, seconds: float, result: str, *, full: bool) -> None:
        _check("reconcile result", result, RECONCILE_RESULTS)
        self._reconcile_duration.labels("full" if full else "names").observe(seconds)
        self._reconciles.labels(result).inc()

    def container_started(self, seconds: float) -> None:
        self._starts.inc()
        self._start_duration.observe(seconds)

    def set_container_phases(self, phases: Mapping[str, Phase]) -> None:
        """Set ``squish_container_state`` to exactly these containers and phases.

        A container not in ``phases`` loses its series: the mapping is the
        whole set of containers squish knows, as of one reconcile.
        """
        self._phases.replace(phases)

    def set_container_phase(self, name: str, phase: Phase) -> None:
        """Set one container's ``squish_container_state`` (the others stay as they are)."""
        self._phases.set(name, phase)

    def set_health(self, name: str, status: str) -> None:
        """Set ``name``'s ``squish_container_health``: 1 for ``status``, 0 for the others."""
        for each in HEALTH_STATUSES:
            self._health.labels(name, each).set(1 if each == status else 0)

    def observe_health_check(self, seconds: float) -> None:
        self._health_checks.observe(seconds)

    def container_seen(self, name: str) -> None:
        """Export ``name``'s restart and start-failure counters, at 0 if new."""
        # labels() creates a child at 0 and leaves an existing one alone.
        self._restarts.labels(name)
        self._start_failures.labels(name)
        self._log_bytes.labels(name)
        for reason in DROP_REASONS:
            self._log_dropped.labels(name, reason)

    def container_restarted(self, name: str) -> None:
        self._restarts.labels(name).inc()

    def container_start_failed(self, name: str) -> None:
        self._start_failures.labels(name).inc()

    def log_written(self, container: str, size: int) -> None:
        """Count ``size`` bytes of ``container``'s output written into its log."""
        self._log_bytes.labels(container).inc(size)

    def log_dropped(self, container: str, size: int, reason: DropReason) -> None:
        """Count ``size`` bytes of ``container``'s output dropped (``reason`` in DROP_REASONS)."""
        _check("log drop reason", reason, DROP_REASONS)
        self._log_dropped.labels(container, reason).inc(size)

    def layer_fetched(self, kind: str, result: str, *, downloaded: int = 0) -> None:
        """Count one layer fetch (``kind`` in LAYER_KINDS) and the bytes it downloaded."""
        _check("layer kind", kind, LAYER_KINDS)
        _check("layer result", result, LAYER_RESULTS)
        self._layer_fetches.labels(kind, result).inc()
        if downloaded:
            self._layer_bytes.inc(downloaded)

    def source_synced(
        self, source: str, result: str, *, revision: str | None = None, at: float | None = None
    ) -> None:
        """Record one sync of ``source``.

        ``revision`` is the revision now applied (None: unchanged); ``at`` the
        time of a successful sync (default: now, when ``result`` is success).
        """
        _check("sync result", result, SYNC_RESULTS)
        self._source_syncs.labels(source, result).inc()
        if revision is not None:
            self._source_revision.labels(source).info({"revision": revision})
        if result == "success":
            self._source_last_sync.labels(source).set(time.time() if at is None else at)

    def set_source_failing(self, source: str, failing: bool) -> None:
        self._source_failing.labels(source).set(1 if failing else 0)

    def count_networks(self, sizes: Callable[[], Mapping[str, int]]) -> None:
        """Export ``squish_network_containers`` from ``sizes()`` (the runtime's), at scrape time."""
        self._networks.sizes = sizes

    def track_process(self, name: str, pid: int) -> None:
        """Export CPU and memory of the process tree rooted at ``pid`` as ``name``.

        Replaces any pid tracked for ``name`` before (a restarted container).
        """
        self._processes.track(name, pid)

    def forget_container(self, name: str) -> None:
        """Drop every series labelled with this container (restarts, state, CPU, RSS)."""
        self._processes.forget(name)
        self._phases.forget(name)
        # remove() raises KeyError for a label set that never had a sample;
        # forgetting a container that never restarted is the common case.
        with contextlib.suppress(KeyError):
            self._restarts.remove(name)
        with contextlib.suppress(KeyError):
            self._start_failures.remove(name)
        with contextlib.suppress(KeyError):
            self._log_bytes.remove(name)
        for reason in DROP_REASONS:
            with contextlib.suppress(KeyError):
                self._log_dropped.remove(name, reason)
        for status in HEALTH_STATUSES:
            with contextlib.suppress(KeyError):
                self._health.remove(name, status)

    def exposition(self) -> bytes:
        """The current samples in Prometheus' text format (what a scrape gets)."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port`` from a thread; return its shutdown.

        prometheus_client's server answers the scrape on any path, ``/metrics``
        included. The returned function stops it and may be called twice.
        """
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise SquishError(f"metrics: cannot listen on {host}:{port}: {reason}") from exc

        lock = threading.Lock()
        stopped = False

        def shutdown() -> None:
            nonlocal stopped
            with lock:
                if stopped:
                    return
                stopped = True
            server.shutdown()
            server.server_close()
            thread.join()

        return shutdown


def _check(what: str, value: str, allowed: tuple[str, ...]) -> None:
    # Checked rather than passed through: a typo would otherwise quietly open
    # a new series that no dashboard or alert looks at.
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class _Tracked:
    pid: int
    # The kernel's start time of ``pid`` when it was tracked: if the process
    # exits and its pid is handed to an unrelated process, the start times
    # differ and we skip it instead of exporting a stranger's CPU and memory.
    start_ticks: int | None


class _ContainerPhaseCollector(Collector):
    """``squish_container_state``: one series per container and phase.

    A collector of its own rather than a ``Gauge``: a container's seven
    series change together, and with a gauge a scrape between two ``set()``
    calls could see a container in two phases, or in none.
    """

    def __init__(self) -> None:
        # replace()/forget() run on the daemon's thread, collect() on the
        # HTTP server's; collect() works on a copy taken under the lock.
        self._lock = threading.Lock()
        self._phases: dict[str, Phase] = {}

    def replace(self, phases: Mapping[str, Phase]) -> None:
        fresh = dict(phases)
        with self._lock:
            self._phases = fresh

    def set(self, name: str, phase: Phase) -> None:
        with self._lock:
            self._phases[name] = phase

    def forget(self, name: str) -> None:
        with self._lock:
            self._phases.pop(name, None)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            phases = dict(self._phases)
        for name, current in sorted(phases.items()):
            for phase in Phase:
                family.add_metric([name, phase.value], 1.0 if phase is current else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "squish_container_state",
            "Each container's state, as squish ps -a shows it: 1 for the current one, "
            "0 for the others.",
            labels=["container", "state"],
        )


class _NetworkCollector(Collector):
    """``squish_network_containers{network}``: the containers on each named network now."""

    def __init__(self) -> None:
        self.sizes: Callable[[], Mapping[str, int]] = dict

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for network, count in sorted(self.sizes().items()):
            family.add_metric([network], float(count))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "squish_network_containers",
            "Containers on each named network now (a network exists while it has some).",
            labels=["network"],
        )


class _ContainerProcessCollector(Collector):
    """CPU and RSS of each tracked container, read from ``/proc`` at scrape time.

    A container is a tree (bwrap, the sandbox's pid 1, the command and its
    children), so both are sums over the tracked pid and every descendant,
    found through the runtime's reader of children (``Kernel.children``).
    Reading at scrape time rather than on a timer means the numbers are as
    fresh as the scrape and cost nothing when nobody scrapes.
    """

    def __init__(self, kernel: Kernel | None = None) -> None:
        # The runtime's reader of a process's children (every thread's).
        self._kernel: Kernel = kernel if kernel is not None else LinuxKernel()
        # track()/forget() run on the daemon's thread, collect() on the HTTP
        # server's; collect() works on a copy taken under the lock.
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")

    def track(self, name: str, pid: int) -> None:
        with self._lock:
            known = self._tracked.get(name)
        # The reconciler re-tracks every running container each round. Keep
        # the start time first seen for a pid: re-reading it would accept a
        # stranger that inherited the pid after the container's process died.
        if known is not None and known.pid == pid:
            return
        stat = _read_stat(pid)
        tracked = _Tracked(pid, stat.start_ticks if stat else None)
        with self._lock:
            self._tracked[name] = tracked

    def forget(self, name: str) -> None:
        with self._lock:
            self._tracked.pop(name, None)

    def describe(self) -> Iterator[Metric]:
        # Names only, so that registering checks for clashes without the
        # registry calling collect() and reading /proc.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        cpu, rss = self._families()
        with self._lock:
            tracked = dict(self._tracked)
        for name, process in sorted(tracked.items()):
            usage = self._tree_usage(process)
            if usage is None:
                continue  # the container's process is gone: no sample, no error
            ticks, rss_bytes = usage
            cpu.add_metric([name], ticks / self._ticks_per_second)
            rss.add_metric([name], rss_bytes)
        yield cpu
        yield rss

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        cpu = CounterMetricFamily(
            "squish_container_cpu_seconds",
            "User and system CPU time of the container's processes, "
            "including their reaped children.",
            labels=["container"],
        )
        rss = GaugeMetricFamily(
            "squish_container_memory_rss_bytes",
            "Resident memory of the container's processes, summed (shared pages count once "
            "per process).",
            labels=["container"],
        )
        return cpu, rss

    def _tree_usage(self, root: _Tracked) -> tuple[int, int] | None:
        """CPU ticks and RSS bytes of ``root`` and its descendants, None if it is gone."""
        stat = _read_stat(root.pid)
        if stat is None or stat.start_ticks != root.start_ticks:
            return None
        # No double counting: a live child's time is only in its own stat and
        # moves into its parent's cutime/cstime when reaped, after which it
        # no longer shows up as a child. (An orphan adopted by a subreaper
        # outside the tree leaves it; the counter may then dip, which
        # Prometheus treats as a counter reset.)
        ticks = stat.ticks
        rss = _read_rss(root.pid)
        seen = {root.pid}
        pending = self._kernel.children(root.pid)
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            child = _read_stat(pid)
            if child is None:
                continue  # exited between listing and reading
            ticks += child.ticks
            rss += _read_rss(pid)
            pending.extend(self._kernel.children(pid))
        return ticks, rss


@dataclass(frozen=True)
class _Stat:
    ticks: int  # utime + stime + cutime + cstime
    start_ticks: int


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The comm field may itself contain spaces and ')', so split after the
    # last ')'. Then state is index 0, utime 11, stime 12, cutime 13,
    # cstime 14 and starttime 19 (proc(5) fields 3, 14-17 and 22).
    fields = text.rsplit(b")", 1)[1].split()
    return _Stat(
        ticks=sum(int(fields[i]) for i in (11, 12, 13, 14)),
        start_ticks=int(fields[19]),
    )


def _read_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0  # gone, or a zombie, which has no memory left
