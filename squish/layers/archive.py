"""The resolver for archive layers: unpacked once into the cache, mounted as a directory.

``squish.layers.store.LayerStore`` uses ``ArchiveResolver`` for
``LayerKind.ARCHIVE`` and hands it to both ``PathResolver``\\ s, which delegate
to it when a file's content is a tarball. How a layer ends up here:

- By name: ``classify`` (pure) calls a path ending in an archive suffix
  (``.tar.gz``, ``.zip``, ...) an archive; that is the user saying "unpack
  this". The content then decides the format, so a ``.zip`` that is really a
  ``.tar.gz`` unpacks fine; a file named like an archive whose content is
  none (an HTML error page saved as ``app.tar.gz``) is refused as "not an
  archive" rather than quietly mounted as a file.
- By content: a path layer with any other name whose bytes are a tar
  archive, plain or gzip/xz/bzip2(/zstd)-compressed, is unpacked too. Zips
  are not: jars, wheels and office documents are zips meant to be mounted as
  files, so a zip is unpacked only when its name says so.

The archive is sha256'd (streamed) and unpacked by ``squish.layers.unpack``
into ``LayerCache.materialise``, so a kill mid-unpack leaves only a temporary
directory the next build sweeps away, never a half-filled entry. An archive
whose own bytes are refused (``ArchiveRefused``: an unsafe member, a bomb, a
file cut short) is remembered by its identity and its sha256, so the
retries of a container that needs it fail at once with the same error,
rather than unpacking gigabytes again every back-off, until the file changes. The entry
directory itself is what is mounted. Its key is the sha256 of a builder tag
plus the archive's digest: a change to the unpacking rules bumps
``UNPACKER_VERSION`` and unpacks again, and no other resolver's entry can
collide with an archive's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from squish.errors import ArchiveRefused, LayerError
from squish.layers.cache import KeyedLocks, LayerCache
from squish.layers.download import FetchObserver
from squish.layers.model import LayerRef
from squish.layers.unpack import Limits, unpack_file

UNPACKER_VERSION = 1
"""Bump whenever what ``unpack`` writes for the same archive changes."""

_CHUNK = 1 << 20
_REFUSALS_KEPT = 256
"""Refused archives remembered (the oldest forgotten first): plenty for a node."""

_Identity = tuple[int, int, int, int]

Unpacker = Callable[[IO[bytes], Path, str, Limits], None]
"""How an archive becomes a tree: ``(open archive, empty dir, label, limits)``."""


def _unpack(file: IO[bytes], into: Path, name: str, limits: Limits) -> None:
    unpack_file(file, into, name=name, limits=limits)


class ArchiveResolver:
    """Unpacks archive layers into the cache (once per content) and returns the entry.

    Safe to call from several threads and processes at once: the cache makes
    the unpack atomic, and a lock per digest keeps this process from
    unpacking the same archive twice. ``unpacker`` replaces the real unpack
    (tests count calls through it).
    """

    def __init__(
        self,
        cache: LayerCache,
        *,
        limits: Limits = Limits(),  # noqa: B008
        unpacker: Unpacker = _unpack,
        observer: FetchObserver | None = None,
    ) -> None:
        self.cache = cache
        self.observer = observer
        self.limits = limits
        self.unpacker = unpacker
        self._lock_for = KeyedLocks()
        # Identity of an archive last hashed -> its entry: skips re-reading
        # and hashing a big archive on every container start.
        self._known: dict[_Identity, tuple[str, Path]] = {}
        # Identity or content sha256 of an archive refused -> (its path, the refusal).
        self._refused: dict[_Identity | str, tuple[str, ArchiveRefused]] = {}

    def resolve(self, layer: LayerRef) -> Path:
        if layer.path is None:
            raise LayerError("has no path")
        if layer.rw:
            # The entry is shared by every container using this archive.
            raise LayerError(
                f"{layer.path} is an archive, unpacked into the shared layer cache, and "
                "cannot be mounted rw; unpack it yourself and give the directory instead"
            )
        if not layer.path.is_absolute():
            raise LayerError(f"{layer.path} is not an absolute host path")
        return self.materialise(layer.path, sha256=layer.sha256)

    def cached(self, layer: LayerRef) -> Path | None:
        """The unpacked entry of ``layer``'s archive if cached (may hash; never unpacks)."""
        if layer.path is None:
            return None
        try:
            with layer.path.open("rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode):
                    return None
                identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                known = self._known.get(identity)
                if known is not None and self.cache.get(archive_key(known[0])) is not None:
                    return known[1]
                return self.cache.get(archive_key(content_sha256(file)))
        except OSError:
            return None

    def materialise(self, archive: Path, *, sha256: str | None = None) -> Path:
        """Return the unpacked directory of ``archive``, unpacking it if needed.

        With ``sha256`` (pinned by the squishfile) an archive with any other
        content is refused.
        """
        try:
            # Checked before opening too: opening a fifo would block.
            check_regular(archive, archive.stat())
            with archive.open("rb") as file:
                info = check_regular(archive, os.fstat(file.fileno()))
                identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                known = self._known.get(identity)
                # The cache checks the entry now and then: a damaged one is
                # moved aside, and unpacked again below.
                if known is not None and self.cache.get(archive_key(known[0])) is not None:
                    _check_pinned(archive, known[0], sha256)
                    return known[1]
                self._check_refused(archive, identity)
                content = content_sha256(file)
                _check_pinned(archive, content, sha256)
                self._check_refused(archive, content, also=identity)
                digest = archive_key(content)
                with self._lock_for(digest):
                    try:
                        entry = self.cache.get(digest) or self._unpack(file, archive, digest)
                    except ArchiveRefused as exc:
                        self._remember(archive, exc, identity, content)
                        raise
        except FileNotFoundError as exc:
            raise LayerError(f"{archive} does not exist") from exc
        except OSError as exc:
            raise LayerError(f"cannot read {archive}: {exc.strerror or exc}") from exc
        self._known[identity] = (content, entry)
        return entry

    def _check_refused(
        self, archive: Path, key: _Identity | str, *, also: _Identity | None = None
    ) -> None:
        """Raise the refusal remembered for ``key`` (recording it for ``also`` too)."""
        remembered = self._refused.get(key)
        if remembered is None:
            return
        if also is not None:
            self._refused[also] = remembered
        label, refused = remembered
        # The same bytes at another path: the error names the path asked for.
        raise ArchiveRefused(str(refused).replace(label, str(archive), 1))

    def _remember(
        self, archive: Path, refused: ArchiveRefused, identity: _Identity, content: str
    ) -> None:
        for key in (identity, content):
            self._refused.pop(key, None)
            self._refused[key] = (str(archive), refused)
        while len(self._refused) > _REFUSALS_KEPT:
            del self._refused[next(iter(self._refused))]

    def _unpack(self, file: IO[bytes], archive: Path, digest: str) -> Path:
        try:
            entry = self.cache.materialise(
                digest, lambda root: self.unpacker(file, root, str(archive), self.limits)
            )
        except LayerError:
            if self.observer is not None:
                self.observer("archive", "error", 0)
            raise
        if self.observer is not None:
            self.observer("archive", "success", 0)
        return entry


def check_regular(archive: Path, info: os.stat_result) -> os.stat_result:
    """``info`` (the stat of ``archive``), refused unless it is a regular file."""
    if not stat.S_ISREG(info.st_mode):
        raise LayerError(f"{archive} is not a regular file, so it cannot be an archive")
    return info


def archive_digest(file: IO[bytes]) -> str:
    """The cache key of what ``file`` unpacks to (read from the start, streamed)."""
    return archive_key(content_sha256(file))


def content_sha256(file: IO[bytes]) -> str:
    """The sha256 (hex) of ``file``, read from the start, streamed."""
    content = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(_CHUNK):
        content.update(chunk)
    return content.hexdigest()


def _check_pinned(archive: Path, content: str, pinned: str | None) -> None:
    if pinned is not None and content != pinned:
        raise LayerError(
            f"{archive} has sha256 {content}, but the squishfile pins {pinned}; refusing it"
        )


def archive_key(sha256: str) -> str:
    """The cache key of what an archive with this sha256 (hex) unpacks to.

    Shared by archive path layers and registry layers: the same tarball
    imported as ``python 3.11`` and named by path is unpacked once.
    """
    key = hashlib.sha256(f"squish archive layer v{UNPACKER_VERSION}\n".encode())
    key.update(bytes.fromhex(sha256))
    return key.hexdigest()
