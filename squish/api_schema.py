"""Every shape the daemon's API sends or accepts: the one definition of each.

The server (:mod:`squish.daemon.api`, through :mod:`squish.reconcile.reconciler` and the
admin modules) builds its answers as these dictionaries, the client
(:mod:`squish.cli.client`, and so the ``squish`` command) reads them as these
types, and the tests check real answers against them. The server also turns
them into the JSON Schemas of its OpenAPI document (``GET /v1/openapi.json``)
with pydantic, which validates request bodies against the same types.

They are ``TypedDict`` on purpose: to the client they are plain ``dict``
with static types, so ``squish ps`` pays for no validation library at start.
pydantic needs ``typing_extensions.TypedDict`` before Python 3.12.

Conventions: times are Unix seconds (floats); a field that has no value is
``null``, never missing, unless it is ``NotRequired`` below.
"""

from __future__ import annotations

from typing import Literal, NotRequired

from typing_extensions import TypedDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Container, layer, version and source names in paths: they become file names."""

PhaseName = Literal[
    "pending", "running", "stopped", "exited", "failed", "backoff", "waiting", "invalid"
]
Protocol = Literal["tcp", "udp"]


class Error(TypedDict):
    """Every error answer: one line a user can act on."""

    error: str
    candidates: NotRequired[list[str]]
    """For an ambiguous id prefix (409): the names of the containers it could mean."""


# -- containers -------------------------------------------------------------


class Port(TypedDict):
    """A published port; ``host_ip`` is the address really bound (never null in answers)."""

    host: int
    container: int
    protocol: Protocol
    host_ip: str | None


class Container(TypedDict):
    """One squishfile's container: a row of ``squish ps``."""

    name: str
    phase: PhaseName
    manifest: str
    """The squishfile's path (or where it would be)."""
    id: str | None
    """The current (or last) container's id."""
    pid: int | None
    started_at: float | None
    restarts: int
    ports: list[Port]
    exit_code: int | None
    reason: str
    """Why it is not running, or the last exit; empty when there is nothing to say."""
    manifest_error: str | None
    """The squishfile is invalid (an older version may still run)."""
    next_restart_at: float | None
    spec_hash: str | None
    networks: dict[str, str]
    """Its address on each named network it is on, while it runs (network -> address)."""
    health: Literal["starting", "healthy", "unhealthy"] | None
    """While it runs, if its squishfile has ``[health]``."""


class LayerSpec(TypedDict):
    """A layer as a squishfile names it, resolved (a path or a version)."""

    name: str
    version: str | None
    path: str | None
    target: str
    rw: bool
    sha256: str | None


class ManifestPort(TypedDict):
    container: int
    host: int
    protocol: Protocol
    host_ip: str | None


class Placement(TypedDict):
    nodes: list[str]
    labels: dict[str, str]


class HttpCheckSpec(TypedDict):
    port: int
    path: str
    headers: dict[str, str]


class HealthSpec(TypedDict):
    """A squishfile's ``[health]``, in seconds: one of ``command`` (not empty), ``http``
    and ``tcp``."""

    command: list[str]
    http: HttpCheckSpec | None
    tcp: int | None
    """A port."""
    interval: float
    timeout: float
    retries: int
    start_period: float
    on_failure: str


class Squishfile(TypedDict):
    """A validated squishfile, as ``inspect`` shows what was applied and what is wanted."""

    name: str
    base: LayerSpec | None
    layers: list[LayerSpec]
    command: str
    args: list[str]
    workdir: str
    env: dict[str, str]
    ports: list[ManifestPort]
    network: str
    networks: list[str]
    restart: str
    health: HealthSpec | None
    placement: Placement


class Mount(TypedDict):
    source: str
    target: str
    rw: bool


class Mounts(TypedDict):
    """What the running container was built from: its rootfs and its binds."""

    rootfs: str
    mounts: list[Mount]


class HealthCheck(TypedDict):
    """One health check: when it ran (Unix seconds), its exit status, its first lines."""

    start: float
    end: float
    exit_code: int
    output: str


class HealthDetail(TypedDict):
    status: Literal["starting", "healthy", "unhealthy"]
    failing_streak: int
    """Consecutive failed checks (that counted) until now."""
    log: list[HealthCheck]
    """The last 5 checks, oldest first."""


