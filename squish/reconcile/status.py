"""What the reconciler reports: each container's phase and status, and events.

Made by ``squish.reconcile.reconciler``, served by the daemon's control
plane (``squish.daemon.control``) and shown by the CLI. Everything here
serialises with ``to_json`` to the shapes of :mod:`squish.api_schema`, the
one definition the server, the client and the tests share.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from squish import api_schema as schema
from squish.reconcile.health import HealthStatus
from squish.runtime import DEFAULT_HOST_IP, PortForward


class Phase(enum.StrEnum):
    """Where a named container stands, as ``squish ps -a`` shows it."""

    PENDING = "pending"  # wanted, not started yet (layers resolving, starting)
    RUNNING = "running"
    STOPPED = "stopped"  # stopped by the user (squish stop); stays so until start or an edit
    EXITED = "exited"  # ended by itself, restart policy says no more (exit 0 with on-failure)
    FAILED = "failed"  # cannot start (bad layer, port conflict), or ended and policy says never
    BACKOFF = "backoff"  # ended, waiting to be restarted (crash loop)
    WAITING = "waiting"  # waits for a dependency to meet its condition ([depends_on])
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
    networks: Mapping[str, str] = field(default_factory=dict)  # network -> address (running)
    # When it runs and its squishfile has [health].
    health: HealthStatus | None = None

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
            "networks": dict(self.networks),
            "health": self.health,
        }


@dataclass(frozen=True)
class Event:
    """Something that happened, for ``squish events`` and the daemon log.

    ``kind`` is dotted: ``container.started``, ``container.exited``,
    ``container.stopped``, ``container.failed``, ``container.backoff``,
    ``container.ports``, ``container.health``, ``container.waiting``,
    ``manifest.invalid``, ``manifest.removed``,
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
