"""The daemon's control surface: what the API serves and the CLI shows.

The reconciler implements ``ControlPlane``; the HTTP API (``squish.api``)
translates requests into calls on it and never reaches past it, so the API
can be tested against ``FakeControlPlane``-style stand-ins and the
reconciler without HTTP. Everything here is plain data that serialises to
JSON with ``to_json``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from anyio.streams.memory import MemoryObjectReceiveStream

from squish.runtime import PortForward


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["ports"] = [asdict(port) for port in self.ports]
        return data


@dataclass(frozen=True)
class Event:
    """Something that happened, for ``squish events`` and the daemon log.

    ``kind`` is dotted: ``container.started``, ``container.exited``,
    ``container.stopped``, ``container.failed``, ``container.backoff``,
    ``container.ports``, ``manifest.invalid``, ``manifest.removed``,
    ``reconcile.error``.
    """

    kind: str
    name: str
    message: str
    at: float = field(default_factory=time.time)
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "message": self.message,
            "at": self.at,
            **dict(self.fields),
        }


class ControlPlane(Protocol):
    """What the API can ask of the daemon.

    Errors a user caused raise ``SquishError`` subclasses whose message is the
    one line to show: ``ManifestError`` for a bad squishfile,
    ``ContainerNotFound`` for an unknown name, ``RuntimeFailure`` or
    ``LayerError`` for a container that cannot start.
    """

    def status(self) -> dict[str, Any]:
        """Version, uptime, manifest directory, counts per phase."""
        ...

    def containers(self) -> list[ContainerStatus]: ...

    def inspect(self, name: str) -> dict[str, Any]:
        """Everything about one container: status, manifest, resolved layers, last error."""
        ...

    async def create(self, name: str, manifest: bytes, *, timeout: float) -> ContainerStatus:
        """Store ``manifest`` as ``<name>.toml`` and wait until it runs or fails.

        Fails fast (without waiting through restarts) when the manifest is
        invalid or the container cannot start; the stored manifest is then
        removed again, and whatever ran under that name before keeps running.
        """
        ...

    async def apply(self, name: str, manifest: bytes) -> ContainerStatus:
        """Store ``manifest`` as ``<name>.toml`` without waiting (like kubectl apply)."""
        ...

    async def stop(self, prefix: str) -> list[ContainerStatus]:
        """Stop every container whose id or name starts with ``prefix``."""
        ...

    async def start(self, name: str, *, timeout: float) -> ContainerStatus:
        """Start a stopped container again (it runs under a new id)."""
        ...

    async def delete(self, name: str) -> ContainerStatus:
        """Remove the manifest; its container stops."""
        ...

    def log_path(self, name: str) -> Path: ...

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        """Every event from now on, until the subscription is closed."""
        ...
