"""The pure core of reconciling: what to do, given what is wanted and what is.

Called by the ``Reconciler`` in every round: for the names that changed (a
file, a container exited, a back-off ran out, a user's request) and, at each
periodic resync, for every name. ``plan(desired, records, running, now,
names=...)`` returns the actions that move those names' actual state towards
the desired one; it does no I/O and decides everything, so it is tested with
tables. The executor only carries the actions out and writes down what
happened in the records. A name's actions depend on other names in one way
only, the host ports their running containers hold, which ``plan`` reads
from every record whenever a name of the round claims ports.

Rules, per name:

- manifest gone: stop its container;
- manifest invalid: keep whatever runs (the last good version), start nothing;
- running, same spec: nothing; only ports changed: update the forwards in
  place; anything else changed: replace;
- stopped by the user (``squish stop``) and still running: halt it (the
  stop holds until its manifest changes or ``start``), so a stop given while
  a start was in flight still wins;
- not running: start it, unless the user stopped it (until its manifest
  changes or ``start``), its restart policy says it is done, or it is in
  back-off after crashing;
- two manifests claiming one host port: the container already holding it
  keeps it; the other gets a conflict naming both files;
- ``[depends_on]``, as compose's: a start (not the restart of a crashed
  container) waits until each dependency meets its condition, and says
  for which and why; once running, it keeps running whatever its
  dependencies do, unless one with ``restart = true`` is restarted or
  replaced: then it is restarted too, once that one meets its condition
  again;
- ``[secrets]``: a start waits until the node has each secret it names; a
  new value of one replaces the running container (its version is part of
  what the container's files are, with the file layers').
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Set
from dataclasses import dataclass, field

from squish.model.manifest import Manifest
from squish.model.squishfile import Change, Dependency, Squishfile, diff_specs

HealthOf = Callable[[str], str | None]
"""A name's running container's health status (None: no checks, or not running)."""
SecretVersion = Callable[[str], str | None]
"""A node secret's version (changed whenever its value is), None if there is no such secret."""


@dataclass(frozen=True)
class Backoff:
    """Restart back-off, as the kubelet's: immediate, then doubling to a cap."""

    initial: float = 10.0
    maximum: float = 300.0
    reset_after: float = 600.0  # running this long forgets earlier crashes

    def delay(self, crashes: int) -> float:
        """Seconds to wait before restart number ``crashes`` (1-based)."""
        if crashes <= 1:
            return 0.0
        return float(min(self.initial * 2 ** (crashes - 2), self.maximum))


@dataclass
class Record:
    """What the reconciler remembers about one name between rounds."""

    name: str
    container_id: str | None = None  # the current (or last) container
    applied: Squishfile | None = None  # what that container was started from
    applied_key: str = ""  # and the identity of its file layers then
    running: bool = False
    stopped_by_user: bool = False
    stopped_hash: str | None = None  # the spec the user stopped; an edit starts it again
    crashes: int = 0  # consecutive, reset after a long enough run
    restarts: int = 0  # total, for ps and metrics
    backoff_until: float | None = None
    exit_code: int | None = None
    exit_reason: str = ""
    exited_hash: str | None = None  # spec of the container that exited by itself
    failure: str | None = None  # why the last start failed, or the conflict
    failed_hash: str | None = None
    started_at: float | None = None
    in_flight: bool = False  # an action for this name is being carried out
    resolving: bool = False  # its layers are being fetched or unpacked
    # A container found gone before its exit was seen (the exit still on its
    # way, or lost): counted as a crash then; its exit, if it comes, only says why.
    found_dead: str | None = None
    waiting: str | None = None  # why it does not start yet: a dependency, a missing secret
    # The containers of its restart = true dependencies when it started: a
    # new one there restarts it.
    dependency_ids: Mapping[str, str | None] = field(default_factory=dict)


class Kind(enum.StrEnum):
    START = "start"
    STOP = "stop"
    REPLACE = "replace"
    UPDATE_PORTS = "update-ports"
    HALT = "halt"  # stop it, keep the record: the user stopped it
    CONFLICT = "conflict"  # not an action on the runtime: record the failure
    FORGET = "forget"  # manifest gone, nothing runs: drop the record
    WAIT = "wait"  # not an action on the runtime: a dependency or a secret is missing (why)


@dataclass(frozen=True)
class Action:
    kind: Kind
    name: str
    squishfile: Squishfile | None = None
    container_id: str | None = None
    reason: str = ""
    restart: bool = field(default=False)  # a start that restarts a crashed container
    layer_key: str = ""  # the desired file layers' identity, to remember once started


def _ports(squishfile: Squishfile) -> set[tuple[str | None, int, str]]:
    return {(port.host_ip, port.host, port.protocol) for port in squishfile.ports}


