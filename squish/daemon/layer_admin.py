"""What ``squish layer ...`` does, on the daemon's side: pull, import, list, remove, gc.

The daemon owns its state directory, so layer commands go through its API
(``squish.daemon.api``) to a ``LayerAdmin`` around its ``LayerStore``. Only the
daemon knows which containers use which layers: ``users`` is called on the
event loop and returns every squishfile the daemon wants running (by
container name) and the host paths each live container has mounted. A layer
one of them uses is never removed; ``gc`` removes every other entry of the
cache, and the index records (Alpine branches, registry layers) that pointed
at them.

Names: ``alpine VERSION`` is an Alpine base (a branch such as ``3.20``);
any other name is a registry layer (``python 3.11``).

The work blocks (downloads, unpacking, hashing, walking trees), so every
method runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import anyio.to_thread

from squish import api_schema as schema
from squish.errors import LayerError, RuntimeFailure
from squish.layers import LayerStore
from squish.layers.cache import tree_size
from squish.layers.download import Progress
from squish.layers.registry import check_name
from squish.model.squishfile import Squishfile

ALPINE = "alpine"

Users = Callable[[], tuple[Mapping[str, Squishfile], Mapping[str, Iterable[Path]]]]
"""``() -> (desired squishfiles by name, mounted host paths by container name)``."""

# How often a download's progress is passed on: enough for a smooth bar.
_PROGRESS_EVERY = 0.1


@dataclass
class LayerInfo:
    """One cache entry as ``squish layer ls`` shows it."""

    kind: str
    """``alpine``, ``registry``, ``base`` (the built-in busybox) or ``unpacked``
    (an archive path layer, or a layer tree of a git source)."""
    name: str
    version: str
    entry: str
    """The cache key (the entry directory's name)."""
    path: str
    sha256: str = ""
    """Of the archive it was unpacked from, where known."""
    source: str = ""
    size: int = 0
    used_by: list[str] = field(default_factory=list)
    branch: str = ""
    """For an Alpine base, the release branch it was asked as (``3.20``)."""

    def named(self, name: str, version: str) -> bool:
        """Whether ``name version`` (as the layer commands take them) means this entry."""
        if self.kind not in (ALPINE, "registry") or self.name != name:
            return False
        return version in (self.version, self.branch)

    def to_json(self) -> schema.LayerInfo:
        data: schema.LayerInfo = asdict(self)  # type: ignore[assignment]  # the same fields
        return data


class LayerAdmin:
    """Layer operations on ``store`` for the daemon's API."""

    def __init__(self, store: LayerStore, users: Users) -> None:
        self.store = store
        self.users = users
        # gc and rm decide from a snapshot of what is used; one at a time.
        self._removing = threading.Lock()

    async def entries(self) -> list[LayerInfo]:
        usage = await self._usage()
        return await anyio.to_thread.run_sync(self._list, usage)

    async def pull(
        self, name: str, version: str, *, sha256: str | None = None, progress: Progress | None
    ) -> LayerInfo:
        """Download ``name`` ``version`` (an Alpine branch: the newest point release)."""
        report = _throttled(progress) if progress is not None else None

        def pull() -> Path:
            if name == ALPINE:
                return self.store.alpine.materialise(version, progress=report, refresh=True).path
            return self.store.registry.pull(name, version, sha256=sha256, progress=report).path

        path = await anyio.to_thread.run_sync(pull)
        return await self._describe(path)

    async def import_file(
        self, name: str, version: str, file: IO[bytes], *, source: str, sha256: str | None
    ) -> LayerInfo:
        """Add ``name`` ``version`` from an archive (a minirootfs for ``alpine``)."""

        def add() -> Path:
            if name == ALPINE:
                if sha256 is not None:
                    raise LayerError("an Alpine minirootfs is verified by its content; no --sha256")
                return self.store.alpine.import_file(version, file, source=source).path
            return self.store.registry.import_file(
                name, version, file, source=source, sha256=sha256
            ).path

        path = await anyio.to_thread.run_sync(add)
        return await self._describe(path)

    async def remove(self, name: str, version: str) -> LayerInfo:
        """Forget ``name`` ``version`` and delete its entry, unless something uses it."""
        check_name(name, version)
        usage = await self._usage()

        def remove() -> LayerInfo:
            with self._removing:
                infos = self._list(usage)
                found = [info for info in infos if info.named(name, version)]
                if not found:
                    raise LayerError(f"no layer {name} {version} in the cache; see squish layer ls")
                info = found[0]
                if info.used_by:
                    raise RuntimeFailure(
                        f"layer {name} {version} is used by {', '.join(info.used_by)}; "
                        "remove or change those squishfiles first"
                    )
                self._forget(info)
                # Another name may share the entry (the same archive imported twice).
                if not any(
                    other is not info and other.entry == info.entry and other.kind != "unpacked"
                    for other in infos
                ):
                    self.store.cache.remove(info.entry)
                return info

        return await anyio.to_thread.run_sync(remove)

    async def gc(self) -> list[LayerInfo]:
        """Remove every entry nothing uses; return what was removed."""
        usage = await self._usage()

        def collect() -> list[LayerInfo]:
            removed = []
            gone: set[str] = set()
            with self._removing:
                for info in self._list(usage):
                    if info.used_by:
                        continue
                    self._forget(info)
                    # Several names may share one entry (one archive imported twice).
                    if info.entry in gone or self.store.cache.remove(info.entry):
                        gone.add(info.entry)
                        removed.append(info)
            return removed

        return await anyio.to_thread.run_sync(collect)

    def _forget(self, info: LayerInfo) -> None:
        """Drop the index record that names ``info`` (its entry is the caller's)."""
        if info.kind == ALPINE:
            self.store.alpine.forget(info.branch)
        elif info.kind == "registry":
            self.store.registry.forget(info.name, info.version)

    # -- what is used, and by whom ------------------------------------------------

    async def _usage(self) -> dict[Path, list[str]]:
        wanted, live = self.users()  # on the event loop: the reconciler's state
        desired: Mapping[str, Squishfile] = dict(wanted)
        mounted: Mapping[str, list[Path]] = {name: list(paths) for name, paths in live.items()}
        return await anyio.to_thread.run_sync(self._users_of_entries, desired, mounted)

    def _users_of_entries(
        self, desired: Mapping[str, Squishfile], mounted: Mapping[str, list[Path]]
    ) -> dict[Path, list[str]]:
        cache = self.store.cache
        usage: dict[Path, set[str]] = {}
        for name, squishfile in desired.items():
            for entry in self.store.cached_entries(squishfile.base, squishfile.layers):
                usage.setdefault(entry, set()).add(name)
        for name, paths in mounted.items():
            for path in paths:
                if cache.contains(path):
                    usage.setdefault(cache.entry_of(path), set()).add(name)
        # The default base is used by every squishfile that names none,
        # including the next one: never collected.
        for entry in self.store.cached_entries(None, ()):
            usage.setdefault(entry, set()).add("(default base)")
        return {entry: sorted(names) for entry, names in usage.items()}

    # -- describing entries -------------------------------------------------------

    def _list(self, usage: Mapping[Path, list[str]], *, only: str | None = None) -> list[LayerInfo]:
        """Every entry of the cache (or only the entry ``only``), sized and with its users."""
        cache = self.store.cache
        named: dict[str, list[LayerInfo]] = {}
        for release in self.store.alpine.releases():
            entry = release.path.name
            named.setdefault(entry, []).append(
                LayerInfo(
                    ALPINE,
                    ALPINE,
                    release.version,
                    entry,
                    str(release.path),
                    release.sha256,
                    branch=release.branch,
                )
            )
        for layer in self.store.registry.layers():
            entry = layer.path.name
            named.setdefault(entry, []).append(
                LayerInfo(
                    "registry",
                    layer.name,
                    layer.version,
                    entry,
                    str(layer.path),
                    layer.sha256,
                    layer.source,
                )
            )
        base = self.store.builtin_base_cached()
        if base is not None:
            named.setdefault(base.name, []).append(
                LayerInfo("base", "busybox", "built-in", base.name, str(base))
            )
        infos = []
        for entry in cache.digests():
            if only is not None and entry != only:
                continue
            path = cache.path_for(entry)
            size = tree_size(path)
            users = usage.get(path, [])
            for info in named.get(entry) or [LayerInfo("unpacked", "-", "-", entry, str(path))]:
                info.size = size
                info.used_by = list(users)
                infos.append(info)
        return infos

    async def _describe(self, path: Path) -> LayerInfo:
        """The entry at ``path``, as ``ls`` shows it (sizing only that one)."""
        usage = await self._usage()
        infos = await anyio.to_thread.run_sync(lambda: self._list(usage, only=path.name))
        for info in infos:
            if info.path == str(path):
                return info
        raise LayerError(f"{path} vanished from the cache")  # a gc raced us


def _throttled(progress: Progress) -> Progress:
    """``progress``, called at most every ``_PROGRESS_EVERY`` seconds (and at the end)."""
    last = 0.0

    def report(done: int, total: int | None) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY or (total is not None and done >= total):
            last = now
            with contextlib.suppress(Exception):
                progress(done, total)

    return report
