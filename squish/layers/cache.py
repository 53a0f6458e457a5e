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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import IO

from squish.errors import LayerError

_DIGEST = re.compile(r"[0-9a-f]{64}")
# ".<digest>.<pid>.<random>.tmp": the leading dot keeps work in progress out of
# anything that lists entries; the pid says whether its builder is still alive.
_TEMP = re.compile(r"\.([0-9a-f]{64})\.(\d+)\.[^/]*\.tmp")

ENTRY_MODE = 0o755
"""Mode of every entry: readable by a container's unprivileged user, writable
by nobody but the owner."""


class LayerCache:
    """Directories keyed by sha256 under ``root/sha256/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._entries = root / "sha256"

    def path_for(self, digest: str) -> Path:
        """Where the entry for ``digest`` (64 lowercase hex digits) lives."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self._entries / digest

    def get(self, digest: str) -> Path | None:
        """The entry for ``digest`` if it has been materialised."""
        path = self.path_for(digest)
        return path if path.is_dir() else None

    def materialise(self, digest: str, build: Callable[[Path], None]) -> Path:
        """Return the entry for ``digest``, calling ``build`` to create it if missing.

        ``build`` fills the empty directory it is given and may raise; then
        nothing is left behind and the exception propagates (``OSError``
        translated to ``LayerError``). If another process or thread finishes
        the same entry first, its entry is returned and this one discarded.
        """
        final = self.path_for(digest)
        if final.is_dir():
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
            _rename_into_place(work, final)
        except OSError as exc:
            _remove_tree(work)
            raise LayerError(f"cannot build {final}: {exc}") from exc
        except BaseException:
            _remove_tree(work)
            raise
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
        _remove_tree(doomed)
        return True

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