def _wants_start(record: Record | None, wanted: Squishfile, now: float) -> tuple[bool, bool]:
    """(start it?, is it a restart?) for a name whose container is not running."""
    if record is None:
        return True, False
    spec = wanted.spec_hash()
    if record.stopped_by_user and record.stopped_hash == spec:
        return False, False
    if record.exited_hash == spec and record.exit_code is not None:
        policy = wanted.restart
        if policy == "never" or (policy == "on-failure" and record.exit_code == 0):
            return False, False
        if record.backoff_until is not None and record.backoff_until > now:
            return False, True
        return True, True
    waiting = record.backoff_until is not None and record.backoff_until > now
    if record.failed_hash == spec and record.failure is not None and waiting:
        # A start that failed (a layer, a port) is retried with back-off too.
        return False, True
    return True, False


def _halted(record: Record, wanted: Squishfile | None) -> bool:
    """Whether the user's stop still holds for ``wanted`` (None: an invalid manifest)."""
    if not record.stopped_by_user:
        return False
    return wanted is None or record.stopped_hash in (None, wanted.spec_hash())


_CONDITION_WORDS = {
    "started": "started",
    "healthy": "healthy",
    "completed": "completed (exit 0)",
}


@dataclass(frozen=True)
class _World:
    """What a round sees of every name: what ``[depends_on]`` is checked against."""

    desired: Mapping[str, Manifest]
    records: Mapping[str, Record]
    running: Set[str]
    health: HealthOf
    secret_version: SecretVersion

    def key(self, manifest: Manifest, wanted: Squishfile) -> str:
        """What the container's files are: its file layers', and its secrets' values."""
        if not wanted.secrets:
            return manifest.layer_key
        versions = ",".join(str(self.secret_version(name)) for _, name in wanted.secrets)
        return f"{manifest.layer_key}|secrets:{versions}"

    def missing_secret(self, wanted: Squishfile) -> str | None:
        """Why it cannot start for want of a secret; None if it has them all."""
        for _, name in wanted.secrets:
            if self.secret_version(name) is None:
                return (
                    f"waiting for secret {name}: the node has no such secret "
                    f"(squish secret create {name} FILE)"
                )
        return None

    def unmet(self, dependency: Dependency) -> str | None:
        """Why ``dependency`` does not meet its condition now; None if it does."""
        name = dependency.name
        manifest = self.desired.get(name)
        record = self.records.get(name)
        if manifest is None:
            return "no squishfile names it"
        wanted = manifest.squishfile
        runs = record is not None and record.running and record.container_id in self.running
        if dependency.condition == "completed":
            if record is None or runs or record.in_flight:
                return "it is running" if runs else "it has not run yet"
            if record.exit_code == 0 and (
                wanted is None or record.exited_hash == wanted.spec_hash()
            ):
                return None
            if record.exit_code not in (None, 0):
                return f"it exited with code {record.exit_code}"
            return "it has not run yet"
        if not runs or record is None:
            return _not_running(manifest, record)
        if dependency.condition == "started":
            return None
        if record.applied is not None and record.applied.health is None:
            return "it has no [health] check, so it never becomes healthy"
        status = self.health(name)
        return None if status == "healthy" else f"it is {status or 'starting'}"

    def waits_for(self, squishfile: Squishfile) -> str | None:
        """Why ``squishfile``'s container cannot start yet (its first unmet dependency)."""
        for dependency in squishfile.depends_on:
            if (why := self.unmet(dependency)) is not None:
                condition = _CONDITION_WORDS[dependency.condition]
                return f"waiting for {dependency.name} to be {condition}: {why}"
        return None

    def restarted_dependency(self, record: Record, wanted: Squishfile) -> str | None:
        """A ``restart = true`` dependency of ``record``'s running container that has a
        new container since it started, and meets its condition again."""
        for dependency in wanted.depends_on:
            if not dependency.restart or dependency.name not in record.dependency_ids:
                continue
            other = self.records.get(dependency.name)
            if other is None or other.container_id == record.dependency_ids[dependency.name]:
                continue
            if self.unmet(dependency) is None:
                return dependency.name
        return None


def _not_running(manifest: Manifest, record: Record | None) -> str:
    if record is None:
        return "it is not running yet"
    if record.stopped_by_user:
        return "it is stopped (squish start starts it)"
    if manifest.squishfile is None and record.applied is None:
        return "its squishfile is invalid"
    if record.waiting:
        return f"it is {record.waiting}"
    if record.failure:
        return f"it cannot start: {record.failure}"
    if record.exit_code is not None:
        return f"it exited with code {record.exit_code}"
    return "it is not running yet"


