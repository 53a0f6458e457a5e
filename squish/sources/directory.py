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

Changes are watched with inotify, and reported by name (``changed(names)``)
as soon as a file is known to be complete, with no debounce: a file renamed
into place (``IN_MOVED_TO``) or closed after writing (``IN_CLOSE_WRITE``).
Everything else waits for a quiet period of its name (``QUIET_SECONDS``, no
event for it meanwhile):

- a removal (``IN_DELETE``, ``IN_MOVED_FROM``), because editors save by
  moving the old file away and writing a new one (vim's ``web.toml`` ->
  ``web.toml~``): if the name comes back complete within the period, it is
  reported as the change it is, never as a removal that would stop the
  container for a moment. Meanwhile every snapshot, a full rescan too,
  keeps the last version of a name whose removal is settling;
- a file created or written (``IN_CREATE``, ``IN_MODIFY``) but not closed
  yet: it is reported at its close, or after the quiet period if its writer
  keeps it open;
- a change of mode or times (``IN_ATTRIB``: chmod, touch).

Between resyncs the reconciler asks for ``snapshot(rescan=False)``: only
the names reported since the last snapshot (and racy entries) are read
again, and with nothing to read it is the same mapping, with no syscall at
all. The watcher cannot tell what it missed: a full rescan is made instead
after the kernel's queue overflowed (``IN_Q_OVERFLOW``: ``changed(None)``),
while the directory is not watched (it was removed or moved away: it is made
and watched again, every ``WATCH_RETRY_SECONDS``) and at every
``rescan=True`` (the periodic resync), which also sees what no event of the
directory tells: the target of a symlink, a path layer's file
(``layer_key``), a write through a hard link elsewhere.

While the watcher is up, ``rescan=True`` lists the directory and looks again
at symlinks, racy and reported entries and every layer file, but trusts a
regular file's last read: inotify tells every change of it, but for a write
through a hard link elsewhere (or through a shared mapping). Every
``relist`` seconds (``RELIST_SECONDS``) it looks at every file again, as the
kubelet re-reads its static-pod directory (every 20 s) however well its
watch works: a resync of 1000 squishfiles costs a listing, not 1000 stats.

