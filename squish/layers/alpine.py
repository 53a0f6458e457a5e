"""The Alpine base: ``alpine = "3.14"`` resolved to that branch's minirootfs.

``squish.layers.store.LayerStore`` uses ``AlpineResolver`` for
``LayerKind.ALPINE_BASE``. For a release branch ``3.14`` it reads the
mirror's ``v3.14/releases/<arch>/latest-releases.yaml``, takes the
``alpine-minirootfs`` entry (which names the exact release, ``3.14.10``, its
file and its sha256), streams that tarball to a temporary file in the cache
while hashing it, refuses it unless the digest matches, and unpacks it with
``squish.layers.unpack`` into ``LayerCache.materialise``. Absolute symlinks
(``bin/sh -> /bin/busybox``) are allowed there, and only there: the tree is
mounted at the container's ``/``, where they resolve inside it.

What a branch resolved to is kept in a small index,
``<cache root>/alpine/<branch>/<arch>.json`` (replaced atomically), so a base
that was downloaded once is found again with no network at all. By default a
cached branch is used as it is, like podman's "pull if missing": a container
start never waits for a mirror. With ``refresh=True`` the mirror is asked
every time and a newer point release replaces the indexed one; if the mirror
cannot be used then, the cached one is used instead.

Blocking (it downloads); the store's callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from squish.errors import LayerError
from squish.layers.archive import content_sha256
from squish.layers.cache import KeyedLocks, LayerCache, write_record
from squish.layers.download import Fetcher, FetchObserver, Progress, one_line
from squish.layers.model import LayerRef, machine_arch
from squish.layers.unpack import Limits, unpack_file

DEFAULT_MIRROR = "https://dl-cdn.alpinelinux.org/alpine"
MIRROR_ENV = "SQUISH_ALPINE_MIRROR"
"""Environment variable the store reads the mirror from when none is given."""

UNPACKER_VERSION = 1
"""Bump whenever what is written for the same minirootfs changes."""

_BRANCH = re.compile(r"[0-9]+\.[0-9]+")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9._+-]+")
_FLAVOR = "alpine-minirootfs"
# Release files are a few kilobytes; anything much bigger is not one.
_MAX_RELEASES_YAML = 1 << 20


@dataclass(frozen=True)
class AlpineRelease:
    """What one branch resolved to, as recorded in the index."""

    branch: str
    """The version asked for: ``3.14``."""
    version: str
    """The exact release: ``3.14.10``."""
    arch: str
    sha256: str
    """Of the minirootfs tarball."""
    path: Path
    """The unpacked rootfs in the cache."""


class AlpineResolver:
    """Resolves ``alpine = "<major>.<minor>"`` to an unpacked minirootfs.

    Safe to call from several threads: a lock per branch makes waiters for
    the same branch share one download, and the cache makes the unpack
    atomic across processes. ``client`` replaces the HTTP client (it is then
    not closed here); otherwise one is opened per download with ``timeout``
    seconds for connecting and for every read.
    """

    def __init__(
        self,
        cache: LayerCache,
        *,
        mirror: str = DEFAULT_MIRROR,
        arch: str | None = None,
        timeout: float = 30.0,
        deadline: float = 3600.0,
        client: httpx.Client | None = None,
        refresh: bool = False,
        limits: Limits = Limits(),  # noqa: B008
        observer: FetchObserver | None = None,
    ) -> None:
        self.cache = cache
        self.mirror = mirror.rstrip("/")
        self.arch = machine_arch(arch)
        self.fetcher = Fetcher(
            "the Alpine mirror",
            hint=f"check the network, or set another mirror (--alpine-mirror, ${MIRROR_ENV})",
            timeout=timeout,
            deadline=deadline,
            client=client,
        )
        self.refresh = refresh
        self.limits = limits
        self.observer = observer
        self._index = cache.root / "alpine"
        self._lock_for = KeyedLocks()

    def resolve(self, layer: LayerRef) -> Path:
        if layer.version is None:
            raise LayerError("has no Alpine version")
        return self.materialise(layer.version).path

    def cached(self, layer: LayerRef) -> Path | None:
        if layer.version is None or not _BRANCH.fullmatch(layer.version):
            return None
        release = self.installed(layer.version)
        return release.path if release is not None else None

    def materialise(
        self, branch: str, *, progress: Progress | None = None, refresh: bool | None = None
    ) -> AlpineRelease:
        """Return the rootfs of ``branch`` (``3.14``), downloading it if needed.

        ``refresh`` (default: the resolver's) asks the mirror even when the
        branch is cached, to pick up a newer point release.
        """
        if not _BRANCH.fullmatch(branch):
            raise LayerError(
                f'{branch!r} is not an Alpine release branch; give major.minor, like "3.14"'
            )
        with self._lock_for(branch):
            cached = self.installed(branch)
            if cached is not None and not (self.refresh if refresh is None else refresh):
                return cached
            try:
                return self._download(branch, progress)
            except LayerError:
                # Refreshing is best effort once something is cached.
                if cached is not None:
                    return cached
                raise

    def import_file(self, branch: str, file: IO[bytes], *, source: str) -> AlpineRelease:
        """Add ``branch`` from a minirootfs tarball already on this host (air-gapped).

        The exact release is read from the tarball's ``etc/alpine-release``,
        which must belong to ``branch``.
        """
        if not _BRANCH.fullmatch(branch):
            raise LayerError(
                f'{branch!r} is not an Alpine release branch; give major.minor, like "3.14"'
            )
        digest = content_sha256(file)
        with self._lock_for(branch):
            existed = self.cache.get(_entry_key(digest)) is not None
            path = self.cache.materialise(
                _entry_key(digest),
                lambda root: unpack_file(
                    file, root, name=source, limits=self.limits, allow_absolute_symlinks=True
                ),
            )
            try:
                version = (path / "etc" / "alpine-release").read_text().strip()
            except (OSError, UnicodeDecodeError):
                version = ""
            if not version.startswith(f"{branch}."):
                found = f"Alpine {version}" if version else "no etc/alpine-release"
                if not existed:  # else another branch's record may point at it
                    self.cache.remove(_entry_key(digest))
                raise LayerError(f"{source} is not an Alpine {branch} minirootfs ({found})")
            self._record(branch, version, digest)
        return AlpineRelease(branch, version, self.arch, digest, path)

    def releases(self) -> list[AlpineRelease]:
        """Every branch in the index whose rootfs is still cached."""
        found = []
        for index in sorted(self._index.glob(f"*/{self.arch}.json")):
            release = self.installed(index.parent.name)
            if release is not None:
                found.append(release)
        return found

    def forget(self, branch: str) -> AlpineRelease | None:
        """Drop ``branch`` from the index (the cache entry is the caller's to remove)."""
        with self._lock_for(branch):
            release = self.installed(branch)
            with contextlib.suppress(FileNotFoundError):
                self._index_file(branch).unlink()
            return release

    def installed(self, branch: str) -> AlpineRelease | None:
        """What ``branch`` resolved to last time, if that is still in the cache."""
        try:
            record = json.loads(self._index_file(branch).read_text())
            version, digest = str(record["version"]), str(record["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # never downloaded, or an index from elsewhere: download
        if not _DIGEST.fullmatch(digest):
            return None
        path = self.cache.get(_entry_key(digest))
        if path is None:
            return None
        return AlpineRelease(branch, version, self.arch, digest, path)

    def _download(self, branch: str, progress: Progress | None) -> AlpineRelease:
        releases = f"{self.mirror}/v{branch}/releases/{self.arch}"
        try:
            with self.fetcher.session() as client:
                latest = f"{releases}/latest-releases.yaml"
                version, file, digest = self._latest(client, branch, latest)
                path = self.cache.get(_entry_key(digest))
                if path is None:
                    path = self._fetch_rootfs(client, f"{releases}/{file}", digest, progress)
        except LayerError:
            self._observe("error", 0)
            raise
        self._record(branch, version, digest)
        return AlpineRelease(branch, version, self.arch, digest, path)

    def _latest(self, client: httpx.Client, branch: str, url: str) -> tuple[str, str, str]:
        """The (exact version, file name, sha256) of the minirootfs in ``url``."""
        missing = f"no Alpine {branch} for {self.arch} on {self.mirror}"
        body = self.fetcher.read(client, url, limit=_MAX_RELEASES_YAML, not_found=missing)
        try:
            releases: Any = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise LayerError(f"{url} is not valid YAML: {one_line(exc)}") from exc
        if not isinstance(releases, list):
            raise LayerError(f"{url} is not a list of Alpine releases")
        for release in releases:
            if isinstance(release, dict) and release.get("flavor") == _FLAVOR:
                version, file = str(release.get("version", "")), str(release.get("file", ""))
                digest = str(release.get("sha256", "")).lower()
                if not (version and _FILE.fullmatch(file) and _DIGEST.fullmatch(digest)):
                    raise LayerError(
                        f"{url}: the {_FLAVOR} entry lacks a valid version, file or sha256"
                    )
                if file in (".", ".."):
                    raise LayerError(f"{url}: the {_FLAVOR} entry names the file {file!r}")
                return version, file, digest
        raise LayerError(f"{url} lists no {_FLAVOR} for Alpine {branch} on {self.arch}")

    def _fetch_rootfs(
        self, client: httpx.Client, url: str, digest: str, progress: Progress | None
    ) -> Path:
        with self.cache.download_file(prefix=".alpine-") as download:
            got = self.fetcher.download(client, url, download, progress=progress)
            if got.sha256 != digest:
                raise LayerError(
                    f"{url} has sha256 {got.sha256}, but the mirror's release "
                    f"list says {digest}; refusing it"
                )
            path = self.cache.materialise(
                _entry_key(digest),
                lambda root: unpack_file(
                    download,
                    root,
                    name=url,
                    limits=self.limits,
                    allow_absolute_symlinks=True,
                ),
            )
            self._observe("success", got.size)
            return path

    def _observe(self, result: str, size: int) -> None:
        if self.observer is not None:
            self.observer("alpine", result, size)

    def _record(self, branch: str, version: str, digest: str) -> None:
        record = {"branch": branch, "version": version, "arch": self.arch, "sha256": digest}
        write_record(self._index_file(branch), record, f"Alpine {branch}")

    def _index_file(self, branch: str) -> Path:
        return self._index / branch / f"{self.arch}.json"


def _entry_key(digest: str) -> str:
    """The cache key of a minirootfs: distinct from an archive layer of the same file."""
    key = hashlib.sha256(f"squish alpine base v{UNPACKER_VERSION}\n".encode())
    key.update(bytes.fromhex(digest))
    return key.hexdigest()
