"""The content-addressed layer cache: ``<state_dir>/layers/sha256/<hex>/``.

Used by resolvers that produce directories (the built-in base now; unpacked
archives and downloads later) through ``LayerCache.materialise``. An entry is
keyed by a sha256 the resolver chooses (of the content, or of everything the
content is built from), is complete the moment it exists, and is never
modified afterwards, so containers can share it read-only.

Concurrency without locks: each builder works in its own temporary directory
next to the entry and ``rename(2)``\\ s it into place. The rename is atomic on
one filesystem, and renaming a directory onto an existing non-empty one fails,
so with several builders racing exactly one entry appears, complete, and the
losers discard their copy and use the winner's. A builder that dies mid-way
leaves its temporary directory behind; its name carries the builder's pid, and
the next ``materialise`` removes it once that process is gone.

An entry can still be damaged after it is complete: a file deleted by hand,
a disk that lost a block, a clean-up script gone wrong. Used as it is, a base
without ``bin/busybox`` crash-loops every container on it. So each entry has
a manifest, ``root/manifests/<hex>.json``: every path in it with its type and
mode, and the size of each file and symlink. It is written before the rename
that publishes the entry, so every entry made by this squish has one; an
entry without one was made by an older squish, and it is adopted (its
manifest written from what it holds) rather than fetched again, which could
need a network an air-gapped host does not have. ``get`` and
``materialise`` check an entry against its manifest (an ``lstat`` a path:
0.5 ms for the built-in base's 300) the first time a process uses it,
and again when it is used after ``verify_interval`` seconds, not at every
container start, whose few milliseconds are benchmarked. A damaged entry is
logged, moved aside (swept like an abandoned build once this process is
gone: running containers may still have it mounted) and built again. Content
is not hashed: a changed byte of the same size goes unnoticed, as it would
in any package manager's quick check. The built-in base adds its own
cheaper check of ``bin/busybox`` at every use (``squish.layers.busybox``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import IO

from squish.errors import LayerError

log = logging.getLogger("squish.layers")

_DIGEST = re.compile(r"[0-9a-f]{64}")
# ".<digest>.<pid>.<random>.tmp": the leading dot keeps work in progress out of
# anything that lists entries; the pid says whether its builder is still alive.
_TEMP = re.compile(r"\.([0-9a-f]{64})\.(\d+)\.[^/]*\.tmp")

ENTRY_MODE = 0o755
"""Mode of every entry: readable by a container's unprivileged user, writable
by nobody but the owner."""

VERIFY_INTERVAL = 60.0
"""Seconds after which a use of an entry checks it against its manifest again."""

_MANIFEST_VERSION = 1


class LayerCache:
    """Directories keyed by sha256 under ``root/sha256/``, each checked against its manifest.

    ``verify_interval``: see the module docstring (0: check at every use).
    """

    def __init__(self, root: Path, *, verify_interval: float = VERIFY_INTERVAL) -> None:
        self.root = root
        self.verify_interval = verify_interval
        self._entries = root / "sha256"
        self._manifests = root / "manifests"
        # digest -> time.monotonic() of its last good check in this process.
        self._verified: dict[str, float] = {}
        self._check_lock = KeyedLocks()

    def path_for(self, digest: str) -> Path:
        """Where the entry for ``digest`` (64 lowercase hex digits) lives."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self._entries / digest

    def get(self, digest: str) -> Path | None:
        """The entry for ``digest`` if it has been materialised and is whole.

        A damaged entry is moved aside (and a warning logged): None then.
        """
        path = self.path_for(digest)
        if not path.is_dir():
            return None
        return path if self._whole(digest, path) else None

    def discard(self, digest: str, problem: str) -> None:
        """Move the damaged entry for ``digest`` aside, logging ``problem``; it is built again.

        For resolvers with checks of their own (the built-in base's busybox).
        """
        with self._check_lock(digest):
            self._quarantine(digest, problem)

    def materialise(self, digest: str, build: Callable[[Path], None]) -> Path:
        """Return the entry for ``digest``, calling ``build`` to create it if missing.

        ``build`` fills the empty directory it is given and may raise; then
        nothing is left behind and the exception propagates (``OSError``
        translated to ``LayerError``). If another process or thread finishes
        the same entry first, its entry is returned and this one discarded.
        """
        final = self.path_for(digest)
        if final.is_dir() and self._whole(digest, final):
            return final
        try:
            self._entries.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned()
            work = Path(
                tempfile.mkdtemp(
                    prefix=f".{digest}.{os.getpid()}.", suffix=".tmp", dir=self._entries
                )
            )
        except OSError as exc:
            raise LayerError(f"cannot write the layer cache in {self._entries}: {exc}") from exc
        try:
            build(work)
            # mkdtemp made it 0700; fix that before the rename so the entry
            # never exists with the wrong mode.
            work.chmod(ENTRY_MODE)
            # The manifest first: an entry never exists without one.
            self._write_manifest(digest, work)
            _rename_into_place(work, final)
        except OSError as exc:
            _remove_tree(work)
            raise LayerError(f"cannot build {final}: {exc}") from exc
        except BaseException:
            _remove_tree(work)
            raise
        self._verified[digest] = time.monotonic()
        return final

    def contains(self, path: Path) -> bool:
        """Whether ``path`` lies inside a complete entry."""
        try:
            relative = path.relative_to(self._entries)
        except ValueError:
            return False
        return bool(relative.parts) and _DIGEST.fullmatch(relative.parts[0]) is not None

    def entry_of(self, path: Path) -> Path:
        """The entry directory ``path`` lies in (see ``contains``)."""
        return self._entries / path.relative_to(self._entries).parts[0]

    def digests(self) -> list[str]:
        """Every complete entry's digest (work in progress excluded)."""
        try:
            names = os.listdir(self._entries)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if _DIGEST.fullmatch(name))

    def remove(self, digest: str) -> bool:
        """Delete the entry for ``digest``; False if there was none.

        The entry is first renamed to a work-in-progress name, so that it
        vanishes at once and whole; a removal killed half-way is swept up
        like an abandoned build.
        """
        final = self.path_for(digest)
        doomed = self._entries / f".{digest}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            os.rename(final, doomed)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise LayerError(f"cannot remove {final}: {exc.strerror or exc}") from exc
        self._verified.pop(digest, None)
        with contextlib.suppress(OSError):
            (self._manifests / f"{digest}.json").unlink()
        _remove_tree(doomed)
        return True

    def _whole(self, digest: str, path: Path) -> bool:
        """Whether the entry ``path`` matches its manifest (checked once per interval)."""
        if self._fresh(digest):
            return True
        with self._check_lock(digest):
            # Another thread may have checked it, or moved it aside, meanwhile.
            if self._fresh(digest):
                return True
            if not path.is_dir():
                return False
            problem = self._problem(digest, path)
            if problem is None:
                self._verified[digest] = time.monotonic()
                return True
            self._quarantine(digest, problem)
            return False

    def _fresh(self, digest: str) -> bool:
        checked = self._verified.get(digest)
        return checked is not None and time.monotonic() - checked < self.verify_interval

    def _problem(self, digest: str, path: Path) -> str | None:
        """What is wrong with the entry ``path``, or None."""
        manifest = self._manifests / f"{digest}.json"
        try:
            record = json.loads(manifest.read_bytes())
            entries = record["entries"] if record.get("version") == _MANIFEST_VERSION else None
        except FileNotFoundError:
            entries = None
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return f"its manifest {manifest} is unreadable"
        if entries is None:
            # Made before entries had manifests: adopted as it is. Should
            # that fail (a read-only state directory), it is used unchecked.
            with contextlib.suppress(OSError, LayerError):
                self._write_manifest(digest, path)
            return None
        root = str(path)
        try:
            for relative, mode, size in entries:
                try:
                    info = os.lstat(f"{root}/{relative}")
                except FileNotFoundError:
                    return f"{relative} is missing"
                if info.st_mode != mode:
                    return f"{relative} has mode {info.st_mode:o} instead of {mode:o}"
                if size is not None and info.st_size != size:
                    return f"{relative} has {info.st_size} bytes instead of {size}"
        except (OSError, ValueError, TypeError) as exc:
            return f"it cannot be checked: {exc}"
        return None

    def _quarantine(self, digest: str, problem: str) -> None:
        final = self.path_for(digest)
        aside = self._entries / f".{digest}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return  # moved aside already (another thread, or process)
        except OSError as exc:
            raise LayerError(
                f"{final} is damaged ({problem}) and cannot be moved aside: {exc}"
            ) from exc
        self._verified.pop(digest, None)
        with contextlib.suppress(OSError):
            (self._manifests / f"{digest}.json").unlink()
        log.warning(
            "layer cache entry %s is damaged (%s): moved aside to %s, it is built again",
            final,
            problem,
            aside.name,
        )

    def _write_manifest(self, digest: str, tree: Path) -> None:
        """Record what ``tree`` (the entry for ``digest``, or its build) holds."""
        write_record(
            self._manifests / f"{digest}.json",
            {"version": _MANIFEST_VERSION, "entries": _listing(tree)},
            "a layer's manifest",
        )

    @contextlib.contextmanager
    def download_file(self, *, prefix: str) -> Iterator[IO[bytes]]:
        """A temporary file next to the entries for a download; gone when closed.

        Next to the cache so that an unpack never crosses filesystems; deleted
        on close whether it was verified and unpacked or not, and by the
        kernel if the process dies.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            download = tempfile.TemporaryFile(dir=self.root, prefix=prefix)  # noqa: SIM115
        except OSError as exc:
            raise LayerError(f"cannot write the layer cache in {self.root}: {exc}") from exc
        with download:
            yield download

    def _remove_abandoned(self) -> None:
        """Delete temporary directories whose builder process no longer exists."""
        for child in self._entries.iterdir():
            match = _TEMP.fullmatch(child.name)
            if match and not _process_exists(int(match.group(2))):
                _remove_tree(child)


def _listing(tree: Path) -> list[tuple[str, int, int | None]]:
    """Every path under ``tree``: (relative path, st_mode, size of a file or symlink)."""
    found: list[tuple[str, int, int | None]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(tree / relative if relative else tree) as children:
            for child in children:
                path = f"{relative}/{child.name}" if relative else child.name
                info = child.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(path)
                    found.append((path, info.st_mode, None))
                else:
                    found.append((path, info.st_mode, info.st_size))
    found.sort()
    return found


def _rename_into_place(work: Path, final: Path) -> None:
    try:
        os.rename(work, final)
    except OSError as exc:
        # ENOTEMPTY/EEXIST: someone else's complete entry is already there.
        # Anything else (or something that is not a directory) is a real error.
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
            raise
        _remove_tree(work)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Alive, but someone else's.
        return True
    return True


def _remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) tree, even if a builder left it read-only."""
    # rmtree needs write and search permission on every directory. os.walk
    # descends into a child only after yielding its parent, so making each
    # child accessible here is in time; symlinks are skipped because chmod
    # would follow them out of the tree. Failures are left to rmtree, which
    # ignores them: the caller is already reporting a better error, or tidying.
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
        return
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IRWXU)
    for dirpath, dirnames, _filenames in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


