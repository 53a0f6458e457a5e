"""A ControlPlane stand-in for the API and CLI tests (tests/test_api.py, test_cli_client.py).

It keeps statuses in a dict, records every call, validates manifests with
the real parser (so a bad one fails as the daemon's would), writes no
containers, and hands out events through anyio memory streams. ``fail_next``
makes the next mutating call raise, to test how errors travel.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from squish.control import ContainerStatus, Event, Phase
from squish.errors import ContainerNotFound
from squish.manifest import parse_squishfile


def make_id(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


class FakeControlPlane:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.statuses: dict[str, ContainerStatus] = {}
        self.manifests: dict[str, bytes] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail_next: Exception | None = None
        self.subscribers: list[MemoryObjectSendStream[Event]] = []
        self._serial = itertools.count(1)

    # -- seeding, for tests ---------------------------------------------------

    def add(self, name: str, phase: Phase = Phase.RUNNING, **fields: Any) -> ContainerStatus:
        if phase is Phase.RUNNING:
            fields.setdefault("id", make_id(name))
            fields.setdefault("pid", 1000 + len(self.statuses))
            fields.setdefault("started_at", time.time() - 75)
        status = ContainerStatus(name=name, phase=phase, manifest=f"{name}.toml", **fields)
        self.statuses[name] = status
        return status

    def publish(self, event: Event) -> None:
        for send in list(self.subscribers):
            try:
                send.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.WouldBlock):
                send.close()
                self.subscribers.remove(send)

    def live_subscribers(self) -> int:
        """Subscriptions whose receiving end is still open."""
        return sum(1 for send in self.subscribers if send.statistics().open_receive_streams)

    def close(self) -> None:
        for send in self.subscribers:
            send.close()
        self.subscribers.clear()

    def _check_failure(self) -> None:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure

    def _get(self, name: str) -> ContainerStatus:
        try:
            return self.statuses[name]
        except KeyError:
            raise ContainerNotFound(f"no container named {name!r}") from None

    # -- ControlPlane -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for status in self.statuses.values():
            counts[status.phase.value] = counts.get(status.phase.value, 0) + 1
        return {"version": "test", "manifests": str(self.root / "manifests"), "phases": counts}

    def containers(self) -> list[ContainerStatus]:
        self._check_failure()
        return [replace(status) for status in self.statuses.values()]

    def inspect(self, name: str) -> dict[str, Any]:
        status = self._get(name)
        return {
            "status": status.to_json(),
            "manifest": self.manifests.get(name, b"").decode(),
            "layers": [],
        }

    def _store(self, name: str, manifest: bytes) -> None:
        parse_squishfile(manifest, file=f"{name}.toml", base_dir=self.root / "manifests", name=name)
        self.manifests[name] = manifest

    async def create(self, name: str, manifest: bytes, *, timeout: float) -> ContainerStatus:
        self.calls.append(("create", name, manifest, timeout))
        self._check_failure()
        self._store(name, manifest)
        status = self.add(name, id=make_id(f"{name}-{next(self._serial)}"))
        self.publish(Event("container.started", name, f"started {status.id}"))
        return replace(status)

    async def apply(self, name: str, manifest: bytes) -> ContainerStatus:
        self.calls.append(("apply", name, manifest))
        self._check_failure()
        self._store(name, manifest)
        status = self.add(name, Phase.PENDING)
        return replace(status)

    async def stop(self, prefix: str) -> list[ContainerStatus]:
        self.calls.append(("stop", prefix))
        self._check_failure()
        stopped = []
        for status in self.statuses.values():
            if status.phase is not Phase.RUNNING:
                continue
            if status.name.startswith(prefix) or (status.id or "").startswith(prefix):
                status.phase = Phase.STOPPED
                status.pid = None
                status.reason = "stopped by the user"
                stopped.append(replace(status))
        return stopped

    async def start(self, name: str, *, timeout: float) -> ContainerStatus:
        self.calls.append(("start", name, timeout))
        self._check_failure()
        old = self._get(name)
        status = self.add(name, id=make_id(f"{name}-{next(self._serial)}"), restarts=old.restarts)
        return replace(status)

    async def delete(self, name: str) -> ContainerStatus:
        self.calls.append(("delete", name))
        self._check_failure()
        status = self._get(name)
        del self.statuses[name]
        self.manifests.pop(name, None)
        return replace(status, phase=Phase.STOPPED, pid=None)

    def log_path(self, name: str) -> Path:
        self._get(name)
        return self.log_dir / f"{name}.log"

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        send, receive = anyio.create_memory_object_stream[Event](100)
        self.subscribers.append(send)
        return receive
