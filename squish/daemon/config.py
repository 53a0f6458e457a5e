"""The daemon's settings file: flags, environment, config file, in that order.

``squish daemon`` reads them through ``layer_settings``. The config file is
TOML, ``--config PATH`` or ``$SQUISH_CONFIG``, else
``$XDG_CONFIG_HOME/squish/config.toml`` if it exists::

    [layers]
    default_base = "alpine:3.20"          # busybox (built in), alpine:<version>, /path
    alpine_mirror = "https://mirror.example.org/alpine"
    download_timeout = 30                 # seconds: connecting, and each read
    download_deadline = 3600              # seconds: a whole download

    [layers.registries]
    default = "https://layers.example.com/{name}/{version}/{arch}.tar.gz"
    python = "https://python.example.com/{version}/{arch}.tar.gz"

    [sources]
    prune_guard = 100                     # percent of the running containers
    allow_prune_all = false
    allow_host_paths = ["/srv/data"]      # host paths a git source's squishfile may name

A flag wins over the environment (``SQUISH_DEFAULT_BASE``,
``SQUISH_ALPINE_MIRROR``, ``SQUISH_REGISTRY`` for the default registry),
which wins over the file. Every mistake is one line naming the file and key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squish.errors import LayerError, SquishError
from squish.layers.alpine import DEFAULT_MIRROR, MIRROR_ENV
from squish.layers.download import FetchObserver
from squish.layers.model import BUILTIN_BASE
from squish.layers.registry import DEFAULT, REGISTRY_ENV, check_template
from squish.layers.store import LayerStore
from squish.model.squishfile import host_ip

CONFIG_ENV = "SQUISH_CONFIG"
DEFAULT_BASE_ENV = "SQUISH_DEFAULT_BASE"

_ALPINE_BASE = re.compile(r"alpine:[0-9]+\.[0-9]+")
_SECTIONS = {"layers", "sources"}
_SOURCE_KEYS = {"prune_guard", "allow_prune_all", "allow_host_paths"}
HOST_PATHS_ENV = "SQUISH_ALLOW_HOST_PATH"
_LAYER_KEYS = {
    "default_base",
    "alpine_mirror",
    "download_timeout",
    "download_deadline",
    "registries",
}


@dataclass(frozen=True)
class LayerSettings:
    default_base: str = BUILTIN_BASE
    alpine_mirror: str = DEFAULT_MIRROR
    registries: Mapping[str, str] = field(default_factory=dict)
    download_timeout: float = 30.0
    download_deadline: float = 3600.0

    def store(self, state_dir: Path, *, observer: FetchObserver | None = None) -> LayerStore:
        """The layer store these settings describe, caching under ``state_dir``."""
        return LayerStore(
            state_dir,
            default_base=self.default_base,
            alpine_mirror=self.alpine_mirror,
            registries=self.registries,
            timeout=self.download_timeout,
            deadline=self.download_deadline,
            observer=observer,
        )

    @property
    def default_alpine(self) -> str | None:
        """The Alpine branch of the default base, if it is one (to prefetch)."""
        if self.default_base.startswith("alpine:"):
            return self.default_base.removeprefix("alpine:")
        return None


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file (or none: ``data`` empty), read once for every setting."""

    where: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def section(self, name: str, allowed: set[str]) -> dict[str, Any]:
        """The table ``[name]``, refused if it holds a key not in ``allowed``."""
        table = self.data.get(name, {})
        if not isinstance(table, dict):
            raise SquishError(f"{self.where}: [{name}] must be a table")
        unknown = sorted(set(table) - allowed)
        if unknown:
            names = ", ".join(sorted(allowed))
            raise SquishError(
                f"{self.where}: {name}.{unknown[0]} is not a setting (allowed: {names})"
            )
        return table


def read_config(given: Path | None) -> ConfigFile:
    """The config file ``config_path(given)`` names, parsed; empty if there is none."""
    path = config_path(given)
    if path is None:
        return ConfigFile("no config file")
    config = ConfigFile(str(path), _read(path))
    unknown = sorted(set(config.data) - _SECTIONS)
    if unknown:
        allowed = ", ".join(sorted(_SECTIONS))
        raise SquishError(f"{path}: [{unknown[0]}] is not a section (allowed: {allowed})")
    return config


def config_path(given: Path | None) -> Path | None:
    """The config file to read: given, ``$SQUISH_CONFIG``, or the XDG one if it exists."""
    if given is not None:
        return given
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    default = Path(base) / "squish" / "config.toml"
    return default if default.is_file() else None


def layer_settings(
    config: ConfigFile,
    *,
    default_base: str | None = None,
    alpine_mirror: str | None = None,
    registries: Sequence[str] = (),
) -> LayerSettings:
    """Settings from the flags given (None/empty: not given), the environment and ``config``."""
    where = config.where
    layers = config.section("layers", _LAYER_KEYS)

    base = (
        default_base
        or os.environ.get(DEFAULT_BASE_ENV)
        or _string(layers, "default_base", where)
        or BUILTIN_BASE
    )
    if not (base == BUILTIN_BASE or base.startswith("/") or _ALPINE_BASE.fullmatch(base)):
        raise SquishError(
            f"default base {base!r}: must be {BUILTIN_BASE!r}, 'alpine:<major.minor>' "
            "or the absolute path of a rootfs directory"
        )
    mirror = (
        alpine_mirror
        or os.environ.get(MIRROR_ENV)
        or _string(layers, "alpine_mirror", where)
        or DEFAULT_MIRROR
    )
    if not mirror.startswith(("http://", "https://")):
        raise SquishError(f"Alpine mirror {mirror!r}: must be an http:// or https:// URL")
    return LayerSettings(
        default_base=base,
        alpine_mirror=mirror,
        registries=_registries(layers.get("registries", {}), registries, where),
        download_timeout=_seconds(layers, "download_timeout", where, 30.0),
        download_deadline=_seconds(layers, "download_deadline", where, 3600.0),
    )


