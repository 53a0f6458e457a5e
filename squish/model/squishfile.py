"""The squishfile model: parse, validate and resolve one manifest, and hash it.

A squishfile is the TOML manifest describing one container (its base rootfs,
layers, command, env and ports, and where in a fleet it may run; see DESIGN.md
and :mod:`squish.model.placement`). This module turns its bytes into an immutable
:class:`Squishfile`, or raises a :class:`~squish.errors.ManifestError`
listing every problem, each naming the file, the field path
(``ports[0].host``), the line it is on (found by :mod:`squish.model.toml_lines`,
as tomllib keeps no positions) and what to fix. It also computes the spec
hash the reconciler compares to decide between leaving a container alone,
updating its ports in place, and replacing it (:func:`diff_specs`).

Callers: the CLI (``squish validate``, ``create``), the sources (directory
and git) that feed desired state to the reconciler, and the layer store,
which resolves the :class:`Layer` values produced here to host paths.

The module is part of the pure core: it does no I/O. Where a path layer's
path leads is asked of a :data:`PathLookup` the caller passes in: on this
host, ``squish.model.host.host_paths`` (symlinks followed, the path must
exist), which ``squish.model.host.load_squishfile`` uses to read a file; in
a git repository, the git source's own (the path checked against the
repository's tree, the layer exported into the cache). Every source shares
this one parser. pydantic is used internally for the shape of the document
(unknown keys, types) and never leaks out: the public types are frozen
dataclasses and every pydantic error is translated to a ``ManifestError``
here.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import posixpath
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from squish.errors import ManifestError, ManifestProblem
from squish.model.duration import parse_duration
from squish.model.limits import LimitError, parse_limits
from squish.model.placement import (
    Placement,
    label_key_problem,
    label_value_problem,
    node_pattern_problem,
)
from squish.model.toml_lines import KeyLines

__all__ = [
    "MAX_ARGS",
    "MAX_ARGS_BYTES",
    "MAX_ENV_BYTES",
    "MAX_ENV_KEYS",
    "MAX_SQUISHFILE_BYTES",
    "Change",
    "Dependency",
    "Health",
    "HostPath",
    "Layer",
    "LayerPathError",
    "PathLookup",
    "Placement",
    "Port",
    "Squishfile",
    "VolumeMount",
    "diff_specs",
    "host_ip",
    "parse_squishfile",
    "too_big",
    "write_resolved_paths",
]

PortProtocol = Literal["tcp", "udp"]
RestartPolicy = Literal["always", "on-failure", "never"]
HealthAction = Literal["none", "restart"]
DependCondition = Literal["started", "healthy", "completed"]
DEPEND_CONDITIONS: tuple[DependCondition, ...] = ("started", "healthy", "completed")
Network = Literal["slirp4netns", "none"]
Seccomp = Literal["default", "unconfined"]

# Layers with these names are the base rootfs, mounted at "/".
BASE_LAYER_NAMES = ("alpine", "base")

# Bumped whenever the meaning of a hashed field changes, so that an upgraded
# daemon replaces containers whose spec it would now interpret differently.
_SPEC_SCHEMA = 1

_LAYER_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Versions end up in layer-store paths and download URLs, so they must not be
# able to climb out of a directory: no "/", and they start with a letter or digit.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# The container name becomes a hostname, a directory and a metrics label.
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PATH_PREFIXES = ("./", "../", "/")
_KERNEL_DIRS = ("proc", "sys", "dev")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

# Caps, checked before anything costly, like the kubelet's on a pod spec and
# Flux's on an artifact: a squishfile of tens of megabytes took seconds and
# hundreds of megabytes to parse, and its env could never have started.
MAX_SQUISHFILE_BYTES = 1 << 20
"""A squishfile is at most 1 MiB; a bigger one is refused before it is parsed."""
MAX_ENV_KEYS = 1000
"""At most this many [env] variables."""
MAX_ENV_BYTES = 128 << 10
"""At most this many bytes of [env] names and values (``NAME=value`` and a NUL
each). bwrap gets every variable on its command line, so this keeps its argv
far below the kernel's limits (ARG_MAX, usually 2 MiB, and 128 KiB a string)."""
MAX_ARGS = 1000
"""At most this many ``[run] args``."""
MAX_ARGS_BYTES = 128 << 10
"""At most this many bytes of ``[run] args`` (each with its NUL), for the same reason."""


# --------------------------------------------------------------------------
# Public model


@dataclass(frozen=True)
class Port:
    """One published port: ``host_ip:host`` on the host forwards to ``container``."""

    container: int
    host: int
    protocol: PortProtocol = "tcp"
    # None lets the runtime choose its default bind address.
    host_ip: str | None = None


@dataclass(frozen=True)
class Layer:
    """One read-only (or explicitly ``rw``) bind mount of the container.

    Exactly one of ``version`` (resolved by the layer store) and ``path`` (an
    absolute, resolved host path) is set. ``target`` is where it appears in the
    container, ``"/"`` for the base rootfs.
    """

    name: str
    version: str | None
    path: Path | None
    target: str
    rw: bool = False
    sha256: str | None = None

    @property
    def is_base(self) -> bool:
        return self.name in BASE_LAYER_NAMES


@dataclass(frozen=True)
class HttpCheck:
    """``[health] http``: a GET of ``path`` on the container's port, as the kubelet's httpGet.

    Healthy on a status from 200 to 399. ``headers`` are sent with it (a
    ``Host`` among them replaces the default, ``127.0.0.1:PORT``).
    """

    port: int
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Health:
    """``[health]``: a check of the container now and then, as compose's healthcheck.

    Exactly one way of checking: ``command``, run inside the container
    (compose's, podman's); ``http``, a GET of one of its ports; ``tcp``, a
    connection to one of its ports (the kubelet's httpGet and tcpSocket).
    The last two are made by the daemon from the container's own network
    namespace, with no process started in it.

    Seconds throughout. ``retries`` consecutive failures make it unhealthy;
    failures in the first ``start_period`` do not count (a success there
    does: healthy at once). ``on_failure = "restart"`` replaces an unhealthy
    container's process, counted as a restart, with a crash's back-off.
    """

    command: tuple[str, ...] = ()
    http: HttpCheck | None = None
    tcp: int | None = None  # a port
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    on_failure: HealthAction = "none"


