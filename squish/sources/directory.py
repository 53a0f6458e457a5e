"""The directory source: every ``*.toml`` in one directory is a container.

Used by the daemon. The container's name is the file's stem. Editor debris
and temporary files are ignored: dotfiles (``.web.toml.swp``, an editor's
``.#web.toml``), backups (``web.toml~``) and anything not ending in
``.toml``; a writer that creates ``web.toml.tmp`` and renames it into place
is seen once, complete.

Parsing is cached by (inode, size, mtime), so a periodic resync of a
directory of hundreds of squishfiles reads only what changed. A file changed
shortly before it was read is "racy" (git's word): in a save storm the next
version may have the same size, a recycled inode and an mtime of the same
coarse clock tick, so its content is compared again at each snapshot until
it is older than ``RACY_SECONDS``.

Changes are watched with watchfiles (inotify) with a short debounce. Without
inotify (no instance left: ``fs.inotify.max_user_instances`` reached by the
user's other programs) the source says so in ``warning``, and the daemon's
periodic resync, which reads the directory anyway, is how changes are seen.

A directory that cannot be read (its mode, a lost mount) is a
``SourceError`` from ``snapshot()``: the caller keeps the last good state
(see ``guard.GuardedSource``) rather than stopping everything.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import watchfiles
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.errors import ManifestError, SourceError
from squish.layers.model import ARCHIVE_SUFFIXES
from squish.layers.unpack import is_tarball
from squish.model.host import load_squishfile
from squish.model.manifest import Manifest
from squish.model.squishfile import Squishfile
from squish.sources import Changed

log = logging.getLogger(__name__)

# Milliseconds watchfiles waits for more changes before reporting a batch:
# a rename-into-place or an editor's save-dance is one trigger, not several.
DEBOUNCE_MS = 20

# How long after its mtime a file's (inode, size, mtime) may still be shared
# by a later write: file times advance in clock ticks (milliseconds), on
# some file systems in whole seconds.
RACY_SECONDS = 2.0


def layer_key(squishfile: Squishfile) -> str:
    """The identity of the path layers whose change calls for a new container.

    Compared by the planner with the key the running container started with;
    any difference replaces it, at the next resync. What counts:

    - a directory is a live bind mount: nothing;
    - an ``rw`` layer is the container's to write: nothing, whatever it is,
      or a container appending to its scratch file would replace itself;
    - a read-only single file is bound by its inode, so a write in place (or
      a touch) is live in the container already: only a new file at the path
      (an editor's or a deploy's rename) needs a new container, so only the
      device and inode count;
    - an archive is unpacked when the container starts, and a pinned file
      (``sha256``) is checked then: any change of device, inode, size or
      mtime counts.
    """
    parts = []
    for layer in (squishfile.base, *squishfile.layers):
        if layer is None or layer.path is None or layer.rw:
            continue
        try:
            info = layer.path.stat()
        except OSError:
            continue  # a missing layer fails at start, with its own message
        if not stat.S_ISREG(info.st_mode):
            continue
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        counted = identity if layer.sha256 or _unpacked(layer.path, identity) else identity[:2]
        parts.append(":".join((layer.name, *map(str, counted))))
    return ";".join(parts)


@functools.lru_cache(maxsize=1024)
def _unpacked(path: Path, identity: tuple[int, int, int, int]) -> bool:
    """Whether the layer store unpacks the file ``path`` rather than binding it.

    The same test as the store's (an archive's name, else a tarball's
    content), cached by the file's identity so a resync reads no file that
    has not changed.
    """
    return path.name.lower().endswith(ARCHIVE_SUFFIXES) or is_tarball(path)


def is_manifest(name: str) -> bool:
    return name.endswith(".toml") and not name.startswith((".", "#")) and len(name) > len(".toml")


@dataclass(frozen=True)
class _Parsed:
    key: tuple[int, int, int]
    """(inode, size, mtime) when read."""
    digest: bytes
    racy: bool
    """Read so soon after its mtime that a later write may have the same ``key``."""
    manifest: Manifest


class DirectorySource:
    """``idle_wakeup`` (seconds): how often the watcher thread returns with
    nothing to report. Each return costs a little CPU; cancelling the watch
    (daemon shutdown) waits for the next one."""

    def __init__(self, path: Path, *, idle_wakeup: float = 2.0) -> None:
        self.path = path
        self.idle_wakeup = idle_wakeup
        self._cache: dict[str, _Parsed] = {}
        self.warning: str | None = None
        """Why changes are seen only at the periodic resync (no inotify), or None."""

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        found: dict[str, Manifest] = {}
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            raise self._unreadable(exc) from exc
        for entry in entries:
            try:
                if not is_manifest(entry.name) or not entry.is_file():
                    continue
                info = entry.stat()
            except FileNotFoundError:
                continue  # removed since the scan: as if never seen
            except OSError as exc:  # a directory readable but not searchable
                raise self._unreadable(exc) from exc
            seen.add(entry.name)
            key = (info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._cache.get(entry.name)
            if cached is None or cached.key != key or cached.racy:
                cached = self._read(Path(entry.path), key, cached)
                self._cache[entry.name] = cached
            manifest = cached.manifest
            if manifest.squishfile is not None:
                files = layer_key(manifest.squishfile)
                if files != manifest.layer_key:
                    manifest = replace(manifest, layer_key=files)
                    self._cache[entry.name] = replace(cached, manifest=manifest)
            found[manifest.name] = manifest
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return found

    def _unreadable(self, exc: OSError) -> SourceError:
        return SourceError(
            f"{self.path}: cannot read the directory: {exc.strerror or exc}; its last good "
            "manifests stay in force until it can be read again"
        )

    def _read(self, path: Path, key: tuple[int, int, int], cached: _Parsed | None) -> _Parsed:
        """``path`` parsed, unless its content is ``cached``'s."""
        read_at = time.time_ns()
        try:
            digest = hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            digest = b""  # the parse says why
        # Compared before parsing, and the parse reads the file again: a
        # write in between is seen by the next snapshot (still racy), never
        # hidden by a digest of the newer content.
        racy = read_at - key[2] < RACY_SECONDS * 1e9 or not digest
        if cached is not None and digest and cached.digest == digest:
            return replace(cached, key=key, racy=racy)
        return _Parsed(key, digest, racy, self._load(path))

    @staticmethod
    def _load(path: Path) -> Manifest:
        try:
            squishfile = load_squishfile(path)
        except ManifestError as exc:
            return Manifest(path.stem, str(path), None, exc)
        return Manifest(path.stem, str(path), squishfile)

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Call ``changed()`` when a manifest may have changed; return if it cannot watch.

        Returning is not fatal: the periodic resync reads the directory
        anyway, only later. ``warning`` says why, and the log once.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        task_status.started()
        try:
            async for batch in watchfiles.awatch(
                self.path,
                debounce=DEBOUNCE_MS,
                # How often the watcher looks again while a batch is gathering:
                # short for a quick drop-to-running, long enough to stay cheap
                # (measured idle daemon: 0.9 % of a core at 10 ms, 1.5 % at 5 ms).
                step=10,
                recursive=False,
                rust_timeout=round(self.idle_wakeup * 1000),
                watch_filter=lambda _change, path: is_manifest(os.path.basename(path)),
            ):
                if batch:
                    changed()
        # watchfiles reports a watcher it cannot create (no inotify instance
        # or watch left, an unreadable directory) as an OSError or as its
        # WatchfilesRustInternalError, a RuntimeError.
        except (OSError, RuntimeError) as exc:
            self.warning = (
                f"cannot watch {self.path} for changes ({exc}); changes are seen at the "
                "periodic resync only (raise fs.inotify.max_user_instances, or stop "
                "programs holding inotify instances, and restart the daemon)"
            )
            log.warning("%s", self.warning)