@dataclass(frozen=True)
class GuardSettings:
    """The prune guard: hold changes stopping at least ``percent`` of the running containers."""

    percent: float = 100.0
    enabled: bool = True


def guard_settings(
    config: ConfigFile, *, percent: float | None = None, allow_prune_all: bool = False
) -> GuardSettings:
    """The prune guard from the flags (None/False: not given), the environment and ``config``.

    Config file keys, in ``[sources]``: ``prune_guard`` (a percentage) and
    ``allow_prune_all`` (true turns the guard off); environment:
    ``SQUISH_PRUNE_GUARD`` and ``SQUISH_ALLOW_PRUNE_ALL=1``.
    """
    where = config.where
    table = config.section("sources", _SOURCE_KEYS)
    if percent is None and (env := os.environ.get("SQUISH_PRUNE_GUARD")):
        try:
            percent = float(env)
        except ValueError as exc:
            raise SquishError(f"$SQUISH_PRUNE_GUARD: {env!r} is not a percentage") from exc
    if percent is None:
        value = table.get("prune_guard", 100.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SquishError(f"{where}: sources.prune_guard must be a percentage")
        percent = float(value)
    if not 0 < percent <= 100:
        raise SquishError(f"prune guard: {percent:g} is not a percentage above 0 and up to 100")
    allow = table.get("allow_prune_all", False)
    if not isinstance(allow, bool):
        raise SquishError(f"{where}: sources.allow_prune_all must be true or false")
    allow = allow_prune_all or os.environ.get("SQUISH_ALLOW_PRUNE_ALL") == "1" or allow
    return GuardSettings(percent=percent, enabled=not allow)


def allowed_host_paths(config: ConfigFile, given: Sequence[str] = ()) -> tuple[Path, ...]:
    """The host directories a git source's squishfiles may name (as absolute path layers).

    From ``--allow-host-path DIR`` (each), ``$SQUISH_ALLOW_HOST_PATH``
    (colon-separated) and ``[sources] allow_host_paths``, all of them;
    each resolved now (symlinks followed), and it must be a directory.
    """
    where = config.where
    table = config.section("sources", _SOURCE_KEYS)
    listed = table.get("allow_host_paths", [])
    if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
        raise SquishError(f"{where}: sources.allow_host_paths must be an array of paths")
    found: list[Path] = []
    env = [part for part in os.environ.get(HOST_PATHS_ENV, "").split(":") if part]
    named = [
        *((raw, "--allow-host-path") for raw in given),
        *((raw, f"${HOST_PATHS_ENV}") for raw in env),
        *((raw, f"{where}: sources.allow_host_paths") for raw in listed),
    ]
    for raw, origin in named:
        path = Path(raw)
        if not path.is_absolute():
            raise SquishError(f"{origin}: {raw!r} must be an absolute path")
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise SquishError(f"{origin}: {raw!r}: {exc}") from exc
        if not resolved.is_dir():
            raise SquishError(f"{origin}: {raw!r} is not a directory")
        if resolved == Path("/"):
            raise SquishError(f"{origin}: allowing '/' would allow every path of the host")
        found.append(resolved)
    return tuple(dict.fromkeys(found))


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SquishError(f"{path}: the config file does not exist") from exc
    except OSError as exc:
        raise SquishError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SquishError(f"{path}: not valid TOML: {exc}") from exc


def _string(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise SquishError(f"{where}: layers.{key} must be a string, got {value!r}")
    return value


def _seconds(table: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SquishError(f"{where}: layers.{key} must be a positive number of seconds")
    return float(value)


def _registries(from_file: object, flags: Sequence[str], where: str) -> dict[str, str]:
    if not isinstance(from_file, dict):
        raise SquishError(f"{where}: layers.registries must be a table of name = template")
    found: dict[str, str] = {}
    for name, template in from_file.items():
        if not isinstance(template, str):
            raise SquishError(f"{where}: layers.registries.{name} must be a URL template string")
        found[name] = _checked(template, f"{where}: layers.registries.{name}")
    if env := os.environ.get(REGISTRY_ENV):
        found[DEFAULT] = _checked(env, f"${REGISTRY_ENV}")
    for flag in flags:
        # NAME=TEMPLATE, or just TEMPLATE for the default; a URL has no '=' before "://".
        name, sep, template = flag.partition("=")
        if not sep or "://" in name:
            name, template = DEFAULT, flag
        found[name] = _checked(template, f"--registry {flag}")
    return found


def _checked(template: str, what: str) -> str:
    try:
        return check_template(template, what)
    except LayerError as exc:
        raise SquishError(str(exc)) from exc


def checked_host_ip(value: str) -> str:
    """The ``--host-ip`` (or ``$SQUISH_HOST_IP``) ports are forwarded on, if it can be one.

    For the daemon and ``squish run``: the rule of a port's ``host_ip``.
    """
    try:
        return host_ip(value)
    except ValueError as exc:
        raise SquishError(f"--host-ip (or $SQUISH_HOST_IP): {exc}") from None
