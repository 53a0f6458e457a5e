"""What the layer store takes in and hands out: layer references, mounts, kinds.

Pure: no I/O. ``squish.layers.store`` classifies every layer it is asked for
with ``classify`` and hands it to the resolver for that kind; the runtime
consumes ``ResolvedLayers`` and ``Mount``. Everything here is re-exported from
``squish.layers``, which is where callers import it from.
"""

from __future__ import annotations

import enum
import platform
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from squish.errors import LayerError

BUILTIN_BASE = "busybox"
"""The version string naming the built-in base (``base = "busybox"``)."""

# Suffixes the design says are unpacked into the cache rather than mounted as
# files. Classification is by name only so that it stays pure; the archive
# resolver then reads the format from the content, and the path resolver
# sends tarballs with other names to it (see squish.layers.archive).
ARCHIVE_SUFFIXES = (
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.xz",
    ".txz",
    ".tar.bz2",
    ".tbz2",
    ".tbz",
    ".tar.zst",
    ".tzst",
    ".zip",
)


# What Python calls a machine -> what Alpine (and layer registries) call it.
_ARCH_NAMES = {"amd64": "x86_64", "arm64": "aarch64", "i386": "x86", "i686": "x86"}
_ARCH = re.compile(r"[A-Za-z0-9_]+")


def machine_arch(given: str | None = None) -> str:
    """The architecture name downloads are chosen by: ``x86_64``, ``aarch64``, ..."""
    machine = given or platform.machine()
    arch = _ARCH_NAMES.get(machine, machine)
    if not _ARCH.fullmatch(arch):
        raise LayerError(f"{arch!r} is not an architecture name")
    return arch


class LayerRef(Protocol):
    """The parts of a manifest ``Layer`` the store reads.

    ``squish.model.squishfile.Layer`` satisfies this structurally; the store never
    imports the manifest, so it can be used (and tested) without it.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str | None: ...

    @property
    def path(self) -> Path | None: ...

    @property
    def target(self) -> str: ...

    @property
    def rw(self) -> bool: ...

    @property
    def sha256(self) -> str | None:
        """The digest a downloaded layer's archive must have, if the squishfile pins one."""
        ...


@dataclass(frozen=True)
class Mount:
    """One host path visible in the container."""

    source: Path
    """Absolute host path (file or directory)."""
    target: str
    """Absolute container path."""
    rw: bool


@dataclass(frozen=True)
class ResolvedLayers:
    """A container's filesystem as host paths, ready for the runtime."""

    rootfs: Path
    """Host directory of the base rootfs, mounted read-only at ``/``."""
    mounts: tuple[Mount, ...]
    """The non-base layers, in manifest order."""


class LayerKind(enum.StrEnum):
    """How a layer becomes a host path; the store keeps one resolver per kind."""

    PATH = "path"
    """A local file or directory, bind-mounted as it is."""
    ROOTFS_PATH = "rootfs path"
    """A local directory used as the base rootfs."""
    ARCHIVE = "archive"
    """A local archive, to be unpacked into the content-addressed cache."""
    BUILTIN_BASE = "built-in base"
    """The busybox rootfs squish builds offline."""
    ALPINE_BASE = "alpine base"
    """An Alpine minirootfs of some version, from a mirror."""
    REGISTRY = "registry"
    """A versioned layer (an SDK) from a layer registry."""


def classify(layer: LayerRef, *, as_base: bool) -> LayerKind:
    """Decide which resolver handles ``layer``.

    A path wins over a version, so ``{ path = ..., sha256 = ... }`` stays a
    local layer (whose file must have that digest). Raises ``LayerError``
    (without the layer label) for a layer no resolver could ever handle.
    """
    if layer.path is not None:
        if layer.path.name.lower().endswith(ARCHIVE_SUFFIXES):
            return LayerKind.ARCHIVE
        return LayerKind.ROOTFS_PATH if as_base else LayerKind.PATH
    if layer.version is None:
        raise LayerError("has neither a path nor a version")
    if not as_base:
        return LayerKind.REGISTRY
    if layer.version == BUILTIN_BASE:
        return LayerKind.BUILTIN_BASE
    if layer.name == "alpine":
        return LayerKind.ALPINE_BASE
    raise LayerError(
        f'unknown base {layer.version!r}; use base = "{BUILTIN_BASE}" (built in), '
        'alpine = "<version>" or base = "<path to a rootfs directory>"'
    )


def mount_target(layer: LayerRef) -> str:
    """Return the container path a non-base layer is mounted at, checked.

    The manifest already normalises targets; this guards the one thing that
    would break every container silently, a layer shadowing the base at ``/``.
    """
    target = PurePosixPath(layer.target)
    if not target.is_absolute() or ".." in target.parts:
        raise LayerError(f"target {layer.target!r} must be an absolute container path")
    if str(target) == "/":
        raise LayerError("only the base can be mounted at /; give the layer a target below it")
    return str(target)


def describe(layer: LayerRef, *, as_base: bool) -> str:
    """The label every error about ``layer`` starts with.

    ``layer 'conf'`` for ordinary layers, ``base 'alpine' 3.14`` for the base,
    whose version says more than its name does.
    """
    if not as_base:
        return f"layer {layer.name!r}"
    if layer.version is not None:
        return f"base {layer.name!r} {layer.version}"
    return f"base {layer.name!r}"