@dataclass(frozen=True)
class Dependency:
    """One ``[depends_on]`` entry: start only once container ``name`` meets ``condition``.

    Compose's conditions: ``started`` (it runs), ``healthy`` (its ``[health]``
    check passed), ``completed`` (it exited with 0). ``restart``: when it is
    restarted or replaced, restart this one with it (once it meets the
    condition again).
    """

    name: str
    condition: DependCondition = "started"
    restart: bool = False


@dataclass(frozen=True)
class VolumeMount:
    """One ``[volumes]`` entry: the node's named volume ``name``, mounted at ``target``."""

    name: str
    target: str
    ro: bool = False


# A uid or gid inside the container: what a Linux uid can be, less the
# overflow ids (65534 is what unmapped files show as) and -1.
MAX_ID = 4294967294


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Squishfile:
    """A validated squishfile: everything that defines one container."""

    file: Path | None = None
    name: str
    base: Layer | None = None
    layers: tuple[Layer, ...] = ()
    command: str
    args: tuple[str, ...] = ()
    workdir: str = "/"  # where the command starts, inside the container
    uid: int = 0  # the process's user and group inside (0: root, the daemon's user outside)
    gid: int = 0
    # A read-only view in file order; excluded from __hash__ because a mapping
    # is not hashable (equality still compares it).
    env: Mapping[str, str] = field(default_factory=_empty_env, hash=False)
    ports: tuple[Port, ...] = ()
    network: Network = "slirp4netns"
    # Named networks of this node it joins, in the file's order (the first
    # carries its default route and its published ports).
    networks: tuple[str, ...] = ()
    # What to do when the command ends by itself (the kubelet's restartPolicy).
    restart: RestartPolicy = "always"
    health: Health | None = None
    # What must hold before it starts; not part of the spec (see _spec).
    depends_on: tuple[Dependency, ...] = ()
    # [limits]: (name, soft, hard) of each rlimit set, by name.
    limits: tuple[tuple[str, int, int], ...] = ()
    # [security] seccomp: the default filter, or none.
    seccomp: Seccomp = "default"
    # [volumes]: the node's named volumes it mounts, by name.
    volumes: tuple[VolumeMount, ...] = ()
    # [secrets]: (key, the node's secret's name): the value at /run/secrets/KEY.
    secrets: tuple[tuple[str, str], ...] = ()
    # Which nodes of a fleet may run it; not part of the spec (see _spec).
    placement: Placement = field(default_factory=Placement)

    def __post_init__(self) -> None:
        # Callers (fakes, tests) may pass lists and dicts; freeze them so the
        # value really is immutable.
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        object.__setattr__(self, "limits", tuple(self.limits))
        object.__setattr__(self, "volumes", tuple(self.volumes))
        object.__setattr__(self, "secrets", tuple(self.secrets))
        if not isinstance(self.env, MappingProxyType):
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def spec_hash(self) -> str:
        """sha256 hex of everything that defines the container."""
        return self._hashes[0]

    def spec_hash_without_ports(self) -> str:
        """Like :meth:`spec_hash`, but blind to ports (which can change in place)."""
        return self._hashes[1]

    @functools.cached_property
    def _hashes(self) -> tuple[str, str]:
        # Computed once per (immutable) value: the reconciler compares hashes
        # of every manifest on every round.
        return _hash(self._spec(with_ports=True)), _hash(self._spec(with_ports=False))

    def _spec(self, *, with_ports: bool) -> dict[str, Any]:
        # The file path and its mtime are deliberately absent: moving or
        # touching a squishfile does not change the container it describes.
        # So is the placement: it decides where the container runs, not what
        # it is, and a node that still runs it after a placement edit must
        # not replace it. And so is depends_on, as with compose: it orders
        # starts, and a running container is not replaced for a new order.
        spec: dict[str, Any] = {
            "schema": _SPEC_SCHEMA,
            "name": self.name,
            "network": self.network,
            "base": None if self.base is None else _layer_spec(self.base),
            # Targets are unique, so sorting by target is total; it makes the
            # hash independent of how the layers are listed in the file.
            "layers": [_layer_spec(layer) for layer in sorted(self.layers, key=_by_target)],
            "command": self.command,
            "args": list(self.args),
            # json sorts the keys: env order never changes the hash.
            "env": dict(self.env),
            "restart": self.restart,
        }
        if self.networks:
            # Only when set: the hash of every squishfile without it is as before.
            spec["networks"] = list(self.networks)
        if self.workdir != "/":
            spec["workdir"] = self.workdir
        if self.uid or self.gid:
            spec["user"] = [self.uid, self.gid]
        if self.limits:
            spec["limits"] = [list(limit) for limit in self.limits]
        if self.seccomp != "default":
            spec["seccomp"] = self.seccomp
        if self.volumes:
            spec["volumes"] = [[v.name, v.target, v.ro] for v in self.volumes]
        if self.secrets:
            # The names only: a new value replaces the container all the
            # same (the reconciler compares the secrets' versions).
            spec["secrets"] = [list(secret) for secret in self.secrets]
        if self.health is not None:
            spec["health"] = {
                "command": list(self.health.command),
                "interval": self.health.interval,
                "timeout": self.health.timeout,
                "retries": self.health.retries,
                "start_period": self.health.start_period,
                "on_failure": self.health.on_failure,
            }
            # Only when set, as above.
            if (http := self.health.http) is not None:
                spec["health"]["http"] = [http.port, http.path, [list(h) for h in http.headers]]
            if self.health.tcp is not None:
                spec["health"]["tcp"] = self.health.tcp
        if with_ports:
            spec["ports"] = sorted(
                (
                    {
                        "container": port.container,
                        "host": port.host,
                        "protocol": port.protocol,
                        "host_ip": port.host_ip,
                    }
                    for port in self.ports
                ),
                key=lambda p: (p["host"], p["protocol"], p["host_ip"] or "", p["container"]),
            )
        return spec


