"""The daemon's control surface: what the API serves and the CLI shows.

``ControlPlane`` is what the HTTP API (``squish.daemon.api``) can ask;
``DaemonControl`` is the daemon's, over its reconciler: it answers from what
the reconciler knows of each name, stores the squishfiles that ``create``
and ``apply`` send in the watched directory (and puts back what was there
when a create fails), marks containers stopped or wanted again, and waits
for the reconciler to carry that out. The API's tests drive it on the real
reconciler (on the in-package fake runtime), so what they check is what the
daemon answers. Answers are the shapes of :mod:`squish.api_schema`, the one
definition the server, the client and the tests share.

Containers are named by *reference*, as podman does: an exact container
name, or a prefix of a container id that only one container has. An
ambiguous prefix is :class:`~squish.errors.AmbiguousName` (naming the
candidates) and touches nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from squish import __version__
from squish import api_schema as schema
from squish.errors import (
    ContainerNotFound,
    LayerError,
    ManifestError,
    NetworkNotFound,
    RuntimeFailure,
    SourceError,
    SquishError,
    VolumeNotFound,
)
from squish.layers.download import receive_archive
from squish.layers.secrets import MAX_SECRET_BYTES, Secret
from squish.layers.volumes import Volume
from squish.model.host import host_paths
from squish.model.squishfile import Layer, Squishfile, parse_squishfile
from squish.reconcile.health import HealthState
from squish.reconcile.reconciler import Reconciler
from squish.reconcile.status import ContainerStatus, Event, Phase
from squish.runtime import NetworkInfo

# How long create() watches a fresh container for an immediate failure
# (a command that does not exist, a layer bwrap cannot mount).
_EARLY_EXIT = 0.3
# How long a user's stop waits for an action already in flight on the name.
_BUSY_WAIT = 60.0


class ControlPlane(Protocol):
    """What the API can ask of the daemon.

    Errors a user caused raise ``SquishError`` subclasses whose message is the
    one line to show: ``ManifestError`` for a bad squishfile,
    ``ContainerNotFound`` for an unknown reference, ``AmbiguousName`` for an
    id prefix several containers share, ``RuntimeFailure`` or ``LayerError``
    for a container that cannot start.
    """

    def status(self) -> schema.DaemonStatus:
        """Version, uptime, manifest directory, counts per phase."""
        ...

    def containers(self) -> list[schema.Container]: ...

    def inspect(self, ref: str) -> schema.ContainerDetail:
        """Everything about one container: status, manifests, mounts, last error."""
        ...

    async def create(self, name: str, manifest: bytes, *, timeout: float) -> schema.Container:
        """Store ``manifest`` as ``<name>.toml`` and wait until it runs or fails.

        Fails fast (without waiting through restarts) when the manifest is
        invalid or the container cannot start; the stored manifest is then
        removed again (or the previous one put back), whatever ran under
        that name before keeps running, and the error says which.
        """
        ...

    async def apply(self, name: str, manifest: bytes) -> schema.Container:
        """Store ``manifest`` as ``<name>.toml`` without waiting (like kubectl apply)."""
        ...

    async def stop(self, ref: str) -> schema.Container:
        """Stop the container ``ref`` names; it stays stopped until start or an edit.

        Stopping a container that is not running succeeds: it stays so.
        """
        ...

    async def start(self, ref: str, *, timeout: float) -> schema.Container:
        """Start a stopped container again (under a new id); a running one is left as is."""
        ...

    async def delete(self, ref: str) -> schema.Container:
        """Remove the manifest; its container stops."""
        ...

    def log_path(self, ref: str) -> Path:
        """Where the log of the container ``ref`` names is (it may not exist yet)."""
        ...

    def networks(self) -> list[schema.Network]:
        """Every named network: those a squishfile names, and those with members."""
        ...

    async def exec(self, ref: str, command: list[str], *, timeout: float) -> schema.ExecResult:
        """Run ``command`` inside the running container ``ref`` names (``RuntimeFailure``
        when it does not run)."""
        ...

    def network(self, name: str) -> schema.Network:
        """One network; ``NetworkNotFound`` when nothing names it."""
        ...

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        """Every event from now on, until the subscription is closed."""
        ...

    async def volumes(self) -> list[schema.Volume]:
        """Every volume of the node, with who names it."""
        ...

    async def volume(self, name: str) -> schema.Volume:
        """One volume, with its size; ``VolumeNotFound`` when there is none."""
        ...

    async def remove_volume(self, name: str) -> schema.Volume:
        """Delete a volume and its data; refused (``RuntimeFailure``) while named."""
        ...

    async def prune_volumes(self) -> schema.VolumePrune:
        """Delete every volume no squishfile names."""
        ...

    async def secrets(self) -> list[schema.Secret]:
        """Every secret of the node, with who names it (never a value)."""
        ...

    async def create_secret(self, name: str, value: AsyncIterator[bytes]) -> schema.Secret:
        """Store (or replace) a secret; the containers that use it are replaced."""
        ...

    async def remove_secret(self, name: str) -> schema.Secret:
        """Delete a secret; refused while a squishfile names it."""
        ...

    async def export_volume(self, name: str, fd: int) -> None:
        """Write volume ``name`` to the file descriptor ``fd`` as a tar (in a worker
        thread), and close it."""
        ...

    async def import_volume(self, name: str, archive: AsyncIterator[bytes]) -> schema.Volume:
        """Make ``name`` hold what the archive (its chunks) holds; refused while a running
        container mounts it."""
        ...


class DaemonControl:
    """The daemon's ``ControlPlane``, over its ``reconciler``."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        return self.reconciler.subscribe()

    def _row(self, name: str) -> schema.Container:
        return self.reconciler.phase(name).to_json(self.reconciler.default_host_ip)

    def containers(self) -> list[schema.Container]:
        return [
            status.to_json(self.reconciler.default_host_ip) for status in self.reconciler.statuses()
        ]

    def status(self) -> schema.DaemonStatus:
        counts: dict[str, int] = {phase.value: 0 for phase in Phase}
        for container in self.reconciler.statuses():
            counts[container.phase.value] += 1
        status: schema.DaemonStatus = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": time.time() - self.reconciler.started,
            "manifests": str(self.reconciler.manifests_dir),
            "containers": counts,
        }
        for key in ("node", "labels", "default_base"):
            if key in self.reconciler.about:
                status[key] = self.reconciler.about[key]
        return status

    def inspect(self, ref: str) -> schema.ContainerDetail:
        name = self.reconciler.resolve(ref)
        row = self._row(name)
        record = self.reconciler.records.get(name)
        spec = self.reconciler.spec_of(name)
        manifest = self.reconciler.desired.get(name)
        layers: schema.Mounts | None = None
        if spec is not None:
            layers = {
                "rootfs": str(spec.rootfs),
                "mounts": [
                    {"source": str(m.source), "target": m.target, "rw": m.rw} for m in spec.mounts
                ],
            }
        return {
            **row,
            "applied": _squishfile_json(record.applied) if record and record.applied else None,
            "desired": _squishfile_json(manifest.squishfile)
            if manifest and manifest.squishfile
            else None,
            "layers": layers,
            "log": str(self.reconciler.log_dir / f"{name}.log"),
            "last_error": (record.failure if record else None) or row["manifest_error"],
            "stopped_by_user": bool(record and record.stopped_by_user),
            "health_checks": _health_json(self.reconciler.health_of(name)),
        }

    async def exec(self, ref: str, command: list[str], *, timeout: float) -> schema.ExecResult:
        name = self.reconciler.resolve(ref)
        record = self.reconciler.records.get(name)
        container_id = record.container_id if record is not None and record.running else None
        if container_id is None or container_id not in self.reconciler.runtime.ids():
            phase = self.reconciler.phase(name).phase
            raise RuntimeFailure(f"{name} is not running ({phase}): exec needs a running container")
        result = await self.reconciler.runtime.exec(container_id, command, timeout=timeout)
        return {
            "exit_code": result.exit_code,
            "output": result.output,
            "seconds": result.seconds,
            "timed_out": result.timed_out,
            "truncated": result.truncated,
        }

    def networks(self) -> list[schema.Network]:
        named: dict[str, list[str]] = {}
        for name, manifest in sorted(self.reconciler.desired.items()):
            if manifest.squishfile is not None:
                for network in manifest.squishfile.networks:
                    named.setdefault(network, []).append(name)
        wired = {info.name: info for info in self.reconciler.runtime.networks()}
        return [
            _network_json(name, named.get(name, []), wired.get(name))
            for name in sorted(set(named) | set(wired))
        ]

    def network(self, name: str) -> schema.Network:
        for network in self.networks():
            if network["name"] == name:
                return network
        raise NetworkNotFound(f"no network {name!r}: no squishfile names it")

    # -- volumes ---------------------------------------------------------------

    def _users(self, named: Callable[[Squishfile], Iterable[str]]) -> dict[str, list[str]]:
        """What ``named`` finds in each squishfile (a volume, a secret) -> the squishfiles
        that name it (the wanted ones, and the last good version of an invalid one)."""
        wanted, _ = self.reconciler.layer_users()
        users: dict[str, list[str]] = {}
        for container, squishfile in sorted(wanted.items()):
            for name in named(squishfile):
                users.setdefault(name, []).append(container)
        return users

    def _volume_users(self) -> dict[str, list[str]]:
        return self._users(lambda squishfile: (volume.name for volume in squishfile.volumes))

    def _secret_users(self) -> dict[str, list[str]]:
        return self._users(lambda squishfile: (secret for _, secret in squishfile.secrets))

    async def volumes(self) -> list[schema.Volume]:
        users = self._volume_users()
        found = await anyio.to_thread.run_sync(self.reconciler.store.volumes.list)
        return [_volume_json(volume, users.get(volume.name, []), None) for volume in found]

    async def volume(self, name: str) -> schema.Volume:
        users = self._volume_users()
        volumes = self.reconciler.store.volumes

        def look() -> tuple[Volume, int]:
            return volumes.get(name), volumes.size(name)

        found, size = await anyio.to_thread.run_sync(look)
        return _volume_json(found, users.get(name, []), size)

    async def remove_volume(self, name: str) -> schema.Volume:
        row = await self.volume(name)
        _refuse_while_named(f"volume {name}", row["containers"])
        await anyio.to_thread.run_sync(self.reconciler.store.volumes.remove, name)
        return row

    async def prune_volumes(self) -> schema.VolumePrune:
        removed = []
        for row in await self.volumes():
            if not row["containers"]:
                with contextlib.suppress(VolumeNotFound):
                    removed.append(await self.remove_volume(row["name"]))
        return {"removed": removed}

    # -- secrets ---------------------------------------------------------------

    async def secrets(self) -> list[schema.Secret]:
        users = self._secret_users()
        found = await anyio.to_thread.run_sync(self.reconciler.store.secrets.list)
        return [_secret_json(secret, users.get(secret.name, [])) for secret in found]

    async def create_secret(self, name: str, value: AsyncIterator[bytes]) -> schema.Secret:
        data = bytearray()
        async for chunk in value:
            data.extend(chunk)
            if len(data) > MAX_SECRET_BYTES:
                raise LayerError(
                    f"secret {name}: the value is more than {MAX_SECRET_BYTES} bytes; "
                    f"at most {MAX_SECRET_BYTES} (512 KiB)"
                )
        store = self.reconciler.store.secrets
        made = await anyio.to_thread.run_sync(store.create, name, bytes(data))
        self.reconciler.trigger()  # who waits for it starts; who uses it is replaced
        return _secret_json(made, self._secret_users().get(name, []))

    async def remove_secret(self, name: str) -> schema.Secret:
        store = self.reconciler.store.secrets
        found = await anyio.to_thread.run_sync(store.get, name)
        _refuse_while_named(f"secret {name}", self._secret_users().get(name, []))
        await anyio.to_thread.run_sync(store.remove, name)
        return _secret_json(found, [])

    async def export_volume(self, name: str, fd: int) -> None:
        volumes = self.reconciler.store.volumes

        def export() -> None:
            with os.fdopen(fd, "wb") as sink:
                volumes.export(name, sink)

        try:
            await anyio.to_thread.run_sync(export)
        except OSError as exc:  # closing it, when the reader went away
            raise LayerError(f"cannot export volume {name}: {exc}") from exc

    async def import_volume(self, name: str, archive: AsyncIterator[bytes]) -> schema.Volume:
        mounted = sorted(
            container
            for container, record in self.reconciler.records.items()
            if record.running
            and record.applied is not None
            and any(volume.name == name for volume in record.applied.volumes)
        )
        if mounted:
            raise RuntimeFailure(
                f"volume {name} is mounted by {', '.join(mounted)}; "
                "stop them first (squish stop), then import"
            )
        volumes = self.reconciler.store.volumes
        what = f"the archive for volume {name}"
        try:
            volumes.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            upload = tempfile.NamedTemporaryFile(dir=volumes.root, prefix=".upload-")  # noqa: SIM115
        except OSError as exc:
            raise LayerError(f"cannot receive the archive for volume {name}: {exc}") from exc
        with upload:
            await receive_archive(archive, upload, what=what)
            await anyio.to_thread.run_sync(
                functools.partial(volumes.import_archive, name, Path(upload.name), label=what)
            )
        return await self.volume(name)

    def log_path(self, ref: str) -> Path:
        try:
            name = self.reconciler.resolve(ref)
        except ContainerNotFound:
            if not self.reconciler.log_kept(ref):
                raise
            name = ref  # deleted, its log still kept (see LOG_GRACE)
        return self.reconciler.log_dir / f"{name}.log"

    def _manifest_path(self, name: str) -> Path:
        return self.reconciler.manifests_dir / f"{name}.toml"

    def _store(self, name: str, data: bytes) -> tuple[Squishfile, bytes | None]:
        """Validate and atomically write ``<name>.toml``; returns the old bytes."""
        path = self._manifest_path(name)
        squishfile = parse_squishfile(
            data, file=str(path), name=name, paths=host_paths(self.reconciler.manifests_dir)
        )
        previous = path.read_bytes() if path.exists() else None
        self.reconciler.manifests_dir.mkdir(parents=True, exist_ok=True)
        # Written under a dot-name the source ignores, then renamed into
        # place: the watcher never sees a half-written manifest.
        temporary = self.reconciler.manifests_dir / f".{name}.toml.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        temporary.rename(path)
        self.reconciler.wanted_again(name)
        self.reconciler.save_stops()
        return squishfile, previous

    def _restore(self, name: str, previous: bytes | None) -> str:
        """Put back what ``<name>.toml`` held before a failed create; say what was done."""
        path = self._manifest_path(name)
        if previous is None:
            path.unlink(missing_ok=True)
            return f"{path} was removed again"
        temporary = self.reconciler.manifests_dir / f".{name}.toml.{os.getpid()}.tmp"
        temporary.write_bytes(previous)
        temporary.rename(path)
        return f"the previous {path} was put back"

    async def create(self, name: str, manifest: bytes, *, timeout: float) -> schema.Container:
        squishfile, previous = self._store(name, manifest)
        spec_hash = squishfile.spec_hash()
        rounds = self.reconciler.rounds
        # A full round for what changes files (create, apply, delete): the
        # source reads everything again rather than wait for its watcher.
        self.reconciler.trigger()

        try:
            result: ContainerStatus | SquishError = await self.reconciler.wait_for(
                lambda: self.reconciler.start_outcome(name, spec_hash, since=rounds), timeout
            )
        except TimeoutError:
            undone = self._restore(name, previous)
            self.reconciler.trigger()
            raise RuntimeFailure(f"{name}: not running after {timeout:g} s; {undone}") from None
        if isinstance(result, SquishError):
            undone = self._restore(name, previous)
            self.reconciler.trigger()
            raise _noted(result, undone) from None
        # A container that dies at once (no such command, a layer bwrap
        # cannot mount) is a failed create, not a crash loop to watch.
        with anyio.move_on_after(_EARLY_EXIT):
            await self.reconciler.wait_for(
                lambda: self.reconciler.exited_early(name), _EARLY_EXIT + 1
            )
        if (reason := self.reconciler.exited_early(name)) is not None:
            undone = self._restore(name, previous)
            self.reconciler.trigger()
            raise RuntimeFailure(f"{name}: {reason}; {undone}")
        return self._row(name)

    async def apply(self, name: str, manifest: bytes) -> schema.Container:
        self._store(name, manifest)
        self.reconciler.trigger()
        return self._row(name)

    async def stop(self, ref: str) -> schema.Container:
        name = self.reconciler.resolve(ref)
        was_stopped = self.reconciler.mark_stopped(name)
        record = self.reconciler.record(name)
        self.reconciler.save_stops()
        if not was_stopped and not record.running and not record.in_flight:
            self.reconciler.emit(
                "container.stopped", name, "stopped by the user (it was not running)"
            )
        # plan() halts it (level-triggered: also what a start in flight
        # brings up once it is done); wait until it has.
        self.reconciler.trigger({name})
        try:
            await self.reconciler.wait_for(
                lambda: None if record.running or record.in_flight else True, _BUSY_WAIT
            )
        except TimeoutError:
            raise RuntimeFailure(
                f"{name}: still busy after {_BUSY_WAIT:g} s (starting or stopping); "
                "it is marked stopped and stops when that ends"
            ) from None
        return self._row(name)

    async def start(self, ref: str, *, timeout: float) -> schema.Container:
        name = self.reconciler.resolve(ref)
        record = self.reconciler.records.get(name)
        manifest = self.reconciler.desired.get(name)
        if manifest is None:
            raise ContainerNotFound(
                f"{name}: its squishfile is gone from the sources; nothing to start"
            )
        if manifest.squishfile is None:
            raise RuntimeFailure(str(manifest.error))
        if record is not None and record.running:
            if self.reconciler.mark_stopped(name, stopped=False):
                self.reconciler.save_stops()
            return self._row(name)
        self.reconciler.wanted_again(name, forget_exit=True)
        self.reconciler.save_stops()
        rounds = self.reconciler.rounds
        self.reconciler.trigger({name})
        spec_hash = manifest.squishfile.spec_hash()

        result: ContainerStatus | SquishError = await self.reconciler.wait_for(
            lambda: self.reconciler.start_outcome(name, spec_hash, since=rounds), timeout
        )
        if isinstance(result, SquishError):
            raise result
        return result.to_json(self.reconciler.default_host_ip)

    async def delete(self, ref: str) -> schema.Container:
        name = self.reconciler.resolve(ref)
        path = self._manifest_path(name)
        row = self._row(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise SourceError(f"{name}: cannot remove {path}: {exc.strerror or exc}") from None
        self.reconciler.forget_pending_stop(name)
        rounds = self.reconciler.rounds
        self.reconciler.trigger()

        def outcome() -> str | None:
            """'' once it is gone; why not, once a round still wants it; None meanwhile."""
            if name not in self.reconciler.records:
                return ""
            if self.reconciler.rounds > rounds and name in self.reconciler.desired:
                # Its file is gone, yet the sources still want it: the prune
                # guard holds the directory, or it cannot be read.
                return self.reconciler.source_holding() or None
            return None

        try:
            reason = await self.reconciler.wait_for(outcome, _BUSY_WAIT)
        except TimeoutError:
            raise RuntimeFailure(
                f"{name}: {path} is removed, but it is still stopping after {_BUSY_WAIT:g} s; "
                "it will be stopped when that ends"
            ) from None
        if reason:
            raise SourceError(
                f"{name}: {path} is removed, but the container keeps running: {reason}"
            )
        return row


def _noted(error: SquishError, note: str) -> SquishError:
    """``error`` with ``; note`` added, of the same kind where its class allows."""
    if isinstance(error, ManifestError):
        return ManifestError(
            error.file, f"{error.message}; {note}", field=error.field, line=error.line
        )
    try:
        return type(error)(f"{error}; {note}")
    except TypeError:  # a class with other constructor arguments
        return RuntimeFailure(f"{error}; {note}")


def _refuse_while_named(what: str, users: list[str]) -> None:
    """Removing ``what`` is refused while squishfiles (``users``) name it."""
    if users:
        raise RuntimeFailure(
            f"{what} is used by {', '.join(users)}; "
            "remove it from those squishfiles (or remove them) first"
        )


def _volume_json(volume: Volume, containers: list[str], size: int | None) -> schema.Volume:
    return {
        "name": volume.name,
        "path": str(volume.path),
        "created_at": volume.created_at,
        "containers": containers,
        "size": size,
    }


def _secret_json(secret: Secret, containers: list[str]) -> schema.Secret:
    """A secret as the API shows it: never its value."""
    return {"name": secret.name, "created_at": secret.created_at, "containers": containers}


def _health_json(state: HealthState | None) -> schema.HealthDetail | None:
    if state is None:
        return None
    return {
        "status": state.status,
        "failing_streak": state.failing_streak,
        "log": [
            {"start": c.start, "end": c.end, "exit_code": c.exit_code, "output": c.output}
            for c in state.log
        ],
    }


def _network_json(name: str, named_by: list[str], wired: NetworkInfo | None) -> schema.Network:
    return {
        "name": name,
        "subnet": wired.subnet if wired else None,
        "gateway": wired.gateway if wired else None,
        "containers": named_by,
        "members": [
            {"name": member, "address": address}
            for member, address in (wired.members.items() if wired else ())
        ],
    }


def _layer_json(layer: Layer) -> schema.LayerSpec:
    return {
        "name": layer.name,
        "version": layer.version,
        "path": None if layer.path is None else str(layer.path),
        "target": layer.target,
        "rw": layer.rw,
        "sha256": layer.sha256,
    }


def _squishfile_json(squishfile: Squishfile) -> schema.Squishfile:
    return {
        "name": squishfile.name,
        "base": None if squishfile.base is None else _layer_json(squishfile.base),
        "layers": [_layer_json(layer) for layer in squishfile.layers],
        "command": squishfile.command,
        "args": list(squishfile.args),
        "workdir": squishfile.workdir,
        "env": dict(squishfile.env),
        "ports": [
            {
                "container": port.container,
                "host": port.host,
                "protocol": port.protocol,
                "host_ip": port.host_ip,
            }
            for port in squishfile.ports
        ],
        "network": squishfile.network,
        "networks": list(squishfile.networks),
        "restart": squishfile.restart,
        "health": None
        if squishfile.health is None
        else {
            "command": list(squishfile.health.command),
            "http": None
            if (http := squishfile.health.http) is None
            else {"port": http.port, "path": http.path, "headers": dict(http.headers)},
            "tcp": squishfile.health.tcp,
            "interval": squishfile.health.interval,
            "timeout": squishfile.health.timeout,
            "retries": squishfile.health.retries,
            "start_period": squishfile.health.start_period,
            "on_failure": squishfile.health.on_failure,
        },
        "placement": {
            "nodes": list(squishfile.placement.nodes),
            "labels": dict(squishfile.placement.labels),
        },
    }