Without inotify (no instance left: ``fs.inotify.max_user_instances``
reached by the user's other programs; no watch left) the source says so in
``warning``, ``run`` returns, and every snapshot is a full rescan: the
daemon's periodic resync is how changes are seen.

A directory that cannot be read (its mode, a lost mount) is a
``SourceError`` from ``snapshot()``: the caller keeps the last good state
(see ``guard.GuardedSource``) rather than stopping everything.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import math
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from inotify_simple import INotify, flags

from squish.errors import ManifestError, SourceError
from squish.layers.model import ARCHIVE_SUFFIXES
from squish.layers.unpack import is_tarball
from squish.model.host import load_squishfile
from squish.model.manifest import Manifest
from squish.model.squishfile import Layer, Squishfile
from squish.sources import Changed

log = logging.getLogger(__name__)

# How long a name's last event must stay its last before the name is
# reported, when that event does not say the file is complete (a removal, a
# write not closed yet, a chmod): an editor's save-dance is over well within it.
QUIET_SECONDS = 0.020

# How often a watched directory that was removed or moved away is looked for
# (and made) again, to be watched.
WATCH_RETRY_SECONDS = 1.0

# What the directory's watch is told of: every change of a name in it, and
# the end of the directory itself (ONLYDIR: a file at the path is no directory).
WATCHED = (
    flags.CREATE
    | flags.MODIFY
    | flags.ATTRIB
    | flags.CLOSE_WRITE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    | flags.ONLYDIR
)
# A name's file is complete: renamed into place, or closed after writing.
COMPLETE = flags.MOVED_TO | flags.CLOSE_WRITE
# The watch is gone: the directory was removed, moved away or unmounted.
LOST = flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT | flags.IGNORED

# How long after its mtime a file's (inode, size, mtime) may still be shared
# by a later write: file times advance in clock ticks (milliseconds), on
# some file systems in whole seconds.
RACY_SECONDS = 2.0

# How often, while watching, a rescan looks at every file again, not only at
# what events may miss (see the module's docstring).
RELIST_SECONDS = 30.0


def file_layers(squishfile: Squishfile) -> tuple[Layer, ...]:
    """The layers ``layer_key`` looks at: those with a host path, not ``rw``."""
    return tuple(
        layer
        for layer in (squishfile.base, *squishfile.layers)
        if layer is not None and layer.path is not None and not layer.rw
    )


def layer_key(squishfile: Squishfile, seen: dict[Path, os.stat_result | None] | None = None) -> str:
    """The identity of the path layers whose change calls for a new container.

    ``seen``: the status of layer files already looked at in this scan, by
    path (many squishfiles bind one file: the busybox binary of the built-in
    base), filled in as they are.

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
    for layer in file_layers(squishfile):
        assert layer.path is not None
        if seen is not None and layer.path in seen:
            info = seen[layer.path]
        else:
            try:
                info = layer.path.stat()
            except OSError:
                info = None  # a missing layer fails at start, with its own message
            if seen is not None:
                seen[layer.path] = info
        if info is None or not stat.S_ISREG(info.st_mode):
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
    layers: tuple[Layer, ...] = ()
    """Its ``file_layers``, whose ``layer_key`` each scan looks at again."""


@dataclass
class _Looked:
    """What one scan has looked at already, for the squishfiles that share layer files.

    Many bind the same file (the built-in base's busybox): its status is
    read once per scan, and the key of each set of layers made once.
    """

    status: dict[Path, os.stat_result | None] = field(default_factory=dict)
    keys: dict[tuple[Layer, ...], str] = field(default_factory=dict)

    def layer_key(self, squishfile: Squishfile, layers: tuple[Layer, ...]) -> str:
        key = self.keys.get(layers)
        if key is None:
            key = self.keys[layers] = layer_key(squishfile, self.status)
        return key


class _Settling:
    """The names whose last event waits for a quiet period before it is reported.

    Pure, for the watcher: ``event`` is told each event of a manifest's name
    and when it came, and says whether the name is to be reported at once
    (its file is complete); ``due`` hands over the names whose last event is
    ``quiet`` seconds old.
    """

    def __init__(self, quiet: float) -> None:
        self.quiet = quiet
        self._until: dict[str, float] = {}

    def event(self, name: str, mask: int, now: float) -> bool:
        if mask & COMPLETE:
            # Whatever came before (a removal, a write), the name is here, whole.
            self._until.pop(name, None)
            return True
        self._until[name] = now + self.quiet
        return False

    def due(self, now: float) -> set[str]:
        ready = {name for name, until in self._until.items() if until <= now}
        for name in ready:
            del self._until[name]
        return ready

    def deadline(self) -> float:
        """When the next name is due (``math.inf``: none is settling)."""
        return min(self._until.values(), default=math.inf)

    def clear(self) -> None:
        self._until.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._until


class DirectorySource:
    """The manifests in ``path``.

    ``quiet`` (seconds): how long a name's event that does not say its file
    is complete waits for the next one (``QUIET_SECONDS``).
    """

    def __init__(
        self, path: Path, *, quiet: float = QUIET_SECONDS, relist: float = RELIST_SECONDS
    ) -> None:
        self.path = path
        self.relist = relist
        self.warning: str | None = None
        """Why changes are seen only at the periodic resync, or None: no inotify, or
        the directory was lost and is not watched again yet."""
        self._cache: dict[str, _Parsed] = {}
        """The last read of each manifest, by file name."""
        self._racy: set[str] = set()
        """The file names whose cached read is racy."""
        self._last: Mapping[str, Manifest] | None = None
        """The last snapshot returned."""
        self._watching = False
        """Whether every change of a name is reported (the watcher is up)."""
        self._stale = True
        """Whether a change may have gone unreported since the last full scan."""
        self._reported: set[str] = set()
        """The file names reported since the last snapshot."""
        self._settling = _Settling(quiet)
        self._listed_at = -math.inf
        """When (monotonic) a scan last looked at every file."""

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        """A full scan, unless ``rescan=False`` and the watcher has missed nothing since one."""
        if rescan or self._last is None or self._stale or not self._watching:
            now = time.monotonic()
            every = (
                self._last is None
                or self._stale
                or not self._watching
                or now - self._listed_at >= self.relist
            )
            found = self._scan(every=every)
            self._stale = False
            if every:
                self._listed_at = now
        else:
            found = self._update(self._last)
        self._reported.clear()
        self._last = found
        return found

    def _scan(self, *, every: bool = True) -> Mapping[str, Manifest]:
        """Every manifest of the directory, read again where its file changed.

        ``every``: look at every file; else trust the last read of a regular
        file (not a symlink) that was not reported and is not racy.
        """
        found: dict[str, Manifest] = {}
        seen: set[str] = set()
        looked = _Looked()
        last: Mapping[str, Manifest] = self._last or {}
        same = self._last is not None  # so far, every manifest is the last snapshot's
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            raise self._unreadable(exc) from exc
        for entry in entries:
            try:
                if not is_manifest(entry.name):
                    continue
                cached = self._cache.get(entry.name)
                if (
                    not every
                    and cached is not None
                    and not cached.racy
                    and entry.name not in self._reported
                    and entry.is_file(follow_symlinks=False)
                ):
                    info = None  # its events tell every change: its last read stands
                elif not entry.is_file():
                    continue
                else:
                    info = entry.stat()
            except FileNotFoundError:
                continue  # removed since the scan: as if never seen
            except OSError as exc:  # a directory readable but not searchable
                raise self._unreadable(exc) from exc
            manifest = self._manifest(entry.name, info, looked)
            if manifest is None:
                continue  # removed since its stat: as if never seen
            seen.add(entry.name)
            found[manifest.name] = manifest
            same = same and last.get(manifest.name) is manifest
        if len(seen) != len(self._cache):
            for gone in set(self._cache) - seen:
                if gone in self._settling:
                    # Its events are settling: an editor may be saving it (moved
                    # away, the new file not written yet). The last version stays.
                    found[self._cache[gone].manifest.name] = self._cache[gone].manifest
                else:
                    self._forget(gone)
        if self._last is not None and same and len(found) == len(last):
            return self._last  # the same mapping: nothing changed
        return found

    def _update(self, last: Mapping[str, Manifest]) -> Mapping[str, Manifest]:
        """``last``, with the names reported since (and the racy ones) read again."""
        names = self._reported | self._racy
        if not names:
            return last
        found = dict(last)
        for name in names:
            stem = name.removesuffix(".toml")
            info = self._stat(name)
            manifest = None if info is None else self._manifest(name, info)
            if manifest is not None:
                found[stem] = manifest
            elif name not in self._settling:  # else kept, as by ``_scan``
                found.pop(stem, None)
                self._forget(name)
        stems = [name.removesuffix(".toml") for name in names]
        if all(found.get(stem) is last.get(stem) for stem in stems):
            return last
        return found

    def _stat(self, name: str) -> os.stat_result | None:
        """The status of the file ``name``; None if there is no regular file of that name."""
        try:
            info = os.stat(self.path / name)
        except FileNotFoundError:
            return None
        except OSError as exc:  # as in ``_scan``
            raise self._unreadable(exc) from exc
        return info if stat.S_ISREG(info.st_mode) else None

    def _manifest(
        self,
        name: str,
        info: os.stat_result | None,
        looked: _Looked | None = None,
    ) -> Manifest | None:
        """The manifest of the file ``name`` whose status is ``info``, from the cache if it can.

        ``info`` None: the file's cached read stands (its layer files are
        looked at again). None if the file is gone since ``info`` was read
        (removed, or renamed away). ``looked``: what this scan has looked at
        so far (the layer files).
        """
        known = cached = self._cache.get(name)
        if info is not None:
            key = (info.st_ino, info.st_size, info.st_mtime_ns)
            if cached is None or cached.key != key or cached.racy:
                read = self._read(self.path / name, key, cached)
                if read is None:
                    return None
                cached = read
        assert cached is not None
        manifest = cached.manifest
        if manifest.squishfile is not None and cached.layers:
            files = (looked or _Looked()).layer_key(manifest.squishfile, cached.layers)
            if files != manifest.layer_key:
                manifest = replace(manifest, layer_key=files)
                cached = replace(cached, manifest=manifest)
        if cached is not known:
            self._cache[name] = cached
            if cached.racy:
                self._racy.add(name)
            else:
                self._racy.discard(name)
        return manifest

    def _forget(self, name: str) -> None:
        self._cache.pop(name, None)
        self._racy.discard(name)

    def _unreadable(self, exc: OSError) -> SourceError:
        return SourceError(
            f"{self.path}: cannot read the directory: {exc.strerror or exc}; its last good "
            "manifests stay in force until it can be read again"
        )

    def _read(
        self, path: Path, key: tuple[int, int, int], cached: _Parsed | None
    ) -> _Parsed | None:
        """``path`` parsed, unless its content is ``cached``'s; None if it is gone."""
        read_at = time.time_ns()
        try:
            digest = hashlib.sha256(path.read_bytes()).digest()
        except FileNotFoundError:
            return None
        except OSError:
            digest = b""  # the parse says why
        # Compared before parsing, and the parse reads the file again: a
        # write in between is seen by the next snapshot (still racy), never
        # hidden by a digest of the newer content.
        racy = read_at - key[2] < RACY_SECONDS * 1e9 or not digest
        if cached is not None and digest and cached.digest == digest:
            return replace(cached, key=key, racy=racy)
        manifest = self._load(path)
        layers = () if manifest.squishfile is None else file_layers(manifest.squishfile)
        return _Parsed(key, digest, racy, manifest, layers)

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
        """Call ``changed(names)`` when manifests may have changed; return if it cannot watch.

        Returning is not fatal: the periodic resync reads the directory
        anyway, only later. ``warning`` says why, and the log once.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            try:
                inotify = stack.enter_context(INotify(nonblocking=True))
                watch = inotify.add_watch(self.path, WATCHED)
            except OSError as exc:
                self._cannot_watch(exc)
                task_status.started()
                return
            # What changed before the watch began is seen by the next (full) scan.
            self._watching = self._stale = True
            task_status.started()
            try:
                await self._watch(inotify, watch, changed)
            finally:
                self._watching = False
                self._settling.clear()

    async def _watch(self, inotify: INotify, watch: int, changed: Changed) -> None:
        """Report changes until cancelled; the directory is watched again whenever lost."""
        while True:
            await self._follow(inotify, watch, changed)
            self._watching = False
            self._settling.clear()
            self.warning = (
                f"{self.path} was removed or moved away; changes are seen at the periodic "
                "resync until it is watched again"
            )
            log.warning("%s", self.warning)
            changed(None)
            watch = await self._watch_again(inotify)
            self._watching = self._stale = True
            self.warning = None
            log.info("%s: watched again", self.path)
            changed(None)

    async def _follow(self, inotify: INotify, watch: int, changed: Changed) -> None:
        """Report the changes of the directory's names until its watch is lost.

        Waits in the event loop until the kernel has events or the next
        settling name is due: an idle directory costs no wakeup at all.
        """
        while True:
            with anyio.move_on_at(self._settling.deadline()):
                await anyio.wait_readable(inotify.fd)
            now = anyio.current_time()
            ready: set[str] = set()
            any_name = lost = False
            for event in inotify.read(timeout=0):
                if event.mask & flags.Q_OVERFLOW:
                    # The kernel dropped events: of which names, nobody knows.
                    self._stale = any_name = True
                elif event.wd != watch:
                    continue  # of a watch lost before
                elif event.mask & LOST:
                    lost = True
                    break  # what follows is of the directory elsewhere, if anything
                elif not event.name:
                    # The directory's own mode or times: can it still be read?
                    self._stale = any_name = True
                elif is_manifest(event.name) and self._settling.event(event.name, event.mask, now):
                    ready.add(event.name)
            ready |= self._settling.due(now)
            self._reported |= ready
            if any_name:
                changed(None)
            elif ready:
                changed(frozenset(name.removesuffix(".toml") for name in ready))
            if lost:
                with contextlib.suppress(OSError):  # removed already, unless moved
                    inotify.rm_watch(watch)
                return

    async def _watch_again(self, inotify: INotify) -> int:
        """A new watch of the directory at ``path``, made anew if need be (as ``run`` does).

        Tried after a pause, and again after each: a deploy replacing the
        directory (the old one removed, a new one renamed into place) has
        time to finish before an empty one is made in its way.
        """
        while True:
            await anyio.sleep(WATCH_RETRY_SECONDS)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                return int(inotify.add_watch(self.path, WATCHED))
            except OSError as exc:
                log.debug("%s: cannot watch it yet: %s", self.path, exc)

    def _cannot_watch(self, exc: OSError) -> None:
        if exc.errno in (errno.EMFILE, errno.ENOSPC):
            what = "instances" if exc.errno == errno.EMFILE else "watches"
            fix = (
                f"raise fs.inotify.max_user_{what}, or stop programs holding inotify "
                f"{what}, and restart the daemon"
            )
        else:
            fix = "restart the daemon once it can be watched"
        self.warning = (
            f"cannot watch {self.path} for changes ({exc}); changes are seen at the "
            f"periodic resync only ({fix})"
        )
        log.warning("%s", self.warning)
