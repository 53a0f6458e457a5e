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
import os
import platform
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from squish.errors import LayerError
from squish.layers.cache import LayerCache
from squish.layers.model import LayerRef
from squish.layers.unpack import Limits, unpack_file

DEFAULT_MIRROR = "https://dl-cdn.alpinelinux.org/alpine"
MIRROR_ENV = "SQUISH_ALPINE_MIRROR"
"""Environment variable the store reads the mirror from when none is given."""

UNPACKER_VERSION = 1
"""Bump whenever what is written for the same minirootfs changes."""

_BRANCH = re.compile(r"[0-9]+\.[0-9]+")
_ARCH = re.compile(r"[A-Za-z0-9_]+")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9._+-]+")
_FLAVOR = "alpine-minirootfs"
_CHUNK = 1 << 16
# Release files are a few kilobytes; anything much bigger is not one.
_MAX_RELEASES_YAML = 1 << 20
# What Python calls a machine -> what Alpine calls the architecture.
_ARCH_NAMES = {"amd64": "x86_64", "arm64": "aarch64", "i386": "x86", "i686": "x86"}


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
        client: httpx.Client | None = None,
        refresh: bool = False,
        limits: Limits = Limits(),  # noqa: B008
    ) -> None:
        self.cache = cache
        self.mirror = mirror.rstrip("/")
        machine = arch or platform.machine()
        self.arch = _ARCH_NAMES.get(machine, machine)
        if not _ARCH.fullmatch(self.arch):
            raise LayerError(f"{self.arch!r} is not an architecture name")
        self.timeout = timeout
        self.client = client
        self.refresh = refresh
        self.limits = limits
        self._index = cache.root / "alpine"
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def resolve(self, layer: LayerRef) -> Path:
        if layer.version is None:
            raise LayerError("has no Alpine version")
        return self.materialise(layer.version).path

    def materialise(self, branch: str) -> AlpineRelease:
        """Return the rootfs of ``branch`` (``3.14``), downloading it if needed."""
        if not _BRANCH.fullmatch(branch):
            raise LayerError(
                f'{branch!r} is not an Alpine release branch; give major.minor, like "3.14"'
            )
        with self._lock_for(branch):
            cached = self.installed(branch)
            if cached is not None and not self.refresh:
                return cached
            try:
                return self._download(branch)
            except LayerError:
                # Refreshing is best effort once something is cached.
                if cached is not None:
                    return cached
                raise

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

    def _download(self, branch: str) -> AlpineRelease:
        releases = f"{self.mirror}/v{branch}/releases/{self.arch}"
        with self._session() as client:
            entry = self._latest(client, branch, f"{releases}/latest-releases.yaml")
            version, file, digest = entry
            path = self.cache.get(_entry_key(digest))
            if path is None:
                path = self._fetch_rootfs(client, f"{releases}/{file}", digest)
        self._record(branch, version, digest)
        return AlpineRelease(branch, version, self.arch, digest, path)

    def _latest(self, client: httpx.Client, branch: str, url: str) -> tuple[str, str, str]:
        """The (exact version, file name, sha256) of the minirootfs in ``url``."""
        body = bytearray()
        with self._get(client, url, branch) as response:
            for chunk in _stream(response, url):
                body += chunk
                if len(body) > _MAX_RELEASES_YAML:
                    raise LayerError(f"{url} is too big to be a list of Alpine releases")
            _check_length(response, len(body), url)
        try:
            releases: Any = yaml.safe_load(bytes(body))
        except yaml.YAMLError as exc:
            raise LayerError(f"{url} is not valid YAML: {_one_line(exc)}") from exc
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

    def _fetch_rootfs(self, client: httpx.Client, url: str, digest: str) -> Path:
        try:
            self.cache.root.mkdir(parents=True, exist_ok=True)
            # Next to the cache, so an unpack never crosses filesystems;
            # deleted on close, verified or not.
            download = tempfile.TemporaryFile(  # noqa: SIM115 (closed by the with below)
                dir=self.cache.root, prefix=".alpine-"
            )
        except OSError as exc:
            raise LayerError(f"cannot write the layer cache in {self.cache.root}: {exc}") from exc
        with download:
            content = hashlib.sha256()
            size = 0
            with self._get(client, url, None) as response:
                for chunk in _stream(response, url):
                    content.update(chunk)
                    size += len(chunk)
                    _write(download, chunk, self.cache.root)
                _check_length(response, size, url)
            if content.hexdigest() != digest:
                raise LayerError(
                    f"{url} has sha256 {content.hexdigest()}, but the mirror's release "
                    f"list says {digest}; refusing it"
                )
            return self.cache.materialise(
                _entry_key(digest),
                lambda root: unpack_file(
                    download,
                    root,
                    name=url,
                    limits=self.limits,
                    allow_absolute_symlinks=True,
                ),
            )

    @contextlib.contextmanager
    def _session(self) -> Iterator[httpx.Client]:
        if self.client is not None:
            yield self.client
            return
        with httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=True) as client:
            yield client

    @contextlib.contextmanager
    def _get(self, client: httpx.Client, url: str, branch: str | None) -> Iterator[httpx.Response]:
        """Stream a GET of ``url``; every failure becomes one ``LayerError`` line."""
        try:
            with client.stream("GET", url) as response:
                status = response.status_code
                if status == httpx.codes.NOT_FOUND and branch is not None:
                    raise LayerError(
                        f"no Alpine {branch} for {self.arch} on {self.mirror} ({url} answered 404)"
                    )
                if status >= 500:
                    raise LayerError(
                        f"{url} answered {status} {response.reason_phrase}; "
                        "the mirror is failing, try again later or use another mirror"
                    )
                if status != httpx.codes.OK:
                    raise LayerError(f"{url} answered {status} {response.reason_phrase}")
                yield response
        except httpx.ConnectTimeout as exc:
            raise LayerError(
                f"the Alpine mirror is unreachable: connecting to {url} timed out after "
                f"{self.timeout:g}s, and nothing is cached for it"
            ) from exc
        except httpx.TimeoutException as exc:
            raise LayerError(f"{url} stopped answering for {self.timeout:g}s; timed out") from exc
        except httpx.ConnectError as exc:
            raise LayerError(
                f"the Alpine mirror is unreachable ({url}: {_one_line(exc)}), "
                f"and nothing is cached for it; check the network or set {MIRROR_ENV}"
            ) from exc
        except httpx.HTTPError as exc:
            raise LayerError(f"downloading {url} failed: {_one_line(exc)}") from exc

    def _record(self, branch: str, version: str, digest: str) -> None:
        """Write the index entry of ``branch`` atomically (temp file + rename)."""
        target = self._index_file(branch)
        record = {"branch": branch, "version": version, "arch": self.arch, "sha256": digest}
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(record, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise LayerError(f"cannot record Alpine {branch} in {target}: {exc}") from exc

    def _index_file(self, branch: str) -> Path:
        return self._index / branch / f"{self.arch}.json"

    def _lock_for(self, branch: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(branch, threading.Lock())


def _entry_key(digest: str) -> str:
    """The cache key of a minirootfs: distinct from an archive layer of the same file."""
    key = hashlib.sha256(f"squish alpine base v{UNPACKER_VERSION}\n".encode())
    key.update(bytes.fromhex(digest))
    return key.hexdigest()


def _stream(response: httpx.Response, url: str) -> Iterator[bytes]:
    """The body of ``response`` in chunks; a cut-off body is a ``LayerError``."""
    try:
        yield from response.iter_bytes(_CHUNK)
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise LayerError(
            f"the download of {url} was cut short ({_one_line(exc)}); try again"
        ) from exc


def _check_length(response: httpx.Response, size: int, url: str) -> None:
    declared = response.headers.get("content-length")
    # Only an identity body has a Content-Length equal to what we counted.
    if declared is None or response.headers.get("content-encoding", "identity") != "identity":
        return
    if declared.isdigit() and int(declared) != size:
        raise LayerError(
            f"the download of {url} was cut short: got {size} of {declared} bytes; try again"
        )


def _write(file: IO[bytes], chunk: bytes, where: Path) -> None:
    try:
        file.write(chunk)
    except OSError as exc:
        raise LayerError(f"cannot write the layer cache in {where}: {exc}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