def plan(
    desired: Mapping[str, Manifest],
    records: Mapping[str, Record],
    running: Set[str],
    now: float,
    *,
    names: Collection[str] | None = None,
    health: HealthOf = lambda name: None,
    secret_version: SecretVersion = lambda name: None,
) -> list[Action]:
    """Actions that make ``running`` (container ids) match ``desired`` for ``names``.

    ``names``: the names to plan (None: every name wanted or recorded); one
    neither wanted nor recorded has nothing to do. ``health``: each name's
    health status, for the ``"healthy"`` condition of ``[depends_on]``;
    ``secret_version``: the node's secrets, for ``[secrets]`` (a new value
    replaces the containers that use it; a missing one makes them wait).
    """
    actions: list[Action] = []
    world = _World(desired, records, running, health, secret_version)
    # Host ports held by running containers: they keep them. Indexed by
    # (port, protocol), from every record, but only once a name of this
    # round claims ports; ``claimed`` is what the names planned so far in
    # this round hold now (their entries in the index may be older).
    holders: dict[tuple[int, str], dict[str, str | None]] | None = None
    claimed: dict[str, set[tuple[str | None, int, str]]] = {}

    def index() -> dict[tuple[int, str], dict[str, str | None]]:
        nonlocal holders
        if holders is None:
            holders = {}
            for other, holder in records.items():
                applied = holder.applied
                if applied is not None and applied.ports and holder.container_id in running:
                    for ip, port, protocol in _ports(applied):
                        holders.setdefault((port, protocol), {})[other] = ip
        return holders

    def claim(name: str, squishfile: Squishfile) -> str | None:
        """A conflict reason, or None after taking the ports for ``name``."""
        mine = _ports(squishfile)
        for ip, port, protocol in sorted(mine, key=str):
            for other, other_ip in sorted(index().get((port, protocol), {}).items()):
                if other == name or (
                    other in claimed and (other_ip, port, protocol) not in claimed[other]
                ):
                    continue  # its own, or given up in this round
                if ip is None or other_ip is None or ip == other_ip:
                    owner = desired[other].file if other in desired else f"{other}.toml"
                    mine_file = desired[name].file if name in desired else f"{name}.toml"
                    where = f"{ip}:{port}" if ip else str(port)
                    return f"host port {where}/{protocol} of {mine_file} is already used by {owner}"
        claimed[name] = mine
        for ip, port, protocol in mine:
            index().setdefault((port, protocol), {})[name] = ip
        return None

    for name in sorted(set(desired) | set(records) if names is None else names):
        record = records.get(name)
        if record is not None and record.in_flight:
            continue
        is_running = record is not None and record.container_id in running
        manifest = desired.get(name)
        if manifest is None:
            if record is None:
                continue  # neither wanted nor known: nothing to do
            if is_running:
                actions.append(
                    Action(Kind.STOP, name, container_id=record.container_id, reason="removed")
                )
            else:
                actions.append(Action(Kind.FORGET, name))
            continue
        wanted = manifest.squishfile
        if is_running and record is not None and _halted(record, wanted):
            actions.append(
                Action(Kind.HALT, name, container_id=record.container_id, reason="stopped")
            )
            continue
        if wanted is None:
            continue  # invalid: the last good version (if any) keeps running
        if is_running:
            assert record is not None and record.applied is not None
            change = diff_specs(record.applied, wanted)
            key = world.key(manifest, wanted)
            if key != record.applied_key:
                change = Change.REPLACE  # a file layer (an archive) changed on the host
            if change is Change.SAME:
                if record.dependency_ids and (
                    restarted := world.restarted_dependency(record, wanted)
                ):
                    actions.append(
                        Action(
                            Kind.REPLACE,
                            name,
                            wanted,
                            container_id=record.container_id,
                            reason=f"restarted with its dependency {restarted}",
                            restart=True,
                            layer_key=key,
                        )
                    )
                continue
            spec = wanted.spec_hash()
            waiting = record.backoff_until is not None and record.backoff_until > now
            if record.failed_hash == spec and waiting:
                continue  # this change failed (a port in use); retried after back-off
            if conflict := claim(name, wanted):
                actions.append(Action(Kind.CONFLICT, name, wanted, reason=conflict))
                continue
            kind = Kind.UPDATE_PORTS if change is Change.PORTS else Kind.REPLACE
            actions.append(
                Action(
                    kind,
                    name,
                    wanted,
                    container_id=record.container_id,
                    layer_key=key,
                )
            )
            continue
        start, restart = _wants_start(record, wanted, now)
        if not start:
            continue
        why = world.missing_secret(wanted)
        if why is None and not restart and wanted.depends_on:
            why = world.waits_for(wanted)
        if why is not None:
            actions.append(Action(Kind.WAIT, name, wanted, reason=why))
            continue
        if conflict := claim(name, wanted):
            actions.append(Action(Kind.CONFLICT, name, wanted, reason=conflict))
            continue
        actions.append(
            Action(Kind.START, name, wanted, restart=restart, layer_key=world.key(manifest, wanted))
        )
    return actions
