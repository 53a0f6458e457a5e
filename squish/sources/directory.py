"""The directory source: every ``*.toml`` in one directory is a container.

Used by the daemon. The container's name is the file's stem. Editor debris
and temporary files are ignored: dotfiles (``.web.toml.swp``, an editor's
``.#web.toml``), backups (``web.toml~``) and anything not ending in
``.toml``; a writer that creates ``web.toml.tmp`` and renames it into place
is seen once, complete.

Parsing is cached by (inode, size, mtime), so a periodic resync of a
directory of hundreds of squishfiles reads only what changed. Changes are
watched with watchfiles (inotify) with a short debounce.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import watchfiles

from squish.errors import ManifestError
from squish.manifest import load_squishfile
from squish.sources import Manifest

# Milliseconds watchfiles waits for more changes before reporting a batch:
# a rename-into-place or an editor's save-dance is one trigger, not several.
DEBOUNCE_MS = 20


def is_manifest(name: str) -> bool:
    return name.endswith(".toml") and not name.startswith((".", "#")) and len(name) > len(".toml")


class DirectorySource:
    """``idle_wakeup`` (seconds): how often the watcher thread returns with
    nothing to report. Each return costs a little CPU; cancelling the watch
    (daemon shutdown) waits for the next one."""

    def __init__(self, path: Path, *, idle_wakeup: float = 2.0) -> None:
        self.path = path
        self.idle_wakeup = idle_wakeup
        self._cache: dict[str, tuple[tuple[int, int, int], Manifest]] = {}

    def snapshot(self) -> Mapping[str, Manifest]:
        found: dict[str, Manifest] = {}
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not is_manifest(entry.name) or not entry.is_file():
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue  # removed since the scan: as if never seen
            seen.add(entry.name)
            key = (info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._cache.get(entry.name)
            if cached is None or cached[0] != key:
                cached = (key, self._load(Path(entry.path)))
                self._cache[entry.name] = cached
            manifest = cached[1]
            found[manifest.name] = manifest
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return found

    @staticmethod
    def _load(path: Path) -> Manifest:
        try:
            squishfile = load_squishfile(path)
        except ManifestError as exc:
            return Manifest(path.stem, str(path), None, exc)
        return Manifest(path.stem, str(path), squishfile)

    async def changes(self) -> AsyncIterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
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
                yield
