"""The layer store: every layer of a squishfile resolved to a host path.

Called by whatever turns a parsed ``Squishfile`` into a runtime
``ContainerSpec`` (``squish.reconcile.spec``, for the daemon and ``squish
run``): ``resolve(sf.base, sf.layers)`` gives the rootfs and the mounts. The
store itself only decides *which* resolver handles a layer (``classify``)
and labels errors; the resolvers do the work: local paths
(``squish.layers.path``), archives unpacked into the cache
(``squish.layers.archive``), the built-in base (``squish.layers.busybox``),
``alpine = "3.14"`` from an Alpine mirror (``squish.layers.alpine``) and
versioned layers from a layer registry (``squish.layers.registry``). A
resolver passed in ``resolvers`` replaces the store's own for its kind.

Resolving may build the built-in base (a few hundred milliseconds, once),
unpack an archive (once per content) and download; it blocks, so async
callers run it in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from squish.errors import LayerError
from squish.layers.alpine import DEFAULT_MIRROR, MIRROR_ENV, AlpineResolver
from squish.layers.archive import ArchiveResolver
from squish.layers.busybox import BusyboxBase
from squish.layers.cache import LayerCache
from squish.layers.download import FetchObserver
from squish.layers.model import (
    BUILTIN_BASE,
    LayerKind,
    LayerRef,
    Mount,
    ResolvedLayers,
    classify,
    describe,
    mount_target,
)
from squish.layers.path import PathResolver
from squish.layers.registry import DEFAULT, REGISTRY_ENV, RegistryResolver
from squish.layers.resolver import Resolver
from squish.layers.secrets import Secrets
from squish.layers.volumes import Volumes


@runtime_checkable
class CacheLookup(Protocol):
    """A resolver that can say, without fetching or building, where a layer is cached."""

    def cached(self, layer: LayerRef) -> Path | None: ...


@dataclass(frozen=True)
class _DefaultBase:
    """Stands in for the base layer when a squishfile names none."""

    version: str | None
    path: Path | None
    name: str = "base"
    target: str = "/"
    rw: bool = False
    sha256: str | None = None

    @classmethod
    def configured(cls, default_base: str) -> _DefaultBase:
        # Same reading as a squishfile's `base = "..."`, except that paths must
        # be absolute (there is no squishfile to be relative to), and
        # `alpine:3.20` stands for a squishfile's `alpine = "3.20"`.
        if default_base.startswith("/"):
            # Resolved once, as a squishfile's path is when it is read.
            return cls(version=None, path=Path(default_base).resolve())
        if default_base.startswith("alpine:"):
            return cls(version=default_base.removeprefix("alpine:"), path=None, name="alpine")
        return cls(version=default_base, path=None)


class LayerStore:
    """Resolves layers to host paths, caching what it builds under ``state_dir``.

    ``default_base`` is the base used when a squishfile has none: ``"busybox"``
    (built in), ``"alpine:<version>"`` or the absolute path of a rootfs directory.
    ``busybox`` overrides the binary the built-in base is built from (default:
    ``busybox`` on ``PATH``). ``resolvers`` adds or replaces the resolver for a
    kind, which is how downloads plug in and how tests fake them.
    ``alpine_mirror`` is where ``alpine = "<version>"`` is downloaded from
    (default: ``$SQUISH_ALPINE_MIRROR``, else dl-cdn.alpinelinux.org), and
    ``registries`` maps a layer name (or ``"default"``) to the URL template
    of its registry (default: ``$SQUISH_REGISTRY`` as the default one).
    ``timeout`` bounds connecting and each read of a download, ``deadline``
    a whole download; ``observer`` hears of every fetch (for metrics).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        default_base: str = BUILTIN_BASE,
        busybox: Path | None = None,
        resolvers: Mapping[LayerKind, Resolver] | None = None,
        alpine_mirror: str | None = None,
        registries: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        deadline: float = 3600.0,
        observer: FetchObserver | None = None,
    ) -> None:
        # Resolved: the paths of cached layers must lead through no symlink
        # (see squish.layers.path).
        self.state_dir = state_dir.resolve()
        self.default_base = default_base
        self._default_base = _DefaultBase.configured(default_base)
        self.cache = LayerCache(self.state_dir / "layers")
        self.volumes = Volumes(self.state_dir / "volumes")
        self.secrets = Secrets(self.state_dir / "secrets")
        self._busybox_base = BusyboxBase(self.cache, busybox=busybox)
        given = dict(resolvers or {})
        # Path layers whose content is a tarball go to the archive resolver,
        # the given one if there is one.
        archives = given.get(LayerKind.ARCHIVE)
        if archives is None:
            archives = ArchiveResolver(self.cache, observer=observer)
        if registries is None:
            default = os.environ.get(REGISTRY_ENV)
            registries = {DEFAULT: default} if default else {}
        self.alpine = AlpineResolver(
            self.cache,
            mirror=alpine_mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR,
            timeout=timeout,
            deadline=deadline,
            observer=observer,
        )
        self.registry = RegistryResolver(
            self.cache, registries=registries, timeout=timeout, deadline=deadline, observer=observer
        )
        self._resolvers: dict[LayerKind, Resolver] = {
            LayerKind.PATH: PathResolver(archives=archives),
            LayerKind.ROOTFS_PATH: PathResolver(directory_only=True, archives=archives),
            LayerKind.BUILTIN_BASE: self._busybox_base,
            LayerKind.ARCHIVE: archives,
            LayerKind.ALPINE_BASE: self.alpine,
            LayerKind.REGISTRY: self.registry,
        }
        self._resolvers.update(given)

    def resolve(self, base: LayerRef | None, layers: Iterable[LayerRef]) -> ResolvedLayers:
        """Resolve a squishfile's base (None: the default) and its other layers."""
        # Mounts first: checking paths is instant, building a base is not, and
        # a typo in a path is the likelier mistake.
        mounts = tuple(self._resolve_mount(layer) for layer in layers)
        return ResolvedLayers(rootfs=self.resolve_base(base), mounts=mounts)

    def resolve_base(self, base: LayerRef | None) -> Path:
        """Return the host directory of the base rootfs; None means the default."""
        if base is None:
            default = self._default_base
            return self._resolve(default, f"default base {self.default_base!r}", as_base=True)
        return self._resolve(base, describe(base, as_base=True), as_base=True)

    def default_base_ref(self) -> LayerRef:
        """The configured default base, shaped like a squishfile's base layer."""
        return self._default_base

    def cached_entries(self, base: LayerRef | None, layers: Iterable[LayerRef]) -> set[Path]:
        """The cache entries a squishfile with these layers uses, without fetching any.

        What ``squish layer gc`` keeps. Layers that are not cached, or not in
        the cache at all (directories), add nothing; a local archive is
        hashed if its identity is not known.
        """
        found: set[Path] = set()
        refs = [(base or self.default_base_ref(), True), *((layer, False) for layer in layers)]
        for layer, as_base in refs:
            if layer.path is not None and self.cache.contains(layer.path):
                # Already a cache path: what a git source hands over (and
                # if it is an archive, its unpacked entry is looked up below).
                found.add(self.cache.entry_of(layer.path))
            try:
                resolver = self._resolvers.get(classify(layer, as_base=as_base))
            except LayerError:
                continue
            if isinstance(resolver, PathResolver):
                resolver = resolver.archives
            if isinstance(resolver, CacheLookup) and (path := resolver.cached(layer)) is not None:
                found.add(path)
        return found

    def builtin_base_cached(self) -> Path | None:
        """The built-in base if it has been built (never builds it)."""
        return self._busybox_base.cached()

    def builtin_base(self) -> Path:
        """Build (once) and return the built-in busybox rootfs."""
        try:
            return self._busybox_base.materialise()
        except LayerError as exc:
            raise LayerError(f"built-in base {BUILTIN_BASE!r}: {exc}") from exc

    def _resolve_mount(self, layer: LayerRef) -> Mount:
        label = describe(layer, as_base=False)
        try:
            target = mount_target(layer)
        except LayerError as exc:
            raise LayerError(f"{label}: {exc}") from exc
        return Mount(source=self._resolve(layer, label, as_base=False), target=target, rw=layer.rw)

    def _resolve(self, layer: LayerRef, label: str, *, as_base: bool) -> Path:
        # Resolvers report what is wrong; only here is it known which layer,
        # and in which role, so the label is added here and nowhere else.
        try:
            kind = classify(layer, as_base=as_base)
            resolver = self._resolvers.get(kind)
            if resolver is None:
                raise LayerError(f"no resolver for {kind} layers")
            return resolver.resolve(layer)
        except LayerError as exc:
            raise LayerError(f"{label}: {exc}") from exc
