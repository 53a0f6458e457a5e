"""The reconciler: keeps the running containers equal to the manifests.

Owned by the daemon, which gives it a source, a runtime and a layer store;
the daemon's control plane (``squish.daemon.control.DaemonControl``, which
the API serves) reads what it knows of each name (``phase``, ``statuses``,
``resolve``) and asks through a few verbs (``mark_stopped``,
``wanted_again``, ``trigger``, ``wait_for``). It is level-triggered, in the way
of controller-runtime and the kubelet, around a work queue keyed by name.
Every trigger (a manifest changed, a container exited, an action ended, a
back-off ran out, a user's request) puts its names in the queue,
deduplicated, and one loop takes the whole queue as one round: those names'
manifests (from a snapshot the sources answer from what they have read),
their containers, and the pure ``plan`` for those names only, so the cost
of an event does not grow with the number of containers held.
``trigger()`` without names, and the periodic resync, make a full round:
every manifest read again, every container listed, every name planned. A
missed trigger therefore costs at most one resync period, never an update.

A user's ``stop`` is remembered in ``stopped.json`` in the state directory
(written atomically whenever the set of stopped names changes), so the
container stays stopped across daemon restarts until ``start`` or an edit.

Actions run as tasks of the reconciler's task group, at most ``parallelism``
at once; a name with an action in flight is left alone by ``plan`` until the
action is done, so two actions never race on one container. Resolving layers
may block (building the base, downloads), so it runs in a worker
thread; starting the container itself happens in the loop's thread, as the
runtime requires.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from squish.broadcast import Broadcast
from squish.errors import (
    AmbiguousName,
    ContainerNotFound,
    RuntimeFailure,
    SquishError,
)
from squish.layers import LayerStore
from squish.model.manifest import Manifest
from squish.model.squishfile import Health, Squishfile
from squish.reconcile.dependencies import DependencyGraph
from squish.reconcile.health import CheckResult, HealthState, first_lines
from squish.reconcile.plan import Action, Backoff, Kind, Record, plan
from squish.reconcile.spec import container_spec
from squish.reconcile.status import ContainerStatus, Event, Phase
from squish.runtime import (
    DEFAULT_HOST_IP,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_GRACE,
    Container,
    ContainerSpec,
    ExecResult,
    ExitEvent,
    Probe,
    Runtime,
)
from squish.runtime.logs import remove_log
from squish.sources import Source, SourceStatus

log = logging.getLogger("squish.reconciler")

T = TypeVar("T")

# How long the log of a deleted container is kept (``squish logs`` still
# shows it meanwhile); a container of that name coming back keeps it.
LOG_GRACE = 3600.0


class ReconcileMetrics(Protocol):
    """What the reconciler tells its metrics (``squish.daemon.metrics.Metrics`` does it)."""

    def observe_reconcile(self, seconds: float, result: str, *, full: bool) -> None: ...

    def set_source_failing(self, source: str, failing: bool) -> None: ...

    def container_seen(self, name: str) -> None: ...

    def container_started(self, seconds: float) -> None: ...

    def container_restarted(self, name: str) -> None: ...

    def container_start_failed(self, name: str) -> None: ...

    def forget_container(self, name: str) -> None: ...

    def set_manifests(self, *, valid: int, invalid: int) -> None: ...

    def set_containers(self, counts: Mapping[str, int]) -> None: ...

    def set_container_phases(self, phases: Mapping[str, Phase]) -> None: ...

    def set_container_phase(self, name: str, phase: Phase) -> None: ...

    def track_process(self, name: str, pid: int) -> None: ...

    def set_health(self, name: str, status: str) -> None: ...

    def observe_health_check(self, seconds: float) -> None: ...


class Reconciler:
    def __init__(
        self,
        *,
        source: Source,
        runtime: Runtime,
        store: LayerStore,
        manifests_dir: Path,
        log_dir: Path,
        metrics: ReconcileMetrics | None = None,
        backoff: Backoff | None = None,
        resync: float = 5.0,
        parallelism: int = 8,
        stop_grace: float = DEFAULT_STOP_GRACE,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        resolve: Callable[[Squishfile, LayerStore], ContainerSpec] = container_spec,
        state_dir: Path | None = None,
        default_host_ip: str = DEFAULT_HOST_IP,
        log_grace: float = LOG_GRACE,
        source_statuses: Callable[[], Sequence[SourceStatus]] = list,
        on_running: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.source = source
        self.source_statuses = source_statuses
        """Where each source stands (``squish sources``): reported as events and metrics."""
        self.runtime = runtime
        self.store = store
        self.manifests_dir = manifests_dir
        self.log_dir = log_dir
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self.resync = resync
        self.stop_grace = stop_grace
        self.start_timeout = start_timeout
        self._resolve = resolve
        self._limiter = anyio.CapacityLimiter(parallelism)
        self.records: dict[str, Record] = {}
        self._desired: Mapping[str, Manifest] = {}
        self._snapshot: Mapping[str, Manifest] = {}
        """What the sources have, before the dependency cycles are made errors."""
        self._specs: dict[str, ContainerSpec] = {}
        self.about: dict[str, Any] = {}
        """More for ``status()``, set by whoever runs the reconciler (the node)."""
        self.running_names: frozenset[str] = frozenset()
        # Told the running names after each round (the prune guard's Running).
        self.on_running = on_running
        """Names running as of the last round; replaced whole, so any thread may read it."""
        self._wake = anyio.Event()
        self._queue: set[str] = set()
        """Names to reconcile in the next round."""
        self._full = False
        """Whether the next round is a full one (everything read again)."""
        self._timers: list[tuple[float, str]] = []
        """A heap of (back-off end, name): when to put each name in the queue again."""
        self._conflicted: set[str] = set()
        """Names refused a host port: planned again whenever a container lets ports go."""
        self._running_now: set[str] = set()
        self._phases: dict[str, Phase] = {}
        """Each name's phase as of its last round (the metrics)."""
        self._counts = dict.fromkeys(_STATE_NAMES, 0)
        """How many of ``_phases`` are in each state of ``squish_containers``."""
        self._changed = anyio.Event()
        self.events = Broadcast[Event]()
        """Every event, to whoever subscribes (the API's event streams)."""
        self._reported_errors: dict[str, str] = {}
        self._source_errors: dict[str, str] = {}
        self._rounds = 0
        self._tg: TaskGroup | None = None
        # The health of each name's current container (its [health] checks).
        self._health: dict[str, HealthState] = {}
        self._graph = DependencyGraph()
        """Who depends on whom ([depends_on]), and the cycles."""
        self._started = time.time()
        self.default_host_ip = default_host_ip
        self._stops_file = None if state_dir is None else state_dir / "stopped.json"
        self._start_errors: dict[str, SquishError] = {}
        self._saved_stops: dict[str, str | None] = {}
        self._stops_changed = False
        """Whether a stop was given, ended or forgotten since they were last saved."""
        self._pending_stops: dict[str, str | None] = {}
        self._load_stops()
        self.log_grace = log_grace
        self._doomed_logs: dict[str, object] = {}
        """Names whose log goes once ``log_grace`` has passed, each with its timer's token."""

    # -- the user's stops, kept across restarts ----------------------------

    def _load_stops(self) -> None:
        if self._stops_file is None:
            return
        try:
            data = json.loads(self._stops_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Unreadable or garbled: start everything rather than refuse to run.
            log.warning("ignoring %s: %s", self._stops_file, exc)
            return
        stops = data.get("stopped") if isinstance(data, dict) else None
        if not isinstance(stops, dict):
            log.warning("ignoring %s: no 'stopped' object in it", self._stops_file)
            return
        self._pending_stops = {
            name: spec_hash
            for name, spec_hash in stops.items()
            if isinstance(name, str) and (spec_hash is None or isinstance(spec_hash, str))
        }
        self._saved_stops = self._current_stops()

    def _apply_pending_stops(self) -> None:
        # A stop read from disk takes effect when its name is wanted again: a
        # git source may deliver its manifests only after a first fetch, and
        # a record made earlier would be forgotten as "manifest removed".
        for name in [name for name in self._pending_stops if name in self._desired]:
            spec_hash = self._pending_stops.pop(name)
            if name not in self.records:
                record = self.records[name] = Record(name)
                record.stopped_by_user = True
                record.stopped_hash = spec_hash

    def _current_stops(self) -> dict[str, str | None]:
        stops = dict(self._pending_stops)
        for name, record in self.records.items():
            if record.stopped_by_user:
                stops[name] = record.stopped_hash
        return stops

    def save_stops(self) -> None:
        """Write the stopped names if they changed; atomically (a rename)."""
        if not self._stops_changed:
            return
        stops = self._current_stops()
        if self._stops_file is None or stops == self._saved_stops:
            return
        temporary = self._stops_file.with_name(f".{self._stops_file.name}.{os.getpid()}.tmp")
        try:
            self._stops_file.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w") as file:
                json.dump({"stopped": stops}, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            temporary.rename(self._stops_file)
        except OSError as exc:
            # A full disk must not stop the daemon; the stop holds until it
            # restarts, and the next change tries again.
            log.warning("cannot save the stopped containers to %s: %s", self._stops_file, exc)
            temporary.unlink(missing_ok=True)
            return
        self._saved_stops = stops
        self._stops_changed = False

    # -- the loop ------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.reconcile_once()
            self._doom_orphan_logs()
            # The source is a service of this loop: its changes trigger rounds.
            await tg.start(self.source.run, self.trigger)
            tg.start_soon(self._watch_exits)
            tg.start_soon(self._loop)
            task_status.started()

    def trigger(self, names: Collection[str] | None = None, /) -> None:
        """Reconcile ``names`` soon; without names, a full round (everything read again)."""
        if names is None:
            self._full = True
        else:
            self._queue.update(names)
        self._wake.set()

    async def _loop(self) -> None:
        next_resync = time.monotonic() + self.resync
        while True:
            with anyio.move_on_after(self._next_wake(next_resync)):
                await self._wake.wait()
            self._wake = anyio.Event()
            self._queue_backoffs_ended()
            if self._full or time.monotonic() >= next_resync:
                self._full = False
                self._queue.clear()
                self.reconcile_once()
                next_resync = time.monotonic() + self.resync
            elif self._queue:
                names, self._queue = self._queue, set()
                self.reconcile_names(names)

    def _next_wake(self, next_resync: float) -> float:
        """Seconds until the next resync or the next restart out of back-off."""
        wake = next_resync - time.monotonic()
        if self._timers:
            wake = min(wake, self._timers[0][0] - time.time() + 0.001)
        return max(wake, 0.0)

    def _crashed(self, record: Record, exit_code: int, reason: str) -> None:
        """Count a crash of ``record``'s container and back off its restart."""
        now = time.time()
        ran_for = now - (record.started_at or now)
        if ran_for >= self.backoff.reset_after:
            record.crashes = 0
        record.crashes += 1
        record.exit_code = exit_code
        record.exited_hash = record.applied.spec_hash() if record.applied else None
        record.exit_reason = reason
        self._back_off(record, now + self.backoff.delay(record.crashes))

    def _back_off(self, record: Record, until: float) -> None:
        record.backoff_until = until
        heapq.heappush(self._timers, (until, record.name))

    def _queue_backoffs_ended(self) -> None:
        now = time.time()
        while self._timers and self._timers[0][0] <= now:
            self._queue.add(heapq.heappop(self._timers)[1])

    async def _watch_exits(self) -> None:
        with self.runtime.subscribe() as exits:
            async for event in exits:
                self._on_exit(event)
                self.trigger({event.name, *self._conflicted})

    def reconcile_once(self) -> None:
        """A full round (the resync): every manifest read again, every name planned."""
        self._round(None)

    def reconcile_names(self, names: Collection[str]) -> None:
        """A round of ``names`` only, from what the sources have read."""
        self._round(set(names))

    def _round(self, names: set[str] | None) -> None:
        started = time.perf_counter()
        result = "success"
        full = names is None
        try:
            self._snapshot = snapshot = self.source.snapshot(rescan=full)
            recycled = self._graph.update(snapshot, names)
            self._desired = self._graph.view(snapshot)
            self._rounds += 1
            self._note_sources()
            self._apply_pending_stops()
            if names is None:
                names = set(self._desired) | set(self.records) | set(self._reported_errors)
            else:
                # A change of a name is a change for whoever waits for it.
                names |= recycled
                for name in list(names):
                    names.update(self._graph.dependents(name))
            running = self.runtime.ids()
            self._note_manifests(names, running)
            now = time.time()
            actions = plan(
                self._desired,
                self.records,
                running,
                now,
                names=None if full else names,
                health=self._health_status,
                secret_version=self.store.secrets.version,
            )
            waits = {action.name: action.reason for action in actions if action.kind is Kind.WAIT}
            self._note_waits(names, waits)
            for action in actions:
                if action.kind is Kind.WAIT:
                    continue
                record = self.records.setdefault(action.name, Record(action.name))
                record.in_flight = True
                if action.kind is Kind.CONFLICT:
                    self._conflicted.add(action.name)
                else:
                    self._conflicted.discard(action.name)
                assert self._tg is not None
                self._tg.start_soon(self._execute, action)
            if self._tally(names, full=full, now=now):
                result = "requeue"
            self.save_stops()
        except Exception:
            # A bug in a round must not kill the daemon: count it, log it,
            # and let the next trigger try again.
            result = "error"
            log.exception("reconcile failed")
        if self.metrics is not None:
            self.metrics.observe_reconcile(time.perf_counter() - started, result, full=full)
        self._notify()

    def _note_waits(self, names: Collection[str], waits: Mapping[str, str]) -> None:
        """Note why each of ``names`` waits (a dependency, a secret: ``waits``), if it does."""
        for name in names:
            why = waits.get(name)
            record = self.records.get(name) if why is None else self.record(name)
            if record is None or record.waiting == why:
                continue
            record.waiting = why
            if why is not None:
                self.emit("container.waiting", name, why)

    def _health_status(self, name: str) -> str | None:
        state = self.health_of(name)
        return None if state is None else state.status

    def _tally(self, names: Collection[str], *, full: bool, now: float) -> bool:
        """After planning ``names``: which run, and each one's phase; whether one backs off.

        Keeps ``running_names`` (and whoever is told of it) and the metrics'
        gauges up to date; ``full``: ``names`` are every name, the others go.
        """
        backing_off = False
        running_changed = False
        counting = self.metrics is not None
        if full:
            self._phases = {}
            self._counts = dict.fromkeys(_STATE_NAMES, 0)
        for name in names:
            manifest, record = self._desired.get(name), self.records.get(name)
            runs = record is not None and record.running
            if runs != (name in self._running_now):
                running_changed = True
                if runs:
                    self._running_now.add(name)
                else:
                    self._running_now.discard(name)
            if record is not None:
                until = record.backoff_until
                backing_off = backing_off or (until is not None and until > now)
            if not counting:
                continue
            if manifest is not None or record is not None:
                self._set_phase(name, _phase_of(manifest, record, now))
            elif self._set_phase(name, None) and not full and self.metrics:
                self.metrics.forget_container(name)  # gone (a manifest never valid)
        if full and (gone := self._running_now - set(names)):
            running_changed = True
            self._running_now -= gone
        if running_changed:
            self.running_names = frozenset(self._running_now)
            if self.on_running is not None:
                self.on_running(self.running_names)
        self._update_metrics(names, full=full)
        return backing_off

    def _set_phase(self, name: str, phase: Phase | None) -> bool:
        """Note ``name``'s phase (None: it is gone), counted; whether it had one."""
        before = self._phases.pop(name, None)
        if before is not None and (state := _STATES.get(before)) is not None:
            self._counts[state] -= 1
        if phase is not None:
            self._phases[name] = phase
            if (state := _STATES.get(phase)) is not None:
                self._counts[state] += 1
        return before is not None

    def _note_sources(self) -> None:
        """An event when a source starts or stops failing (it keeps its last good state)."""
        for status in self.source_statuses():
            if self.metrics is not None:
                self.metrics.set_source_failing(status.name, status.error is not None)
            if status.error is not None and self._source_errors.get(status.name) != status.error:
                self._source_errors[status.name] = status.error
                self.emit("source.failed", status.name, status.error, url=status.url)
            elif status.error is None and status.name in self._source_errors:
                del self._source_errors[status.name]
                self.emit("source.recovered", status.name, "read again", url=status.url)

    def source_holding(self) -> str | None:
        """Why a source keeps an older state in force (held, or unreadable), if one does."""
        for status in self.source_statuses():
            if status.held or status.error:
                return f"source {status.name}: {status.held or status.error}"
        return None

    def _note_manifests(self, names: Collection[str], running: Set[str]) -> None:
        """Report each of ``names`` whose manifest became invalid or valid again.

        And, as the level-triggered safety net, notice a container the
        records think runs but the runtime does not know: it has exited,
        even if its event was lost.
        """
        for name in names:
            record = self.records.get(name)
            if (
                record is not None
                and record.running
                and not record.in_flight
                and record.container_id not in running
            ):
                # As the kubelet does with a container it finds gone: it ended,
                # killed as far as anyone knows (137), and it is restarted as a
                # crashed one is, back-off and all.
                record.running = False
                record.found_dead = record.container_id
                self._crashed(record, 137, "its container was found gone before its exit was seen")
            manifest = self._desired.get(name)
            if manifest is None:
                self._reported_errors.pop(name, None)
            elif manifest.error is not None:
                message = str(manifest.error)
                if self._reported_errors.get(name) != message:
                    self._reported_errors[name] = message
                    self.emit("manifest.invalid", name, message, file=manifest.file)
            elif self._reported_errors.pop(name, None) is not None:
                self.emit("manifest.valid", name, "manifest is valid again", file=manifest.file)

    # -- carrying actions out --------------------------------------------

    async def _execute(self, action: Action) -> None:
        record = self.records[action.name]
        try:
            async with self._limiter:
                match action.kind:
                    case Kind.START:
                        assert action.squishfile is not None
                        await self._start(
                            record, action.squishfile, action.layer_key, restart=action.restart
                        )
                    case Kind.REPLACE:
                        assert action.squishfile is not None and action.container_id is not None
                        why = action.reason or "replaced by a new version"
                        await self._stop(record, action.container_id, why)
                        await self._start(
                            record, action.squishfile, action.layer_key, restart=action.restart
                        )
                    case Kind.STOP:
                        assert action.container_id is not None
                        await self._stop(record, action.container_id, "manifest removed")
                        self._forget(action.name)
                    case Kind.HALT:
                        assert action.container_id is not None
                        await self._stop(record, action.container_id, "stopped by the user")
                    case Kind.UPDATE_PORTS:
                        assert action.squishfile is not None and action.container_id is not None
                        await self._update_ports(record, action.squishfile, action.container_id)
                    case Kind.FORGET:
                        self._forget(action.name)
                        self.emit("manifest.removed", action.name, "manifest removed")
                    case Kind.CONFLICT:
                        assert action.squishfile is not None
                        self._fail(record, action.squishfile, action.reason, retry=False)
        except Exception:
            log.exception("action %s on %s failed", action.kind, action.name)
        finally:
            record.in_flight = False
            # Ports it let go may be what a name refused them waits for.
            lets_go = action.kind not in (Kind.START, Kind.CONFLICT)
            self.trigger({action.name, *(self._conflicted if lets_go else ())})
            self._notify()

    async def _start(
        self, record: Record, squishfile: Squishfile, layer_key: str, *, restart: bool
    ) -> None:
        began = time.perf_counter()
        if self.metrics is not None:
            # Before the attempt: increase() counts only from a series' first
            # sample, so the restart and start-failure counters must exist at
            # 0 before their first increment, even if this first start fails.
            self.metrics.container_seen(record.name)
        try:
            record.resolving = True
            try:
                spec = await anyio.to_thread.run_sync(self._resolve, squishfile, self.store)
            finally:
                record.resolving = False
            container = await self._start_in_time(record, spec, squishfile.spec_hash())
        except SquishError as exc:
            self._start_errors[record.name] = exc
            self._fail(record, squishfile, str(exc), retry=True)
            if self.metrics is not None:
                self.metrics.container_start_failed(record.name)
            return
        if container is None:
            return  # no longer wanted; the next round does what is wanted now
        self._start_errors.pop(record.name, None)
        if record.stopped_by_user and record.stopped_hash != squishfile.spec_hash():
            # Started because its squishfile changed: the edit ended the stop.
            record.stopped_by_user = False
            record.stopped_hash = None
            self._stops_changed = True
        self._specs[record.name] = spec
        record.container_id = container.id
        record.applied = squishfile
        record.applied_key = layer_key
        record.running = True
        record.started_at = time.time()
        record.failure = record.failed_hash = None
        record.exit_code = record.exited_hash = None
        record.backoff_until = None
        record.waiting = None
        record.dependency_ids = {
            dependency.name: other.container_id
            for dependency in squishfile.depends_on
            if dependency.restart and (other := self.records.get(dependency.name)) is not None
        }
        if restart:
            record.restarts += 1
            if self.metrics is not None:
                self.metrics.container_restarted(record.name)
        self._health.pop(record.name, None)
        if squishfile.health is not None:
            state = HealthState(container.id, squishfile.health, record.started_at)
            self._health[record.name] = state
            if self.metrics is not None:
                self.metrics.set_health(record.name, state.status)
            assert self._tg is not None
            self._tg.start_soon(self._watch_health, record.name, state)
        if self.metrics is not None:
            self.metrics.container_started(time.perf_counter() - began)
            if container.init_pid is not None:
                self.metrics.track_process(record.name, container.init_pid)
        verb = "restarted" if restart else "started"
        self.emit("container.started", record.name, f"{verb} {container.id[:12]}", id=container.id)

    async def _start_in_time(
        self, record: Record, spec: ContainerSpec, spec_hash: str
    ) -> Container | None:
        """``runtime.start(spec)`` within the start deadline; None if no longer wanted.

        A start that hangs (a mount that blocks, a bwrap that never gets to
        its command) is cancelled at the deadline, which makes the runtime
        kill whatever it had started, and fails as any start that cannot be
        done: reported, counted, backed off. It is cancelled at once when
        its manifest is removed or changed, or the user stops it: the final
        state wins, even over a start stuck half-way.
        """
        container: Container | None = None
        error: SquishError | None = None
        with anyio.move_on_after(self.start_timeout) as deadline:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._cancel_unless_wanted, record, spec_hash, tg.cancel_scope)
                try:
                    container = await self.runtime.start(spec)
                except SquishError as exc:
                    error = exc
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if container is None and deadline.cancelled_caught:
            raise RuntimeFailure(
                f"{spec.name}: did not start within {self.start_timeout:g} s "
                "(--start-timeout); it was killed"
            )
        return container

    async def _cancel_unless_wanted(
        self, record: Record, spec_hash: str, start: anyio.CancelScope
    ) -> None:
        """Cancel ``start`` once ``spec_hash`` is no longer what ``record`` should run."""
        while self._still_wanted(record, spec_hash):
            # Rounds notify; a user's stop only marks the record, hence the
            # timeout.
            with anyio.move_on_after(0.5):
                await self._changed.wait()
        start.cancel()

    def _still_wanted(self, record: Record, spec_hash: str) -> bool:
        manifest = self._desired.get(record.name)
        if manifest is None:
            return False
        if record.stopped_by_user and record.stopped_hash == spec_hash:
            return False
        # An invalid manifest keeps the last good version: this one.
        return manifest.squishfile is None or manifest.squishfile.spec_hash() == spec_hash

    async def _stop(self, record: Record, container_id: str, why: str) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.stop(container_id, grace=self.stop_grace)
        record.running = False
        self.emit("container.stopped", record.name, f"stopped {container_id[:12]}: {why}")

    async def _update_ports(
        self, record: Record, squishfile: Squishfile, container_id: str
    ) -> None:
        try:
            fresh = await anyio.to_thread.run_sync(self._resolve, squishfile, self.store)
            container = await self.runtime.update_ports(container_id, fresh.ports)
        except SquishError as exc:
            self._fail(record, squishfile, str(exc), retry=True)
            return
        self._specs[record.name] = fresh
        record.applied = squishfile
        record.failure = record.failed_hash = None
        shown = ", ".join(port.describe() for port in container.ports) or "none"
        self.emit("container.ports", record.name, f"ports now {shown}")

    def _fail(self, record: Record, squishfile: Squishfile, reason: str, *, retry: bool) -> None:
        # The runtime names the container in its errors; the record is that name.
        reason = reason.removeprefix(f"{record.name}: ")
        first = record.failure != reason
        record.failure = reason
        record.failed_hash = squishfile.spec_hash()
        if retry:
            record.crashes += 1
            delay = max(self.backoff.delay(record.crashes), self.backoff.initial)
            self._back_off(record, time.time() + delay)
        if first:
            self.emit("container.failed", record.name, reason)

    # -- health checks -------------------------------------------------------

    def health_of(self, name: str) -> HealthState | None:
        """The health of ``name``'s running container, if its squishfile has ``[health]``."""
        record = self.records.get(name)
        state = self._health.get(name)
        if record is None or state is None or not record.running:
            return None
        return state if state.container_id == record.container_id else None

    async def _watch_health(self, name: str, state: HealthState) -> None:
        """Check ``state``'s container every interval, one check at a time, until it is gone."""
        health = state.health
        probe = _probe(health)
        while True:
            await anyio.sleep(health.interval)
            if self.health_of(name) is not state:
                return  # stopped, replaced, removed
            began = time.time()
            try:
                if probe is None:
                    result = await self.runtime.exec(
                        state.container_id, health.command, timeout=health.timeout
                    )
                else:
                    result = await self.runtime.probe(
                        state.container_id, probe, timeout=health.timeout
                    )
            except ContainerNotFound:
                return  # gone while the check started
            except Exception as exc:  # the check could not run (no fds left, ...): a failure
                if not isinstance(exc, SquishError):
                    log.exception("health check of %s", name)
                result = ExecResult(125, f"the check could not run: {exc}", 0.0)
            if self.health_of(name) is not state:
                return
            check = CheckResult(began, time.time(), result.exit_code, first_lines(result.output))
            if self.metrics is not None:
                self.metrics.observe_health_check(result.seconds)
            if not state.record(check):
                continue
            lines = check.output.strip().splitlines()
            message: str = state.status
            if not check.passed and probe is None:  # a command's last line says most
                message += f": the check exited with {check.exit_code}"
                message += f": {lines[-1]}" if lines else ""
            elif not check.passed:  # a probe's first line
                message += f": {lines[0] if lines else 'the check failed'}"
            self.emit("container.health", name, message, status=state.status)
            if self.metrics is not None:
                self.metrics.set_health(name, state.status)
            self.trigger({name})  # its dependents may wait for it to be healthy
            self._notify()
            if state.status == "unhealthy" and health.on_failure == "restart":
                await self._restart_unhealthy(name, state, message)
                return

    async def _restart_unhealthy(self, name: str, state: HealthState, why: str) -> None:
        """Replace the process of an unhealthy container, as a crash: counted, backed off."""
        record = self.records.get(name)
        if record is None or record.container_id != state.container_id or record.in_flight:
            return  # something else is being done to it: that decides
        record.in_flight = True
        try:
            try:
                stopped = await self.runtime.stop(state.container_id, grace=self.stop_grace)
                code = stopped.exit_code if stopped.exit_code is not None else 143
            except ContainerNotFound:
                code = 137
            record.running = False
            self._crashed(record, code, f"restarted: {why}")
            self.emit(
                "container.exited", name, f"exited with code {code}: restarted, {why}", code=code
            )
        finally:
            record.in_flight = False
            self.trigger({name})
            self._notify()

    def _forget(self, name: str) -> None:
        self._health.pop(name, None)
        if (gone := self.records.pop(name, None)) is not None and gone.stopped_by_user:
            self._stops_changed = True
        self._conflicted.discard(name)
        self._phases.pop(name, None)
        self._start_errors.pop(name, None)
        self._specs.pop(name, None)
        if self.metrics is not None:
            self.metrics.forget_container(name)
        self._doom_log(name)

    # -- logs of containers that are gone ----------------------------------

    def _doom_log(self, name: str) -> None:
        """Remove ``name``'s log after the grace period, unless the name is back by then."""
        token = self._doomed_logs[name] = object()
        assert self._tg is not None
        self._tg.start_soon(self._remove_log_later, name, token)

    def _doom_orphan_logs(self) -> None:
        # Logs of containers deleted while no daemon ran (or before it
        # restarted) would otherwise be kept forever.
        with contextlib.suppress(OSError):
            for entry in self.log_dir.glob("*.log"):
                name = entry.name.removesuffix(".log")
                if name not in self._desired and name not in self.records:
                    self._doom_log(name)

    async def _remove_log_later(self, name: str, token: object) -> None:
        await anyio.sleep(self.log_grace)
        if self._doomed_logs.get(name) is not token:
            return  # forgotten again since: that later timer decides
        del self._doomed_logs[name]
        if name in self._desired or name in self.records:
            return  # back again: its log goes on
        await anyio.to_thread.run_sync(remove_log, self.log_dir / f"{name}.log")

    def _on_exit(self, event: ExitEvent) -> None:
        record = self.records.get(event.name)
        if record is None:
            return
        if record.found_dead == event.container_id:
            # Counted when it was found gone (maybe restarted since): now we know why.
            record.found_dead = None
            if event.stopped:
                return
            if record.container_id == event.container_id:
                record.exit_code = event.exit_code
                record.exit_reason = event.reason or "see squish logs"
        elif record.container_id != event.container_id:
            return
        else:
            record.running = False
            if event.stopped:
                return
            self._crashed(record, event.exit_code, event.reason or "see squish logs")
        message = f"exited with code {event.exit_code}"
        if event.reason:
            message += f": {event.reason}"
        self.emit("container.exited", record.name, message, code=event.exit_code)
        self._notify()

    # -- events and waiting --------------------------------------------------

    def emit(self, kind: str, name: str, message: str, **fields: Any) -> None:
        """Record an event (``squish events``, the daemon log)."""
        event = Event(kind, name, message, fields=fields)
        # What needs a human (a container that cannot start, a bad manifest)
        # is a warning in the daemon log; the rest is information.
        level = (
            logging.WARNING
            if kind in ("container.failed", "manifest.invalid", "source.failed")
            else logging.INFO
        )
        log.log(level, "%s %s: %s", kind, name, message, extra={"event": event.to_json()})
        self.events.publish(event)

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        return self.events.subscribe()

    def close(self) -> None:
        self.events.close()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, check: Callable[[], T | None], timeout: float) -> T:
        """``check()`` once it is not None, re-checked after each change; ``TimeoutError``."""
        with anyio.fail_after(timeout):
            while (result := check()) is None:
                await self._changed.wait()
        return result

    # -- what is known of each name ------------------------------------------

    def phase(self, name: str, live: Mapping[str, Container] | None = None) -> ContainerStatus:
        """``name``'s row; ``live`` is the runtime's containers by id, if at hand."""
        manifest = self._desired.get(name)
        record = self.records.get(name)
        file = manifest.file if manifest else str(self.manifests_dir / f"{name}.toml")
        now = time.time()
        status = ContainerStatus(name=name, phase=_phase_of(manifest, record, now), manifest=file)
        if manifest is not None and manifest.error is not None:
            status.manifest_error = str(manifest.error)
        if manifest is not None and manifest.squishfile is not None:
            status.spec_hash = manifest.squishfile.spec_hash()
        if record is None:
            status.reason = status.manifest_error or ""
            return status
        status.id = record.container_id
        status.restarts = record.restarts
        status.exit_code = record.exit_code
        status.reason = record.failure or ""
        match status.phase:
            case Phase.RUNNING:
                status.started_at = record.started_at
                if live is None:
                    live = {container.id: container for container in self.runtime.list()}
                if (container := live.get(record.container_id or "")) is not None:
                    status.pid = container.pid
                    status.ports = container.ports
                    status.networks = container.addresses
                if (health := self.health_of(name)) is not None:
                    status.health = health.status
            case Phase.PENDING if record.in_flight:
                if record.resolving:
                    status.reason = "waiting for its layers (downloading or unpacking)"
                elif not status.reason:
                    # As the kubelet's ContainerCreating: a start in flight (one
                    # that hangs shows so until its deadline).
                    status.reason = "starting"
            case Phase.INVALID:
                status.reason = status.manifest_error or ""
            case Phase.STOPPED:
                status.reason = "stopped by the user"
            case Phase.WAITING:
                status.reason = record.waiting or ""
            case Phase.BACKOFF:
                status.next_restart_at = record.backoff_until
                if not status.reason and record.exit_code is not None:
                    status.reason = f"exited with code {record.exit_code}; restarting"
            case Phase.EXITED | Phase.FAILED if record.failure is None:
                status.reason = f"exited with code {record.exit_code}"
            case _:
                pass
        return status

    def layer_users(self) -> tuple[dict[str, Squishfile], dict[str, list[Path]]]:
        """Squishfiles wanted by name (last good ones included), and live mounts by name.

        What ``squish layer gc`` must keep; see ``squish.daemon.layer_admin``.
        """
        wanted: dict[str, Squishfile] = {}
        for name, manifest in self._desired.items():
            if manifest.squishfile is not None:
                wanted[name] = manifest.squishfile
        for name, record in self.records.items():
            # A manifest gone invalid keeps its last good version running.
            if record.applied is not None and name not in wanted:
                wanted[name] = record.applied
        mounted = {
            name: [spec.rootfs, *(mount.source for mount in spec.mounts)]
            for name, spec in self._specs.items()
        }
        return wanted, mounted

    def resolve(self, ref: str) -> str:
        """The name ``ref`` means: a container's name, or a unique prefix of its id.

        As podman: an exact name wins; otherwise every container whose
        current (or last) id starts with ``ref`` is a candidate, and more
        than one is an error naming them.
        """
        if ref in self._desired or ref in self.records:
            return ref
        candidates = sorted(
            name
            for name, record in self.records.items()
            if ref and record.container_id is not None and record.container_id.startswith(ref)
        )
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise AmbiguousName(ref, candidates)
        raise ContainerNotFound(f"no such container {ref!r}")

    def statuses(self) -> list[ContainerStatus]:
        # One look at the runtime for all rows: a look per row would make
        # listing n containers cost n^2.
        live = {container.id: container for container in self.runtime.list()}
        names = sorted(set(self._desired) | set(self.records))
        return [self.phase(name, live) for name in names]

    # -- what the control plane reads and asks (squish.daemon.control) -----

    @property
    def desired(self) -> Mapping[str, Manifest]:
        """The manifests of the last round, by name."""
        return self._desired

    @property
    def rounds(self) -> int:
        """How many rounds have run."""
        return self._rounds

    @property
    def started(self) -> float:
        """When the reconciler was made (Unix seconds)."""
        return self._started

    def record(self, name: str) -> Record:
        """``name``'s record, made if there is none yet."""
        return self.records.setdefault(name, Record(name))

    def spec_of(self, name: str) -> ContainerSpec | None:
        """The spec ``name``'s container runs (or last ran) with."""
        return self._specs.get(name)

    def log_kept(self, name: str) -> bool:
        """Whether ``name`` is gone but its log is still kept (see ``LOG_GRACE``)."""
        return name in self._doomed_logs

    def wanted_again(self, name: str, *, forget_exit: bool = False) -> Record:
        """Clear what keeps ``name`` from starting: a user's stop, a failure, a back-off.

        ``forget_exit``: its last exit too (a user's start of an exited one).
        """
        self._pending_stops.pop(name, None)
        record = self.record(name)
        record.stopped_by_user = False
        self._stops_changed = True
        record.failure = record.failed_hash = None
        record.backoff_until = None
        record.crashes = 0
        if forget_exit:
            record.exit_code = record.exited_hash = None
        return record

    def mark_stopped(self, name: str, *, stopped: bool = True) -> bool:
        """Mark ``name`` stopped by the user (or not); whether it was before.

        A stop remembers what an edit must change to start it again: the
        wanted spec, else the one that ran.
        """
        record = self.record(name)
        was = record.stopped_by_user
        record.stopped_by_user = stopped
        self._stops_changed = True
        if stopped:
            manifest = self._desired.get(name)
            wanted = manifest.squishfile if manifest and manifest.squishfile else None
            source = wanted or record.applied
            record.stopped_hash = source.spec_hash() if source is not None else None
            record.backoff_until = None
        return was

    def forget_pending_stop(self, name: str) -> None:
        """Drop a stop kept for ``name`` from before its manifest appeared."""
        if name in self._pending_stops:
            del self._pending_stops[name]
            self._stops_changed = True

    def start_outcome(
        self, name: str, spec_hash: str, *, since: int = -1
    ) -> ContainerStatus | SquishError | None:
        """How the start of ``name`` at ``spec_hash`` went; None while undecided.

        ``since``: the round count when the start was asked; what depends on
        the other manifests (waiting for a dependency, or a cycle with them)
        is only known from a round after it, ``spec_hash`` being blind to
        ``[depends_on]``.
        """
        fresh = self._rounds > since
        if fresh and name in self._graph.cycles:
            # Valid alone, invalid with the others: on a dependency cycle.
            given, manifest = self._snapshot.get(name), self._desired.get(name)
            if given and given.squishfile and given.squishfile.spec_hash() == spec_hash:
                return manifest.error if manifest and manifest.error else None
        record = self.records.get(name)
        if record is None or record.in_flight:
            return None
        if record.running and record.applied and record.applied.spec_hash() == spec_hash:
            return self.phase(name)
        if fresh and record.waiting is not None:
            return self.phase(name)  # accepted: it starts once its dependencies are ready
        if record.failure is not None and record.failed_hash == spec_hash:
            # The start's own error, so its kind (a layer, a port) reaches the API.
            error = self._start_errors.get(name)
            if error is not None and str(error) == record.failure:
                return error
            return RuntimeFailure(record.failure)
        return None

    def exited_early(self, name: str) -> str | None:
        record = self.records.get(name)
        if record is None or record.running or record.exit_code in (None, 0):
            return None
        return f"exited at once with code {record.exit_code}: {record.exit_reason}"

    # -- metrics -----------------------------------------------------------------

    def _update_metrics(self, names: Collection[str], *, full: bool) -> None:
        """The gauges, from the phases ``_tally`` noted for ``names``."""
        if self.metrics is None:
            return
        invalid = len(self._reported_errors)
        self.metrics.set_manifests(valid=len(self._desired) - invalid, invalid=invalid)
        self.metrics.set_containers(self._counts)
        if full:
            self.metrics.set_container_phases(self._phases)
        else:
            for name in names:
                if (current := self._phases.get(name)) is not None:
                    self.metrics.set_container_phase(name, current)