class Change(StrEnum):
    """What it takes to go from one spec of a container to another."""

    SAME = "same"
    PORTS = "ports"  # update the port forwards of the running container
    REPLACE = "replace"  # stop the old container, start the new one


def diff_specs(old: Squishfile, new: Squishfile) -> Change:
    """Decide how a running ``old`` container must change to become ``new``."""
    if old.spec_hash() == new.spec_hash():
        return Change.SAME
    if old.spec_hash_without_ports() == new.spec_hash_without_ports():
        return Change.PORTS
    return Change.REPLACE


class LayerPathError(Exception):
    """Raised by a :data:`PathLookup`: why a layer's path cannot be used.

    The message says what is wrong with the path as written; the parser adds
    the file, the field and its line.
    """


@dataclass(frozen=True)
class HostPath:
    """Where a path layer's path leads: the host path to mount, and its name.

    ``name`` is the last part of the path as the user would see it (the
    directory's own name for ``"./"``), for the default target of
    ``app = "./"`` (``/app/<name>``).
    """

    path: Path
    name: str


PathLookup = Callable[[str, str], HostPath]
"""``lookup(path as written, field) -> HostPath``, or ``LayerPathError``.

``field`` is the field path the parser would name (``layers.app.path``), for
errors a lookup raises that are not about the path (a git source's layer too
big to export fails the whole sync, saying where).
"""


def parse_squishfile(data: bytes, *, file: str, name: str, paths: PathLookup) -> Squishfile:
    """Parse and validate squishfile bytes.

    ``file`` only labels errors; ``paths`` says where each path layer leads
    (see :data:`PathLookup`); ``name`` is the container name. The result has
    ``file=None``. A
    ``ManifestError`` lists every problem found, each with its field path
    and the line of the field, when it can be found.
    """
    if len(data) > MAX_SQUISHFILE_BYTES:
        raise too_big(file, len(data))
    text, doc = _parse_toml(data, file)
    problems: list[_Problem] = []
    squishfile = _resolve(doc, paths=paths, name=name, problems=problems)
    if squishfile is not None and not problems:
        return squishfile
    lines = KeyLines(text)
    found = [
        ManifestProblem(problem.message, _field_path(problem.loc), lines.line(problem.at))
        for problem in problems
    ]
    # In file order; those with no line (the whole file, a missing table) first.
    found.sort(key=lambda problem: problem.line or 0)
    raise ManifestError.of(file, found)


def write_resolved_paths(doc: dict[str, Any], squishfile: Squishfile) -> None:
    """Rewrite the relative path layers of ``doc`` to the paths ``squishfile`` resolved.

    For a squishfile that is stored where its relative paths would mean
    something else (``squish create`` sends it to the daemon). A path layer
    without a ``target`` is mounted at a place derived from the path as
    written (``lib = "./x/y"`` -> ``/app/x/y``), so the derived target is
    written out too: the squishfile read back has the same spec hash.
    """
    layers = doc.get("layers")
    if not isinstance(layers, dict):
        return
    resolved = {layer.name: layer for layer in squishfile.layers}
    if squishfile.base is not None:
        resolved[squishfile.base.name] = squishfile.base
    for name, value in layers.items():
        layer = resolved.get(name)
        if layer is None or layer.path is None:
            continue
        path = str(layer.path)
        if isinstance(value, str):
            if value.startswith(("./", "../")):
                layers[name] = path if layer.is_base else {"path": path, "target": layer.target}
        elif isinstance(value, dict):
            written = value.get("path")
            if isinstance(written, str) and not written.startswith("/"):
                value["path"] = path
                if not layer.is_base:
                    value.setdefault("target", layer.target)


# --------------------------------------------------------------------------
# Hashing


def _by_target(layer: Layer) -> str:
    return layer.target


def _layer_spec(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "version": layer.version,
        "path": None if layer.path is None else str(layer.path),
        "target": layer.target,
        "rw": layer.rw,
        "sha256": layer.sha256,
    }


def _hash(spec: dict[str, Any]) -> str:
    # Canonical JSON (sorted keys, fixed separators, ASCII only) is the same
    # bytes in every process and Python version; the spec holds no floats.
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------
# Bytes -> TOML document


def too_big(file: str, size: int) -> ManifestError:
    """The error of a squishfile of ``size`` bytes, more than ``MAX_SQUISHFILE_BYTES``."""
    return ManifestError(
        file,
        f"the file is {size} bytes; a squishfile may be at most {MAX_SQUISHFILE_BYTES} "
        "bytes (1 MiB): keep data in layers, not in the squishfile",
    )


def _parse_toml(data: bytes, file: str) -> tuple[str, dict[str, Any]]:
    """The text and the TOML document of ``data``."""
    try:
        # utf-8-sig: tolerate the byte order mark some editors write.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            file,
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
            line=line,
        ) from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        if match is None:
            # "(at end of document)": the last line is where it went wrong.
            message = message.replace(" (at end of document)", "") + " at end of file"
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
        else:
            line = int(match.group(1))
            message = f"{message[: match.start()]} at column {match.group(2)}"
        raise ManifestError(file, f"invalid TOML: {message}", line=max(line, 1)) from exc
    except RecursionError as exc:
        # tomllib recurses on nested arrays and tables.
        raise ManifestError(file, "invalid TOML: nested too deeply") from exc


# --------------------------------------------------------------------------
# TOML document -> raw model (shape and per-field rules)
#
# Per-field rules are pydantic validators raising ValueError with a finished
# message; _translate puts them, and pydantic's own errors, into words.


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _command(value: str) -> str:
    if not value.strip():
        raise ValueError('must not be empty: name the program to run, e.g. "/app/server"')
    return _no_nul(value)