class ContainerDetail(Container):
    """``squish inspect``: the row and everything behind it."""

    applied: Squishfile | None
    """What the current (or last) container was started from."""
    desired: Squishfile | None
    """What the squishfile says now (null while it is invalid)."""
    layers: Mounts | None
    log: str
    """The log file on the daemon's host."""
    last_error: str | None
    stopped_by_user: bool
    health_checks: HealthDetail | None
    """While it runs, if its squishfile has ``[health]``."""


class NetworkMember(TypedDict):
    name: str
    """The container's name (its name on the network, too)."""
    address: str


class Network(TypedDict):
    """A named network (``squish network ls``, ``inspect``); it exists while named."""

    name: str
    subnet: str | None
    """While some member runs: its addresses come from this subnet."""
    gateway: str | None
    containers: list[str]
    """The squishfiles that name it."""
    members: list[NetworkMember]
    """The containers on it now, by address."""


class Volume(TypedDict):
    """A named volume of the node (``squish volume ls``, ``inspect``)."""

    name: str
    path: str
    """The host directory containers mount."""
    created_at: float
    containers: list[str]
    """The squishfiles that name it (its last good version, for an invalid one)."""
    size: int | None
    """Bytes of its files (``inspect``; ``None`` in a listing: walking every volume
    costs)."""


class VolumePrune(TypedDict):
    removed: list[Volume]
    """The volumes no squishfile named, removed (with their size then)."""


class Secret(TypedDict):
    """A node secret (``squish secret ls``): its name and users, never its value."""

    name: str
    created_at: float
    """When its value was last set."""
    containers: list[str]
    """The squishfiles that name it."""


class Event(TypedDict):
    """One line of ``squish events``.

    ``kind`` is dotted: ``container.started``, ``container.exited``,
    ``container.stopped``, ``container.failed``, ``container.ports``,
    ``manifest.invalid``, ``manifest.valid``, ``manifest.removed``,
    ``source.failed``, ``source.recovered`` (``name`` is then the source's).
    """

    kind: str
    name: str
    message: str
    at: float
    id: NotRequired[str]
    code: NotRequired[int | None]
    file: NotRequired[str]


class DaemonStatus(TypedDict):
    """``squish status``."""

    version: str
    pid: int
    uptime: float
    manifests: str
    """The watched directory."""
    containers: dict[str, int]
    """How many containers are in each phase (every phase, 0 included)."""
    node: NotRequired[str]
    labels: NotRequired[dict[str, str]]
    default_base: NotRequired[str]


# -- layers and sources -----------------------------------------------------


class LayerInfo(TypedDict):
    """One entry of the layer cache (``squish layer ls``)."""

    kind: str
    name: str
    version: str
    entry: str
    path: str
    sha256: str
    source: str
    size: int
    used_by: list[str]
    branch: str


class GcResult(TypedDict):
    removed: list[LayerInfo]


class Progress(TypedDict):
    done: int
    total: int | None


class PullLine(TypedDict):
    """One line of a pull's NDJSON stream: progress, then the layer or the error."""

    progress: NotRequired[Progress]
    layer: NotRequired[LayerInfo]
    error: NotRequired[str]


class SourceStatus(TypedDict):
    """Where a source stands (``squish sources``), in Flux's words."""

    name: str
    kind: str
    url: str
    ref: str
    path: str
    applied_revision: str | None
    attempted_revision: str | None
    last_sync: float | None
    last_attempt: float | None
    error: str | None
    held: str | None
    warning: str | None


# -- requests ---------------------------------------------------------------


class CreateRequest(TypedDict):
    """``POST /v1/containers``: store a squishfile under ``name``."""

    name: str
    manifest: str
    """The squishfile's TOML text."""
    wait: NotRequired[bool]
    """Wait until it runs or fails (``create``; default), or not (``apply``)."""
    timeout: NotRequired[float]


class StartRequest(TypedDict):
    timeout: NotRequired[float]


class ExecRequest(TypedDict):
    """``POST /v1/containers/{ref}/exec``: run ``command`` inside the running container."""

    command: list[str]
    """The program and its arguments; no shell is involved."""
    timeout: NotRequired[float]
    """Seconds until it is killed, with what it started (default 30)."""


class ExecResult(TypedDict):
    """What a command run inside a container did."""

    exit_code: int
    """Its exit status; 128+N when killed by signal N, 124 at its timeout, 126 or 127
    when it could not be run or found."""
    output: str
    """Its stdout and stderr together (at most 64 KiB)."""
    seconds: float
    timed_out: bool
    truncated: bool


class PullRequest(TypedDict):
    name: str
    version: str
    sha256: NotRequired[str | None]


class SyncRequest(TypedDict):
    name: NotRequired[str | None]