def _probe(health: Health) -> Probe | None:
    """The daemon's own check of ``[health] http`` or ``tcp``; None for a command."""
    if health.http is not None:
        return Probe(health.http.port, health.http.path, health.http.headers)
    if health.tcp is not None:
        return Probe(health.tcp)
    return None


def _phase_of(manifest: Manifest | None, record: Record | None, now: float) -> Phase:
    """The phase ``squish ps`` shows for a name with this manifest and record."""
    invalid = manifest is not None and manifest.error is not None
    if record is None:
        return Phase.INVALID if invalid else Phase.PENDING
    if record.running:
        return Phase.RUNNING
    if record.in_flight:
        return Phase.PENDING
    if invalid and record.applied is None:
        return Phase.INVALID
    if record.stopped_by_user:
        return Phase.STOPPED
    if record.waiting is not None:
        return Phase.WAITING
    if record.backoff_until is not None and record.backoff_until > now:
        return Phase.BACKOFF
    if record.failure is not None:
        return Phase.FAILED
    if record.exit_code is not None:
        return Phase.EXITED if record.exit_code == 0 else Phase.FAILED
    return Phase.PENDING


# The states ``squish_containers`` counts, and which one each phase is in
# (the others: none).
_STATE_NAMES = ("running", "stopped", "failed", "backoff")
_STATES = {
    Phase.RUNNING: "running",
    Phase.STOPPED: "stopped",
    Phase.EXITED: "stopped",
    Phase.FAILED: "failed",
    Phase.INVALID: "failed",
    Phase.BACKOFF: "backoff",
}