# As the squishfile's rule for the names of volumes and secrets
# (squish.model.squishfile), which the layers may not import: a name is one
# entry of a directory, never a path.
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def checked_name(kind: str, name: str, *, longest: int | None = None) -> str:
    """``name``, if it may name a ``kind`` (a volume, a secret) kept as one entry of a
    directory, at most ``longest`` characters; ``LayerError`` otherwise."""
    if not _ENTRY_NAME.fullmatch(name) or (longest is not None and len(name) > longest):
        raise LayerError(
            f"{kind} {name!r}: {kind} names may contain only letters, digits, '_', '.' "
            "and '-' and must start with a letter or digit"
        )
    return name


def entry_names(root: Path) -> list[str]:
    """The names in the directory ``root``, sorted, but the hidden (temporary) ones;
    none if it does not exist (yet)."""
    try:
        return sorted(entry.name for entry in root.iterdir() if not entry.name.startswith("."))
    except FileNotFoundError:
        return []


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
    return total


def write_record(target: Path, record: Mapping[str, object], what: str) -> None:
    """Write a small JSON index file atomically (temp file, fsync, rename)."""
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
        raise LayerError(f"cannot record {what} in {target}: {exc.strerror or exc}") from exc


class KeyedLocks:
    """One lock per key (a digest, a branch): waiters for the same thing share one build.

    Locks are never dropped; there is one per layer ever asked for.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
