"""Versioned layers ("SDKs") from layer registries: ``python = "3.11"``.

``squish.layers.store.LayerStore`` uses ``RegistryResolver`` for
``LayerKind.REGISTRY``: a non-base layer given by version. A registry is a
URL template, configured per daemon for one layer name or as the default::

    https://layers.example.com/{name}/{version}/{arch}.tar.gz

The template names a tarball (or zip). Its sha256 comes from the squishfile
(``python = { version = "3.11", sha256 = "..." }``) or else from a
``.sha256`` file next to it (``sha256sum`` format); a layer with neither is
refused, never used unverified. The tarball streams to a temporary file in
the cache while being hashed, and only a verified one is unpacked, with
``squish.layers.unpack``, into ``LayerCache.materialise`` under the same key
an archive path layer with that content gets (``archive_key``).

What a name and version resolved to is kept in a small index,
``<cache root>/registry/<name>/<version>/<arch>.json``, so a layer that was
pulled (or imported from a file, for hosts with no network) is found again
offline: like podman's "pull if missing", a container start never asks a
registry about a layer it has.

Blocking (it downloads); the store's callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx

from squish.errors import LayerError
from squish.layers.archive import archive_key, content_sha256
from squish.layers.cache import KeyedLocks, LayerCache, write_record
from squish.layers.download import Fetcher, FetchObserver, NotFound, Progress
from squish.layers.model import LayerRef, machine_arch
from squish.layers.unpack import Limits, unpack_file

DEFAULT = "default"
"""The registries key whose template serves every layer name without its own."""
REGISTRY_ENV = "SQUISH_REGISTRY"
"""Environment variable holding the default registry template."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset({"name", "version", "arch"})
# A .sha256 file is one line; anything bigger is not one.
_MAX_DIGEST_FILE = 4096


@dataclasses.dataclass(frozen=True)
class RegistryLayer:
    """What a name and version resolved to, as recorded in the index."""

    name: str
    version: str
    arch: str
    sha256: str
    """Of the archive."""
    source: str
    """Where it came from: the URL, or ``import:<file>``."""
    path: Path
    """The unpacked layer in the cache."""


def check_template(template: str, what: str) -> str:
    """``template`` if it is a usable registry URL template, else a LayerError."""
    if not template.startswith(("http://", "https://")):
        raise LayerError(f"{what}: {template!r} must be an http:// or https:// URL template")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    except ValueError as exc:
        raise LayerError(f"{what}: {template!r} is not a valid template: {exc}") from exc
    unknown = fields - _FIELDS
    if unknown:
        raise LayerError(
            f"{what}: {template!r} uses {{{sorted(unknown)[0]}}}; "
            "a template may use {name}, {version} and {arch}"
        )
    if "version" not in fields:
        raise LayerError(f"{what}: {template!r} must contain {{version}}")
    return template


def check_name(name: str, version: str) -> None:
    if not _NAME.fullmatch(name):
        raise LayerError(
            f"{name!r} is not a layer name (letters, digits, '.', '_' and '-', "
            "starting with a letter or digit)"
        )
    if not _VERSION.fullmatch(version):
        raise LayerError(f"{version!r} is not a version such as 3.11 (letters, digits, . _ + -)")


