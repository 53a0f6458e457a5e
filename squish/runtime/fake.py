"""An in-memory runtime with the real one's contract, for tests above it.

The reconciler's tests drive this instead of bwrap: containers "run" until
a test makes them exit (``crash``) or they are stopped, ports are checked for
conflicts between containers, and every call is recorded in ``calls`` so a
test can assert on what the reconciler asked for. Failures can be scripted
per container name: ``fail_next_start`` (a start that fails), ``hang_next_start``
(one that never finishes until cancelled, as a start stuck in a hung mount)
and ``crash`` with a ``reason`` (an exit the runtime caused, as the real one
does when a container's slirp4netns dies).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import replace

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from squish.broadcast import Broadcast
from squish.errors import ContainerNotFound, PortInUse, RuntimeFailure
from squish.runtime import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_HOST_IP,
    DEFAULT_STOP_GRACE,
    Container,
    ContainerSpec,
    ContainerState,
    ExecResult,
    ExitEvent,
    NetworkInfo,
    PortForward,
    Probe,
)
from squish.runtime.networks import NetworkBook


class FakeRuntime:
    """Containers as dictionary entries; exits delivered like the real thing."""

    def __init__(self, *, default_host_ip: str = DEFAULT_HOST_IP) -> None:
        self.default_host_ip = default_host_ip
        self.calls: list[tuple[str, str]] = []
        self._live: dict[str, Container] = {}
        self._exits = Broadcast[ExitEvent]()
        self._failures: dict[str, RuntimeFailure] = {}
        self._hangs: set[str] = set()
        self._pids = itertools.count(1000)
        # The real runtime's bookkeeping of named networks, without the wiring.
        self._book = NetworkBook()
        # What exec answers, by container name (default: exit 0, no output);
        # an exception is raised, as the real one's when it cannot spawn.
        self.exec_results: dict[str, ExecResult | RuntimeFailure] = {}
        # The same for the daemon's own checks (probe), by container name.
        self.probe_results: dict[str, ExecResult | RuntimeFailure] = {}

    async def __aenter__(self) -> FakeRuntime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Like the real runtime: stop everything, end every subscription."""
        for container_id in list(self._live):
            await self.stop(container_id)
        self._exits.close()

    def fail_next_start(self, name: str, error: RuntimeFailure) -> None:
        self._failures[name] = error

    def hang_next_start(self, name: str) -> None:
        """The next start of ``name`` never returns; cancelled, it leaves nothing."""
        self._hangs.add(name)

    def subscribe(self) -> MemoryObjectReceiveStream[ExitEvent]:
        return self._exits.subscribe()

    def list(self) -> list[Container]:
        return [replace(container) for container in self._live.values()]

    def ids(self) -> Set[str]:
        return self._live.keys()

    def networks(self) -> tuple[NetworkInfo, ...]:
        return self._book.networks()

    def network_sizes(self) -> Mapping[str, int]:
        return self._book.sizes

    def _held_ports(self, exclude: str | None = None) -> set[tuple[str, int, str]]:
        return {
            (port.host_ip or self.default_host_ip, port.host, port.protocol)
            for container in self._live.values()
            if container.id != exclude
            for port in container.ports
        }

    def _check_ports(self, ports: Sequence[PortForward], exclude: str | None = None) -> None:
        held = self._held_ports(exclude)
        for port in ports:
            if (port.host_ip or self.default_host_ip, port.host, port.protocol) in held:
                raise PortInUse(f"host port {port.describe(self.default_host_ip)}: in use")

    async def start(self, spec: ContainerSpec) -> Container:
        self.calls.append(("start", spec.name))
        await anyio.lowlevel.checkpoint()
        if spec.name in self._failures:
            raise self._failures.pop(spec.name)
        if spec.name in self._hangs:
            self._hangs.discard(spec.name)
            await anyio.sleep_forever()
        if spec.ports and not spec.network:
            raise RuntimeFailure(f"{spec.name}: ports need a network, but network is 'none'")
        self._check_ports(spec.ports)
        container_id = secrets.token_hex(32)
        addresses = self._book.reserve(container_id, spec.name, spec.networks)
        container = Container(
            id=container_id,
            spec=spec,
            state=ContainerState.RUNNING,
            started_at=time.time(),
            pid=next(self._pids),
            init_pid=next(self._pids),
            ports=tuple(dict.fromkeys(spec.ports)),
            addresses=addresses,
        )
        self._live[container.id] = container
        return replace(container)

    def _get(self, container_id: str) -> Container:
        try:
            return self._live[container_id]
        except KeyError:
            raise ContainerNotFound(f"no running container {container_id[:12]}") from None

    def _exit(
        self, container: Container, exit_code: int, *, stopped: bool, reason: str = ""
    ) -> None:
        container.state = ContainerState.EXITED
        container.exit_code = exit_code
        container.finished_at = time.time()
        del self._live[container.id]
        self._book.release(container.id)
        event = ExitEvent(
            container.id, container.name, exit_code, container.finished_at, stopped, reason
        )
        self._exits.publish(event)

    def crash(self, container_id: str, exit_code: int = 1, *, reason: str = "") -> None:
        """Make a container exit by itself, as if its command had died.

        ``reason`` is what the real runtime says when it ended the container
        itself ("its network helper slirp4netns was killed by SIGKILL").
        """
        self._exit(self._get(container_id), exit_code, stopped=False, reason=reason)

    def vanish(self, container_id: str) -> None:
        """Make a container exit with its exit event lost (what only a resync sees)."""
        del self._live[container_id]
        self._book.release(container_id)

    async def stop(self, container_id: str, *, grace: float = DEFAULT_STOP_GRACE) -> Container:
        self.calls.append(("stop", container_id))
        container = self._get(container_id)
        await anyio.lowlevel.checkpoint()
        self._exit(container, 143, stopped=True)
        return replace(container)

    async def exec(
        self, container_id: str, argv: Sequence[str], *, timeout: float = DEFAULT_EXEC_TIMEOUT
    ) -> ExecResult:
        """What ``exec_results`` says for the container's name, as the real one would."""
        self.calls.append(("exec", container_id))
        container = self._get(container_id)
        if not argv:
            raise RuntimeFailure(f"{container.name}: exec needs a command")
        await anyio.lowlevel.checkpoint()
        result = self.exec_results.get(container.name, ExecResult(0, "", 0.0))
        if isinstance(result, RuntimeFailure):
            raise result
        return result

    async def probe(self, container_id: str, probe: Probe, *, timeout: float) -> ExecResult:
        """What ``probe_results`` says for the container's name, as the real one would."""
        self.calls.append(("probe", container_id))
        container = self._get(container_id)
        await anyio.lowlevel.checkpoint()
        result = self.probe_results.get(
            container.name, ExecResult(0, f"connected to {probe.describe()}\n", 0.0)
        )
        if isinstance(result, RuntimeFailure):
            raise result
        return result

    async def update_ports(self, container_id: str, ports: Sequence[PortForward]) -> Container:
        self.calls.append(("update_ports", container_id))
        container = self._get(container_id)
        if ports and not container.spec.network:
            raise RuntimeFailure(f"{container.name}: ports need a network, but network is 'none'")
        self._check_ports(ports, exclude=container_id)
        await anyio.lowlevel.checkpoint()
        container.ports = tuple(dict.fromkeys(ports))
        return replace(container)
