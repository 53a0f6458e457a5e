"""The daemon's control surface: what the API serves and the CLI shows.

The reconciler implements ``ControlPlane``; the HTTP API (``squish.api``)
translates requests into calls on it and never reaches past it. The API's
tests drive the real reconciler (on the in-package fake runtime), so what
they check is what the daemon answers. Everything here serialises with
``to_json`` to the shapes of :mod:`squish.api_schema`, the one definition
the server, the client and the tests share.

Containers are named by *reference*, as podman does: an exact container
name, or a prefix of a container id that only one container has. An
ambiguous prefix is :class:`~squish.errors.AmbiguousName` (naming the
candidates) and touches nothing.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from anyio.streams.memory import MemoryObjectReceiveStream

from squish import api_schema as schema
from squish.runtime import DEFAULT_HOST_IP, PortForward


class Phase(enum.StrEnum):
    """Where a named container stands, as ``squish ps -a`` shows it."""

    PENDING = "pending"  # wanted, not started yet (layers resolving, starting)
    RUNNING = "running"
    STOPPED = "stopped"  # stopped by the user (squish stop); stays so until start or an edit
    EXITED = "exited"  # ended by itself, restart policy says no more (exit 0 with on-failure)
    FAILED = "failed"  # cannot start (bad layer, port conflict), or ended and policy says never
    BACKOFF = "backoff"  # ended, waiting to be restarted (crash loop)
    INVALID = "invalid"  # its manifest is invalid and no earlier version runs


@dataclass
class ContainerStatus:
    """One manifest's container: the row of ``squish ps``."""

    name: str
    phase: Phase
    manifest: str  # the squishfile's path
    id: str | None = None  # the current (or last) container's id
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    ports: tuple[PortForward, ...] = ()
    exit_code: int | None = None
    reason: str = ""  # why it is not running, or the last exit
    manifest_error: str | None = None  # the manifest is invalid (an older version may run)
    next_restart_at: float | None = None
    spec_hash: str | None = None

    def to_json(self, default_host_ip: str = DEFAULT_HOST_IP) -> schema.Container:
        """The API's shape; a port bound to the runtime's default shows that address."""
        return {
            "name": self.name,
            "phase": self.phase.value,
            "manifest": self.manifest,
            "id": self.id,
            "pid": self.pid,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "ports": [
                {
                    "host": port.host,
                    "container": port.container,
                    "protocol": port.protocol,
                    "host_ip": port.host_ip or default_host_ip,
                }
                for port in self.ports
            ],
            "exit_code": self.exit_code,
            "reason": self.reason,
            "manifest_error": self.manifest_error,
            "next_restart_at": self.next_restart_at,
            "spec_hash": self.spec_hash,
        }


@dataclass(frozen=True)
class Event:
    """Something that happened, for ``squish events`` and the daemon log.

    ``kind`` is dotted: ``container.started``, ``container.exited``,
    ``container.stopped``, ``container.failed``, ``container.backoff``,
    ``container.ports``, ``manifest.invalid``, ``manifest.removed``,
    ``reconcile.error``, ``source.failed``, ``source.recovered`` (``name`` is
    then the source's).
    """

    kind: str
    name: str
    message: str
    at: float = field(default_factory=time.time)
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> schema.Event:
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "message": self.message,
            "at": self.at,
        }
        for key in ("id", "code", "file"):
            if key in self.fields:
                data[key] = self.fields[key]
        event: schema.Event = data  # type: ignore[assignment]  # checked by the tests
        return event


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

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        """Every event from now on, until the subscription is closed."""
        ...