class RegistryResolver:
    """Resolves ``<name> = "<version>"`` through the configured registries.

    ``registries`` maps a layer name (or ``DEFAULT``) to its URL template.
    Safe to call from several threads: a lock per name and version makes
    waiters share one download, and the cache makes the unpack atomic across
    processes. ``timeout`` bounds connecting and each read, ``deadline`` a
    whole download.
    """

    def __init__(
        self,
        cache: LayerCache,
        *,
        registries: Mapping[str, str] | None = None,
        arch: str | None = None,
        timeout: float = 30.0,
        deadline: float = 3600.0,
        client: httpx.Client | None = None,
        limits: Limits = Limits(),  # noqa: B008
        observer: FetchObserver | None = None,
    ) -> None:
        self.cache = cache
        self.registries = {
            name: check_template(template, f"registry for {name!r}")
            for name, template in (registries or {}).items()
        }
        self.arch = machine_arch(arch)
        self.fetcher = Fetcher(
            "the layer registry",
            hint=f"check the network or the registry (--registry, ${REGISTRY_ENV})",
            timeout=timeout,
            deadline=deadline,
            client=client,
        )
        self.limits = limits
        self.observer = observer
        self._index = cache.root / "registry"
        self._lock_for = KeyedLocks()

    def resolve(self, layer: LayerRef) -> Path:
        if layer.version is None:
            raise LayerError("has no version")
        return self.pull(layer.name, layer.version, sha256=layer.sha256).path

    def cached(self, layer: LayerRef) -> Path | None:
        if layer.version is None:
            return None
        try:
            found = self.installed(layer.name, layer.version, sha256=layer.sha256)
        except LayerError:
            return None
        return found.path if found is not None else None

    def url_for(self, name: str, version: str) -> str:
        template = self.registries.get(name) or self.registries.get(DEFAULT)
        if template is None:
            raise LayerError(
                f"no layer registry is configured for {name!r} (--registry, "
                f"${REGISTRY_ENV} or [layers.registries] in the config); configure one, or import "
                f"the layer from a file: squish layer import {name} {version} FILE"
            )
        return template.format(name=name, version=version, arch=self.arch)

    def installed(
        self, name: str, version: str, *, sha256: str | None = None
    ) -> RegistryLayer | None:
        """What ``name`` ``version`` resolved to, if it is in the cache.

        With ``sha256`` (pinned by a squishfile) only a layer of exactly that
        archive counts, wherever it came from.
        """
        check_name(name, version)
        record = self._read_record(name, version)
        if sha256 is not None:
            path = self.cache.get(archive_key(sha256))
            if path is None:
                return None
            source = record.source if record and record.sha256 == sha256 else ""
            return RegistryLayer(name, version, self.arch, sha256, source, path)
        return record

    def pull(
        self,
        name: str,
        version: str,
        *,
        sha256: str | None = None,
        refresh: bool = False,
        progress: Progress | None = None,
    ) -> RegistryLayer:
        """Return ``name`` ``version``, downloading it unless it is cached."""
        check_name(name, version)
        with self._lock_for((name, version)):
            cached = self.installed(name, version, sha256=sha256)
            if cached is not None and not refresh:
                if cached.source == "":
                    # Pinned, and present under another name or origin.
                    cached = self._record(cached, source=f"cache:{cached.sha256}")
                return cached
            url = self.url_for(name, version)
            absent = self._absent(name, version)
            with self.fetcher.session() as client:
                expected = sha256 or self._published_digest(client, url, absent)
                with self.cache.download_file(prefix=".registry-") as download:
                    try:
                        got = self.fetcher.download(
                            client, url, download, progress=progress, not_found=absent
                        )
                    except LayerError:
                        self._observe("error", 0)
                        raise
                    if got.sha256 != expected:
                        self._observe("error", got.size)
                        origin = "the squishfile" if sha256 else f"{url}.sha256"
                        raise LayerError(
                            f"{url} has sha256 {got.sha256}, but {origin} says {expected}; "
                            "refusing it"
                        )
                    path = self._unpack(download, expected, url)
                    self._observe("success", got.size)
            layer = RegistryLayer(name, version, self.arch, expected, url, path)
            return self._record(layer, source=url)

    def import_file(
        self, name: str, version: str, file: IO[bytes], *, source: str, sha256: str | None = None
    ) -> RegistryLayer:
        """Add ``name`` ``version`` from an archive already on this host.

        ``file`` is read from the start; with ``sha256`` it must match.
        """
        check_name(name, version)
        digest = content_sha256(file)
        if sha256 is not None and digest != sha256:
            raise LayerError(f"{source} has sha256 {digest}, not the {sha256} given; refusing it")
        with self._lock_for((name, version)):
            path = self._unpack(file, digest, source)
            layer = RegistryLayer(name, version, self.arch, digest, f"import:{source}", path)
            return self._record(layer, source=layer.source)

    def layers(self) -> list[RegistryLayer]:
        """Every indexed layer of this architecture whose tree is still cached."""
        found = []
        for index in sorted(self._index.glob(f"*/*/{self.arch}.json")):
            version, name = index.parent.name, index.parent.parent.name
            if _NAME.fullmatch(name) and _VERSION.fullmatch(version):
                record = self._read_record(name, version)
                if record is not None:
                    found.append(record)
        return found

    def forget(self, name: str, version: str) -> RegistryLayer | None:
        """Drop ``name`` ``version`` from the index (the entry is the caller's)."""
        check_name(name, version)
        with self._lock_for((name, version)):
            record = self._read_record(name, version)
            with contextlib.suppress(FileNotFoundError):
                self._index_file(name, version).unlink()
            return record

    def _published_digest(self, client: httpx.Client, url: str, absent: str) -> str:
        try:
            body = self.fetcher.read(
                client, f"{url}.sha256", limit=_MAX_DIGEST_FILE, not_found="no digest"
            )
        except NotFound:
            # A registry without the version has no .sha256 for it either:
            # ask whether the archive is there before blaming the digest.
            if self.fetcher.found(client, url) is False:
                raise NotFound(f"{absent} ({url} answered 404)") from None
            raise LayerError(
                f"the registry publishes no {url}.sha256 and the squishfile pins no sha256, "
                "so the layer cannot be verified; publish the .sha256 or pin it with "
                '{ version = "...", sha256 = "..." } (or squish layer pull --sha256)'
            ) from None
        words = body.decode("ascii", "replace").split()
        digest = words[0].lower() if words else ""
        if not _DIGEST.fullmatch(digest):
            raise LayerError(f"{url}.sha256 does not start with a sha256 hex digest")
        return digest

    def _absent(self, name: str, version: str) -> str:
        # Fetcher appends "(<url> answered 404)": the URL that was asked.
        return f"{name} {version} ({self.arch}) was not found in the layer registry"

    def _unpack(self, file: IO[bytes], digest: str, label: str) -> Path:
        return self.cache.materialise(
            archive_key(digest),
            lambda root: unpack_file(file, root, name=label, limits=self.limits),
        )

    def _record(self, layer: RegistryLayer, *, source: str) -> RegistryLayer:
        record = {
            "name": layer.name,
            "version": layer.version,
            "arch": layer.arch,
            "sha256": layer.sha256,
            "source": source,
            "recorded_at": time.time(),
        }
        where = self._index_file(layer.name, layer.version)
        write_record(where, record, f"layer {layer.name} {layer.version}")
        return RegistryLayer(
            layer.name, layer.version, layer.arch, layer.sha256, source, layer.path
        )

    def _read_record(self, name: str, version: str) -> RegistryLayer | None:
        try:
            record = json.loads(self._index_file(name, version).read_text())
            digest, source = str(record["sha256"]), str(record.get("source", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _DIGEST.fullmatch(digest):
            return None
        path = self.cache.get(archive_key(digest))
        if path is None:
            return None
        return RegistryLayer(name, version, self.arch, digest, source, path)

    def _observe(self, result: str, size: int) -> None:
        if self.observer is not None:
            self.observer("registry", result, size)

    def _index_file(self, name: str, version: str) -> Path:
        return self._index / name / version / f"{self.arch}.json"
