"""The daemon's control surface: what the API serves and the CLI shows.

The reconciler implements ``ControlPlane``; the HTTP API (``squish.daemon.api``)
translates requests into calls on it and never reaches past it. The API's
tests drive the real reconciler (on the in-package fake runtime), so what
they check is what the daemon answers. Answers are the shapes of
:mod:`squish.api_schema`, the one definition the server, the client and the
tests share.

Containers are named by *reference*, as podman does: an exact container
name, or a prefix of a container id that only one container has. An
ambiguous prefix is :class:`~squish.errors.AmbiguousName` (naming the
candidates) and touches nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from anyio.streams.memory import MemoryObjectReceiveStream

from squish import api_schema as schema
from squish.reconcile.status import Event


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