def _port_number(value: object) -> int:
    # type() rather than isinstance(): TOML true/false are bools, which are
    # ints to Python but never a port number.
    if type(value) is not int or not 1 <= value <= 65535:
        raise ValueError(f"must be an integer between 1 and 65535, got {_describe(value)}")
    return value


def host_ip(value: str) -> str:
    """``value`` as a host address ports can be forwarded on, or ``ValueError`` saying why.

    The rule of a port's ``host_ip``, and of the daemon's ``--host-ip``.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"must be an IPv4 address such as 127.0.0.1 or 0.0.0.0, got {_describe(value)}"
        ) from None
    if address.version == 6:
        # slirp4netns's port forwarding API takes IPv4 host addresses only:
        # accepted here, such a port would fail at every start.
        raise ValueError(
            f"IPv6 addresses cannot be forwarded yet (slirp4netns binds IPv4 only), got "
            f"{_describe(value)}; use an IPv4 address such as 127.0.0.1 or 0.0.0.0"
        )
    return str(address)


def _layer_name(value: str) -> str:
    if not _LAYER_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            "layer names may contain only letters, digits, '_', '.' and '-' "
            f"and must not be '.' or '..', got {_describe(value)}"
        )
    return value


def _name_rule(kind: str) -> Callable[[str], str]:
    """The check of a ``kind`` name (a network's, a container's, ...): the container name rules."""

    def check(value: str) -> str:
        if not _CONTAINER_NAME.fullmatch(value):
            raise ValueError(
                f"{kind} names may contain only letters, digits, '_', '.' and '-' "
                f"and must start with a letter or digit, got {_describe(value)}"
            )
        return value

    return check


_network_name = _name_rule("network")
_container_name = _name_rule("container")
volume_name = _name_rule("volume")
"""A volume's name: a directory of the state directory, a label, a command's argument."""


def _network_names(value: list[str]) -> list[str]:
    twice = sorted({name for name in value if value.count(name) > 1})
    if twice:
        raise ValueError(f"names {', '.join(repr(n) for n in twice)} more than once")
    return value


_MAX_DURATION = 86400.0


def _duration(value: object) -> float:
    """A duration: ``"500ms"``, ``"10s"``, ``"1m30s"``, or a number of seconds."""
    seconds: float | None
    if type(value) in (int, float):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        seconds = None
    if seconds is None:
        raise ValueError(
            'must be a duration such as "500ms", "10s" or "1m30s", or a number of seconds, '
            f"got {_describe(value)}"
        )
    if not 0 <= seconds <= _MAX_DURATION:
        raise ValueError(f"must be between 0 and 24h, got {_describe(value)}")
    return seconds


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


def _retries(value: object) -> int:
    if type(value) is not int or not 1 <= value <= 1000:
        raise ValueError(f"must be an integer between 1 and 1000, got {_describe(value)}")
    return value


def _health_command(value: list[str]) -> list[str]:
    if not value or not value[0]:
        raise ValueError('must name the program to run, e.g. ["/bin/busybox", "wget", "-q", URL]')
    return value


def _http_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(
            'must be a path such as "/healthz" (starting with /, no spaces), '
            f"got {_describe(value)}"
        )
    return value


# RFC 9110's token: what a header's name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"is not a header name, got {_describe(value)}")
    return value


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("must be one line (no CR, LF or NUL)")
    return value


def _user(value: object) -> tuple[int, int]:
    """``run.user``: ``"UID[:GID]"`` or a number; the gid is 0 unless given (docker's way)."""
    if type(value) is int:
        parts = [str(value)]
    elif isinstance(value, str):
        parts = value.split(":")
    else:
        parts = []
    if not 1 <= len(parts) <= 2 or not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError(
            'must be "UID" or "UID:GID" with numbers such as "1000:1000" '
            f"(names are not looked up), got {_describe(value)}"
        )
    ids = [int(part) for part in parts]
    if any(id_ > MAX_ID for id_ in ids):
        raise ValueError(f"ids must be between 0 and {MAX_ID}, got {_describe(value)}")
    return ids[0], ids[1] if len(ids) == 2 else 0


def _env_key(value: str) -> str:
    if not _ENV_KEY.fullmatch(value):
        raise ValueError(
            "environment variable names must be letters, digits and '_', "
            f"not starting with a digit, got {_describe(value)}"
        )
    return value


def _version(value: str) -> str:
    if not _VERSION.fullmatch(value):
        raise ValueError(
            'must be a version such as "3.14" (letters, digits, ".", "_", "+" and "-"), '
            f"got {_describe(value)}"
        )
    return value


def _layer_path(value: str) -> str:
    if not value:
        raise ValueError('must not be empty: give a path such as "./app"')
    return _no_nul(value)


def _target(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute container path such as /app/x, got {value!r}")
    # normpath keeps a leading "//" (POSIX allows it a special meaning).
    if posixpath.normpath(value) != value or value.startswith("//"):
        raise ValueError(
            f"must be a normalised path (no '.', '..', '//' or trailing '/'), got {value!r}"
        )
    if value == "/":
        raise ValueError("must not be '/': the base layer is the root; mount below it")
    top = PurePosixPath(value).parts[1]
    if top in _KERNEL_DIRS:
        raise ValueError(
            f"must not be inside /{top}: the runtime owns /proc, /sys and /dev, got {value!r}"
        )
    return value


def _workdir(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/") or posixpath.normpath(value) != value or value.startswith("//"):
        raise ValueError(
            f"must be an absolute, normalised container path such as /app, got {value!r}"
        )
    return value


def _sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ValueError(f"must be a sha256 hex digest (64 hex digits), got {_describe(value)}")
    return value.lower()


# The placement rules are squish.model.placement's, shared with the daemon's
# --node and --label flags so both accept the same spellings.


def _node_pattern(value: str) -> str:
    if problem := node_pattern_problem(value):
        raise ValueError(problem)
    return value


def _node_patterns(value: list[str]) -> list[str]:
    if not value:
        # "Nowhere" and "everywhere" are both plausible readings; refuse both.
        raise ValueError(
            'must name at least one node or glob such as "web-*"; '
            "leave the key out to run on every node"
        )
    return value


def _label_key(value: str) -> str:
    if problem := label_key_problem(value):
        raise ValueError(problem)
    return value


def _label_value(value: str) -> str:
    if problem := label_value_problem(value):
        raise ValueError(problem)
    return value


_NoNul = Annotated[str, AfterValidator(_no_nul)]
_Command = Annotated[str, AfterValidator(_command)]
_PortNumber = Annotated[int, PlainValidator(_port_number)]
_HostIp = Annotated[str, AfterValidator(host_ip)]
_LayerName = Annotated[str, AfterValidator(_layer_name)]
_Duration = Annotated[float, PlainValidator(_duration)]
_PositiveDuration = Annotated[float, PlainValidator(_duration), AfterValidator(_positive)]
_Retries = Annotated[int, PlainValidator(_retries)]
_HealthCommand = Annotated[list[_NoNul], AfterValidator(_health_command)]
_HttpPath = Annotated[str, AfterValidator(_http_path)]
_HeaderName = Annotated[str, AfterValidator(_header_name)]
_HeaderValue = Annotated[str, AfterValidator(_header_value)]
_ContainerName = Annotated[str, AfterValidator(_container_name)]
_VolumeName = Annotated[str, AfterValidator(volume_name)]
_SecretKey = Annotated[str, AfterValidator(_name_rule("secret key"))]
_SecretName = Annotated[str, AfterValidator(_name_rule("secret"))]
_NetworkNames = Annotated[
    list[Annotated[str, AfterValidator(_network_name)]], AfterValidator(_network_names)
]
_EnvKey = Annotated[str, AfterValidator(_env_key)]
_Version = Annotated[str, AfterValidator(_version)]
_LayerPath = Annotated[str, AfterValidator(_layer_path)]
_Target = Annotated[str, AfterValidator(_target)]
_Sha256 = Annotated[str, AfterValidator(_sha256)]
_NodePattern = Annotated[str, AfterValidator(_node_pattern)]
_NodePatterns = Annotated[list[_NodePattern], AfterValidator(_node_patterns)]
_LabelKey = Annotated[str, AfterValidator(_label_key)]
_LabelValue = Annotated[str, AfterValidator(_label_value)]


class _Raw(BaseModel):
    # strict: a TOML string is never silently taken for a number or a bool.
    model_config = ConfigDict(extra="forbid", strict=True)


class _RawLayer(_Raw):
    version: _Version | None = None
    path: _LayerPath | None = None
    target: _Target | None = None
    rw: bool = False
    sha256: _Sha256 | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_string(cls, data: Any) -> Any:
        # `python = "3.11"` and `app = "./x"` are shorthands for a table.
        if isinstance(data, str):
            if data.startswith(_PATH_PREFIXES):
                return {"path": data}
            # Checked here so a bad string is reported at `layers.<name>`,
            # where the user wrote it, not at a `version` key they never typed.
            if not _VERSION.fullmatch(data):
                raise ValueError(
                    'must be a version such as "3.14" or a path starting with ./, ../ or /, '
                    f"got {_describe(data)}"
                )
            return {"version": data}
        if not isinstance(data, dict):
            raise ValueError(
                "must be a version string, a path string (starting with ./, ../ or /) "
                f"or a table, got {_describe(data)}"
            )
        return data

    @model_validator(mode="after")
    def _one_source(self) -> _RawLayer:
        if (self.version is None) == (self.path is None):
            given = "both" if self.version is not None else "neither"
            raise ValueError(f"must have exactly one of 'version' or 'path', got {given}")
        return self


class _RawRun(_Raw):
    command: _Command
    args: list[_NoNul] = Field(default_factory=list)
    workdir: Annotated[str, AfterValidator(_workdir)] = "/"
    user: Annotated[tuple[int, int], PlainValidator(_user)] = (0, 0)


class _RawDependency(_Raw):
    condition: DependCondition = "started"
    restart: bool = False

    @model_validator(mode="before")
    @classmethod
    def _expand_string(cls, data: Any) -> Any:
        # `db = "healthy"` is short for `[depends_on.db] condition = "healthy"`.
        if isinstance(data, str):
            if data not in DEPEND_CONDITIONS:
                raise ValueError(
                    f'must be "started", "healthy" or "completed", got {_describe(data)}'
                )
            return {"condition": data}
        if not isinstance(data, dict):
            raise ValueError(
                'must be a condition ("started", "healthy" or "completed") or a table '
                f'such as {{ condition = "healthy", restart = true }}, got {_describe(data)}'
            )
        return data


class _RawPort(_Raw):
    container: _PortNumber
    host: _PortNumber
    protocol: PortProtocol = "tcp"
    host_ip: _HostIp | None = None


class _RawRestart(_Raw):
    policy: RestartPolicy = "always"


class _RawHttpCheck(_Raw):
    port: _PortNumber
    path: _HttpPath = "/"
    headers: dict[_HeaderName, _HeaderValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _expand_port(cls, data: Any) -> Any:
        # `http = 8080` is short for `{ port = 8080 }` (a GET of /).
        if type(data) is int:
            return {"port": data}
        if not isinstance(data, dict):
            raise ValueError(
                "must be a port or a table such as "
                f'{{ port = 8080, path = "/healthz" }}, got {_describe(data)}'
            )
        return data


class _RawHealth(_Raw):
    command: _HealthCommand | None = None
    http: _RawHttpCheck | None = None
    tcp: _PortNumber | None = None
    interval: _PositiveDuration = 30.0
    timeout: _PositiveDuration = 30.0
    retries: _Retries = 3
    start_period: _Duration = 0.0
    on_failure: HealthAction = "none"

    @model_validator(mode="after")
    def _one_check(self) -> _RawHealth:
        given = [key for key in ("command", "http", "tcp") if getattr(self, key) is not None]
        if len(given) != 1:
            got = "none" if not given else " and ".join(given)
            raise ValueError(
                "must have exactly one of 'command' (run inside), 'http' (a GET of a port) "
                f"or 'tcp' (a connection to a port), got {got}"
            )
        return self


class _RawVolume(_Raw):
    target: _Target
    ro: bool = False

    @model_validator(mode="before")
    @classmethod
    def _expand_string(cls, data: Any) -> Any:
        # `pgdata = "/var/lib/postgresql"` is short for `{ target = "..." }`.
        if isinstance(data, str):
            return {"target": data}
        if not isinstance(data, dict):
            raise ValueError(
                'must be a target path such as "/var/lib/data" or a table such as '
                f'{{ target = "/data", ro = true }}, got {_describe(data)}'
            )
        return data


class _RawSecurity(_Raw):
    seccomp: Seccomp = "default"


class _RawPlacement(_Raw):
    nodes: _NodePatterns | None = None
    labels: dict[_LabelKey, _LabelValue] = Field(default_factory=dict)


class _RawSquishfile(_Raw):
    network: Network = "slirp4netns"
    networks: _NetworkNames = Field(default_factory=list)
    layers: dict[_LayerName, _RawLayer] = Field(default_factory=dict)
    run: _RawRun
    env: dict[_EnvKey, _NoNul] = Field(default_factory=dict)
    ports: list[_RawPort] = Field(default_factory=list)
    restart: _RawRestart = Field(default_factory=_RawRestart)
    health: _RawHealth | None = None
    depends_on: dict[_ContainerName, _RawDependency] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    security: _RawSecurity = Field(default_factory=_RawSecurity)
    volumes: dict[_VolumeName, _RawVolume] = Field(default_factory=dict)
    secrets: dict[_SecretKey, _SecretName] = Field(default_factory=dict)
    placement: _RawPlacement = Field(default_factory=_RawPlacement)


_Loc = tuple[int | str, ...]


@dataclass(frozen=True)
class _Problem:
    """One problem at the field ``loc`` (``()``: the whole file).

    ``where`` is the place in the file to name the line of, when that is not
    ``loc`` itself: an unknown key is reported at its table but written on
    its own line; a missing one is written nowhere, so the table lacking it
    is named. ``at`` is the place either way.
    """

    loc: _Loc
    message: str
    where: _Loc | None = None

    @property
    def at(self) -> _Loc:
        return self.loc if self.where is None else self.where


_RawT = TypeVar("_RawT", bound=_Raw)


class _Invalid(Exception):
    """One problem, raised by a rule; the caller collects it and goes on."""

    def __init__(self, loc: _Loc, message: str) -> None:
        super().__init__(message)
        self.problem = _Problem(loc, message)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}

_MISSING_HINTS = {
    "run": ': add a [run] table with command = "..."',
    "command": ': name the program to run, e.g. command = "/app/server"',
    "container": ": the port inside the container, e.g. container = 8080",
    "host": ": the port on the host, e.g. host = 8080",
}


def _translate(error: ErrorDetails) -> _Problem:
    """Put one pydantic error into squish's words (never its multi-line text)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error["input"]
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        parent = loc[:-1]
        allowed = ", ".join(_allowed_keys(parent))
        return _Problem(parent, f"unknown key {loc[-1]!r} (allowed: {allowed})", where=loc)
    if kind == "missing":
        hint = _MISSING_HINTS.get(str(loc[-1]), "")
        return _Problem(loc, "is required" + hint, where=loc[:-1])
    if kind == "value_error" and "error" in ctx:
        message = str(ctx["error"])
    elif kind in _EXPECTED:
        message = f"must be {_EXPECTED[kind]}, got {_describe(value)}"
    elif kind == "literal_error":
        message = f"must be {ctx['expected']}, got {_describe(value)}"
    else:
        message = error["msg"]
    return _Problem(loc, " ".join(message.split()))


def _allowed_keys(parent: tuple[int | str, ...]) -> list[str]:
    model: type[_Raw]
    match parent:
        case ():
            model = _RawSquishfile
        case ("run",):
            model = _RawRun
        case ("restart",):
            model = _RawRestart
        case ("health",):
            model = _RawHealth
        case ("health", "http"):
            model = _RawHttpCheck
        case ("depends_on", str()):
            model = _RawDependency
        case ("placement",):
            model = _RawPlacement
        case ("security",):
            model = _RawSecurity
        case ("volumes", str()):
            model = _RawVolume
        case ("layers", str()):
            model = _RawLayer
        case ("ports", int()):
            model = _RawPort
        case _:  # pragma: no cover - every table with fixed keys is listed above
            return []
    return list(model.model_fields)


def _field_path(loc: tuple[int | str, ...]) -> str | None:
    """``("ports", 0, "host")`` -> ``ports[0].host``; odd keys are quoted."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            # pydantic's marker for "the key itself failed"; the key is already in the path.
            continue
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            path += f".{name}" if path else name
    return path or None


def _describe(value: object) -> str:
    """A short, one-line description of a TOML value for error messages."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # TOML dates and times


# --------------------------------------------------------------------------
# Raw model -> Squishfile (rules spanning fields; paths and targets)


def _resolve(
    doc: dict[str, Any], *, paths: PathLookup, name: str, problems: list[_Problem]
) -> Squishfile | None:
    """The squishfile of ``doc``, adding every problem found to ``problems``.

    The rules spanning fields (layer paths exist, targets and host ports are
    not taken twice) are checked even when the shape is wrong elsewhere, on
    every layer and port that is right in itself, so one run lists them all.
    """
    if not _CONTAINER_NAME.fullmatch(name):
        problems.append(
            _Problem(
                (),
                f"container name {name!r} (the file name without .toml) may contain only "
                "letters, digits, '_', '.' and '-' and must start with a letter or digit; "
                "rename the file",
            )
        )
    doc = _capped_env(doc, problems)
    doc = _capped_args(doc, problems)
    try:
        raw = _RawSquishfile.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        problems.extend(_translate(error) for error in errors)
        layers, ports = _valid_parts(doc, [tuple(error["loc"]) for error in errors])
        _resolve_layers(layers, doc, paths, problems)
        _resolve_ports(ports, problems)
        return None
    base, layers_found = _resolve_layers(raw.layers, doc, paths, problems)
    ports_found = _resolve_ports(list(enumerate(raw.ports)), problems)
    if raw.networks and raw.network == "none":
        problems.append(
            _Problem(
                ("networks",),
                'cannot join networks with network = "none"; remove one of the two',
            )
        )
    if name in raw.depends_on:
        problems.append(_Problem(("depends_on", name), "a container cannot depend on itself"))
    limits: tuple[tuple[str, int, int], ...] = ()
    try:
        limits = parse_limits(raw.limits)
    except LimitError as exc:
        problems.append(_Problem(("limits", exc.key), str(exc)))
    return Squishfile(
        name=name,
        base=base,
        layers=layers_found,
        command=raw.run.command,
        args=tuple(raw.run.args),
        workdir=raw.run.workdir,
        uid=raw.run.user[0],
        gid=raw.run.user[1],
        env=raw.env,
        ports=ports_found,
        network=raw.network,
        networks=tuple(raw.networks),
        restart=raw.restart.policy,
        health=None
        if raw.health is None
        else Health(
            command=tuple(raw.health.command or ()),
            http=None
            if (http := raw.health.http) is None
            else HttpCheck(http.port, http.path, tuple(http.headers.items())),
            tcp=raw.health.tcp,
            interval=raw.health.interval,
            timeout=raw.health.timeout,
            retries=raw.health.retries,
            start_period=raw.health.start_period,
            on_failure=raw.health.on_failure,
        ),
        depends_on=tuple(
            Dependency(dependency, raw_dependency.condition, raw_dependency.restart)
            for dependency, raw_dependency in raw.depends_on.items()
        ),
        limits=limits,
        seccomp=raw.security.seccomp,
        volumes=_resolve_volumes(raw.volumes, layers_found, base, problems),
        secrets=tuple(raw.secrets.items()),
        placement=Placement(tuple(raw.placement.nodes or ()), raw.placement.labels),
    )


def _taken(target: str, owner: str) -> str:
    """Why a layer or a volume cannot have ``target``: ``owner`` (its field) has it."""
    return f"target {target} is already used by {owner}; give one of them a different target"


def _resolve_volumes(
    raw: dict[str, _RawVolume],
    layers: tuple[Layer, ...],
    base: Layer | None,
    problems: list[_Problem],
) -> tuple[VolumeMount, ...]:
    """The volumes, each at a target no layer and no other volume has."""
    taken = {layer.target: f"layers.{layer.name}" for layer in layers}
    if base is not None:
        taken["/"] = f"layers.{base.name}"
    found = []
    for name, volume in raw.items():
        other = taken.get(volume.target)
        if other is not None:
            problems.append(_Problem(("volumes", name), _taken(volume.target, other)))
            continue
        taken[volume.target] = f"volumes.{name}"
        found.append(VolumeMount(name, volume.target, volume.ro))
    return tuple(found)


def _capped_env(doc: dict[str, Any], problems: list[_Problem]) -> dict[str, Any]:
    """``doc``, its [env] left out (and the reason added) if it is over the caps.

    Checked before validation: there is no point in validating a million
    variables one by one only to refuse them together.
    """
    env = doc.get("env")
    if not isinstance(env, dict):
        return doc
    size = sum(
        len(key.encode()) + len(value.encode()) + 2
        for key, value in env.items()
        if isinstance(value, str)
    )
    if len(env) > MAX_ENV_KEYS:
        message = (
            f"has {len(env)} variables; at most {MAX_ENV_KEYS} are allowed "
            "(put bulk configuration in a file layer)"
        )
    elif size > MAX_ENV_BYTES:
        message = (
            f"holds {size} bytes of names and values; at most {MAX_ENV_BYTES} (128 KiB) "
            "are allowed (put bulk configuration in a file layer)"
        )
    else:
        return doc
    problems.append(_Problem(("env",), message))
    return {**doc, "env": {}}


def _capped_args(doc: dict[str, Any], problems: list[_Problem]) -> dict[str, Any]:
    """``doc``, its ``[run] args`` left out (and the reason added) if over the caps."""
    run = doc.get("run")
    args = run.get("args") if isinstance(run, dict) else None
    if not isinstance(args, list):
        return doc
    size = sum(len(arg.encode()) + 1 for arg in args if isinstance(arg, str))
    if len(args) > MAX_ARGS:
        message = f"has {len(args)} arguments; at most {MAX_ARGS} are allowed"
    elif size > MAX_ARGS_BYTES:
        message = (
            f"holds {size} bytes; at most {MAX_ARGS_BYTES} (128 KiB) are allowed "
            "(pass bulk input in a file layer)"
        )
    else:
        return doc
    problems.append(_Problem(("run", "args"), message))
    assert isinstance(run, dict)
    return {**doc, "run": {**run, "args": []}}


def _valid_parts(
    doc: dict[str, Any], failed: list[_Loc]
) -> tuple[dict[str, _RawLayer], list[tuple[int, _RawPort]]]:
    """The layers and ports of ``doc`` with no error of their own (``failed``)."""

    def fine(loc: _Loc) -> bool:
        return not any(where[: len(loc)] == loc or where == loc[:1] for where in failed)

    layers: dict[str, _RawLayer] = {}
    raw_layers = doc.get("layers")
    if isinstance(raw_layers, dict):
        for layer_name, value in raw_layers.items():
            if fine(("layers", layer_name)) and (layer := _alone(_RawLayer, value)):
                layers[layer_name] = layer
    ports: list[tuple[int, _RawPort]] = []
    raw_ports = doc.get("ports")
    if isinstance(raw_ports, list):
        for index, value in enumerate(raw_ports):
            if fine(("ports", index)) and (port := _alone(_RawPort, value)):
                ports.append((index, port))
    return layers, ports


def _alone(model: type[_RawT], value: Any) -> _RawT | None:
    # It validated within the document, so it does alone; should the two
    # ever disagree, its rules are skipped rather than a pydantic error shown.
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _resolve_layers(
    raw_layers: Mapping[str, _RawLayer],
    doc: dict[str, Any],
    paths: PathLookup,
    problems: list[_Problem],
) -> tuple[Layer | None, tuple[Layer, ...]]:
    """The base and the other layers; a layer with a problem is left out."""
    written = doc.get("layers", {})
    base: Layer | None = None
    layers: list[Layer] = []
    owner_of_target: dict[str, str] = {}
    for layer_name, raw_layer in raw_layers.items():
        shorthand = isinstance(written.get(layer_name), str)
        try:
            layer = _resolve_layer(layer_name, raw_layer, shorthand=shorthand, paths=paths)
        except _Invalid as exc:
            problems.append(exc.problem)
            continue
        if layer.is_base:
            if base is not None:
                problems.append(
                    _Problem(
                        _layer_loc(layer_name),
                        f"only one base layer is allowed, but both '{base.name}' and "
                        f"'{layer_name}' are given; remove one",
                    )
                )
                continue
            base = layer
            continue
        other = owner_of_target.get(layer.target)
        if other is not None:
            where = "target" if raw_layer.target is not None else None
            problems.append(
                _Problem(_layer_loc(layer_name, where), _taken(layer.target, _layer_field(other)))
            )
            continue
        owner_of_target[layer.target] = layer_name
        layers.append(layer)
    return base, tuple(layers)


def _resolve_layer(name: str, raw: _RawLayer, *, shorthand: bool, paths: PathLookup) -> Layer:
    path: Path | None = None
    located: HostPath | None = None
    if raw.path is not None:
        loc = _layer_loc(name, None if shorthand else "path")
        try:
            located = paths(raw.path, _field_path(loc) or "layers")
        except LayerPathError as exc:
            raise _Invalid(loc, str(exc)) from exc
        path = located.path
    if name in BASE_LAYER_NAMES:
        if name == "alpine" and raw.version is None:
            raise _Invalid(
                _layer_loc(name),
                'must be an Alpine version such as "3.14"; '
                "name the layer 'base' to use a rootfs directory",
            )
        for key in ("target", "rw"):
            if key in raw.model_fields_set:
                raise _Invalid(
                    _layer_loc(name, key),
                    "is not allowed on the base layer (it is always the read-only root '/')",
                )
        return Layer(name, raw.version, path, "/", rw=False, sha256=raw.sha256)
    if raw.rw and raw.version is not None:
        # Versioned layers are shared by every container using them.
        raise _Invalid(
            _layer_loc(name, "rw"),
            "rw = true is only allowed on path layers; versioned layers are shared and read-only",
        )
    if raw.target is not None:
        target = raw.target
    elif raw.path is None or located is None:
        target = f"/sdk/{name}"
    else:
        target = _default_path_target(name, raw.path, located.name)
    return Layer(name, raw.version, path, target, rw=raw.rw, sha256=raw.sha256)


def _default_path_target(name: str, raw_path: str, resolved_name: str) -> str:
    """Where a path layer without ``target`` is mounted.

    ``app = "./test/http-asm"`` -> ``/app/http-asm``; any other name keeps the
    path minus its leading ``./``, ``../`` and ``/``: ``../lib/y`` -> ``/app/lib/y``.
    """
    normal = posixpath.normpath(raw_path)
    if name == "app":
        basename = PurePosixPath(normal).name
        if basename in ("", ".", ".."):
            basename = resolved_name
        parts: tuple[str, ...] = (basename,) if basename else ()
    else:
        # After normpath, ".." can only lead the path; "." only stands alone.
        parts = tuple(p for p in PurePosixPath(normal).parts if p not in ("/", ".", ".."))
    return "/".join(("/app", *parts))


def _resolve_ports(
    raw_ports: list[tuple[int, _RawPort]], problems: list[_Problem]
) -> tuple[Port, ...]:
    """The ports (with their index in the file); one taken twice is a problem."""
    ports: list[Port] = []
    host_owner: dict[tuple[int, str, str | None], int] = {}
    container_owner: dict[tuple[int, str], int] = {}
    for index, raw in raw_ports:
        host_key = (raw.host, raw.protocol, raw.host_ip)
        if host_key in host_owner:
            bind = f"{raw.host_ip}:" if raw.host_ip else ""
            problems.append(
                _Problem(
                    ("ports", index, "host"),
                    f"host port {bind}{raw.host}/{raw.protocol} is already used by "
                    f"ports[{host_owner[host_key]}]; pick another host port",
                )
            )
            continue
        container_key = (raw.container, raw.protocol)
        if container_key in container_owner:
            problems.append(
                _Problem(
                    ("ports", index, "container"),
                    f"container port {raw.container}/{raw.protocol} is already published by "
                    f"ports[{container_owner[container_key]}]; publish it once",
                )
            )
            continue
        host_owner[host_key] = index
        container_owner[container_key] = index
        ports.append(Port(raw.container, raw.host, raw.protocol, raw.host_ip))
    return tuple(ports)


def _layer_loc(name: str, key: str | None = None) -> _Loc:
    return ("layers", name) if key is None else ("layers", name, key)


def _layer_field(name: str) -> str:
    return _field_path(_layer_loc(name)) or "layers"
