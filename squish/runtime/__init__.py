"""The runtime: what turns a resolved container spec into a running container.

Everything above this package (the reconciler, the daemon, the CLI) talks to a
``Runtime``: start, stop, list, update ports, and a stream of exit events.
Two implementations ship in the package:

- ``squish.runtime.bwrap_runtime.BwrapRuntime``: the real one, driving
  bubblewrap for the namespaces and mounts and slirp4netns for the network.
- ``squish.runtime.fake.FakeRuntime``: in memory, with the same contract, for
  the reconciler's tests.

Below the real one, every call into the kernel but spawning goes through
``squish.runtime.kernel.Kernel`` (``LinuxKernel``; the recording fake
``squish.runtime.fake_kernel.RecordingKernel`` for its own tests).

Only this package touches subprocesses and namespaces.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from anyio.streams.memory import MemoryObjectReceiveStream

from squish.layers import Mount

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The whole environment of every process the runtime spawns (bwrap, which is
# the container's pid 1, slirp4netns, the UDP relay): nothing of the daemon's
# own environment (secrets, tokens, home) may be readable from a container.
HELPER_ENV = {"PATH": DEFAULT_PATH}
DEFAULT_HOST_IP = "127.0.0.1"
DEFAULT_TMP_SIZE = 64 * 1024 * 1024
DEFAULT_STOP_GRACE = 10.0
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_EXEC_TIMEOUT = 60.0
EXEC_OUTPUT_LIMIT = 64 * 1024  # what an exec keeps of its command's output, at most


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded into the container.

    ``host_ip`` None means the runtime's configured default bind address.
    """

    host: int
    container: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str | None = None

    def describe(self, default_ip: str = DEFAULT_HOST_IP) -> str:
        ip = self.host_ip or default_ip
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{self.host}->{self.container}/{self.protocol}"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the runtime needs to start one container; no manifest types.

    ``rootfs`` is mounted read-only at ``/``; ``mounts`` go at their targets.
    """

    name: str
    rootfs: Path
    command: str
    args: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortForward, ...] = ()
    network: bool = True
    workdir: str = "/"  # where the command starts (it must exist in the rootfs)
    uid: int = 0  # the command's user and group inside; 0 is the runtime's user outside
    gid: int = 0
    # Resource limits of its processes: (name, RLIMIT_*, soft, hard) each.
    rlimits: tuple[tuple[str, int, int, int], ...] = ()
    seccomp: bool = True  # the default seccomp filter (squish.runtime.seccomp); False: none
    # (key, host file): each value copied to /run/secrets/KEY, a tmpfs of its own, 0400.
    secrets: tuple[tuple[str, Path], ...] = ()
    # Named networks it joins (``squish.runtime.networks``); none: a
    # slirp4netns of its own, reachable only through its forwards.
    networks: tuple[str, ...] = ()
    tmp_size: int = DEFAULT_TMP_SIZE


class ContainerState(enum.StrEnum):
    """Where a container is in its life; only the runtime moves it forward."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"

    @property
    def can_stop(self) -> bool:
        return self in (ContainerState.STARTING, ContainerState.RUNNING)

    @property
    def can_update_ports(self) -> bool:
        return self is ContainerState.RUNNING


@dataclass
class Container:
    """A container as the runtime sees it (a snapshot; copy before handing out)."""

    id: str
    spec: ContainerSpec
    state: ContainerState
    started_at: float
    pid: int | None = None  # host pid of the command (pid 2 inside), when known
    init_pid: int | None = None  # host pid of the sandbox's pid 1
    ports: tuple[PortForward, ...] = ()
    exit_code: int | None = None
    finished_at: float | None = None
    log_path: Path | None = None
    # Its address on each of its named networks, in the spec's order.
    addresses: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class ExecResult:
    """A command run inside a running container (``Runtime.exec``).

    ``exit_code``: the command's (128+N for death by signal N); 124 when it
    was killed at its timeout (``timed_out``), 125 when the container could
    not be entered, 126 or 127 when the command could not be run or found.
    ``output``: its stdout and stderr together, at most ``EXEC_OUTPUT_LIMIT``
    bytes of it (``truncated`` says so), decoded as UTF-8 with replacements.
    """

    exit_code: int
    output: str
    seconds: float
    timed_out: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class Probe:
    """A health check the daemon makes itself (``Runtime.probe``): of ``port``
    on the container's own loopback, ``127.0.0.1``.

    Without ``http_path``, passing once a TCP connection is made. With it,
    a ``GET`` of that path (HTTP/1.1, ``Connection: close``, ``headers``
    added, a ``Host`` among them replacing ``127.0.0.1:PORT``), passing on a
    status from 200 to 399.
    """

    port: int
    http_path: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        where = f"127.0.0.1:{self.port}"
        return where if self.http_path is None else f"http://{where}{self.http_path}"


@dataclass(frozen=True)
class NetworkInfo:
    """A named network that has members, as the runtime wired it."""

    name: str
    subnet: str
    gateway: str
    members: Mapping[str, str]  # container name -> its address on this network


@dataclass(frozen=True)
class ExitEvent:
    """A container ended: by itself, by a signal, or because it was stopped.

    ``exit_code`` follows the shell convention: 128+N for death by signal N.
    ``stopped`` is true when the exit was asked for through ``stop``.
    """

    container_id: str
    name: str
    exit_code: int
    at: float
    stopped: bool
    reason: str = ""


class Runtime(Protocol):
    """What the reconciler needs from a container runtime.

    ``start`` returns once the sandbox is set up and the command released to
    run (after its network and port forwards are up); failures before that
    raise ``RuntimeFailure`` and leave nothing behind, and so does
    cancelling it: a caller gives a start its deadline by cancelling it, and
    the runtime bounds every wait of its clean-up. Every container that was
    started produces exactly one ``ExitEvent`` on every subscription; one
    the runtime ended by itself (its network helper died) says why in
    ``reason``. ``stop`` gives up, with ``RuntimeFailure``, on a container
    still there a few seconds after SIGKILL.
    """

    async def start(self, spec: ContainerSpec) -> Container: ...

    async def stop(self, container_id: str, *, grace: float = DEFAULT_STOP_GRACE) -> Container: ...

    def list(self) -> list[Container]: ...

    def ids(self) -> Set[str]:
        """The ids of the containers it runs now: a live view, at no cost."""
        ...

    async def update_ports(self, container_id: str, ports: Sequence[PortForward]) -> Container: ...

    async def exec(
        self, container_id: str, argv: Sequence[str], *, timeout: float = DEFAULT_EXEC_TIMEOUT
    ) -> ExecResult:
        """Run ``argv`` inside the running container: its namespaces, root and env, no
        capabilities; killed (with what it started) at ``timeout``."""
        ...

    async def probe(self, container_id: str, probe: Probe, *, timeout: float) -> ExecResult:
        """Check the running container's port from its own network namespace, within
        ``timeout``, with no process started in it (``squish.runtime.probes``)."""
        ...

    def subscribe(self) -> MemoryObjectReceiveStream[ExitEvent]: ...

    def networks(self) -> tuple[NetworkInfo, ...]:
        """The named networks with members now, and their addresses."""
        ...

    def network_sizes(self) -> Mapping[str, int]:
        """How many containers are on each named network; safe from any thread."""
        ...
