"""The git source's sync: fetch, build a revision's snapshot, apply it, report.

``GitSource`` is what the daemon owns per repository (see the package's
docstring for how a sync goes); it runs git through ``process`` and reads a
commit through ``revision``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.errors import LayerError, SquishError
from squish.layers.cache import LayerCache
from squish.layers.git_tree import (
    GitTreeExporter,
    TreeEntry,
)
from squish.layers.unpack import GiB
from squish.model.manifest import Manifest
from squish.sources import Changed, SourceStatus
from squish.sources.directory import is_manifest
from squish.sources.git.process import (
    Attempt,
    Cancelled,
    Credentials,
    Git,
    SyncFailed,
)
from squish.sources.git.revision import MAX_SQUISHFILE, Revision

log = logging.getLogger("squish.sources.git")

DEFAULT_INTERVAL = 30.0
FETCHED_REF = "refs/squish/fetched"
FETCH_OPTIONS = (
    "--quiet",
    "--no-tags",
    "--no-recurse-submodules",
    "--no-write-fetch-head",
    "--depth=1",
)
"""How every sync fetches: only the ref's commit, nothing else (the fleet benchmark uses it too)."""

# A branch, a tag or a full ref; never an option, a refspec or a range.
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*")
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SIZE_POLL = 0.5  # seconds between measurements of the clone during a fetch
_CANCEL_GRACE = 5.0  # how long a cancelled sync waits for its thread to let go
_RETRY_FIRST = 1.0  # seconds before the first retry of a failed sync


@dataclass(frozen=True)
class GitLimits:
    """What a repository may cost; exceeding one fails the sync and changes nothing."""

    max_bytes: int = GiB
    """Bytes of the clone on disk, of the squishfiles under ``path``, and of each
    path layer (blobs as git stores them, unpacked)."""
    max_files: int = 100_000
    """Entries (files, directories, links) in one directory layer."""
    timeout: float = 300.0
    """Seconds one git command (a fetch, an export) may take."""


Guard = Callable[[Mapping[str, Manifest], Mapping[str, Manifest]], str | None]
"""``guard(current, proposed)``: a reason not to apply ``proposed``, or None.

Called (in the sync's worker thread) with the snapshot in force and the one
just built for a new commit; a reason holds the new commit back
(``status().held``, the ``held`` sync metric) and the current snapshot
stays. The next sync builds and asks again. The prune guard hooks in here.
"""


class SyncMetrics(Protocol):
    """What a git source tells its metrics (``squish.daemon.metrics.Metrics`` does it)."""

    def source_synced(
        self, source: str, result: str, *, revision: str | None = None, at: float | None = None
    ) -> None: ...


class GitSource:
    """Squishfiles from ``path`` in ``ref`` of the repository at ``url``.

    ``work_dir`` is this source's private directory (the bare clone lives
    there); ``cache`` is the layer store's cache, which path layers are
    exported into. ``interval``: seconds between fetches in ``run()``.
    ``guard``: see ``Guard``. ``host_paths``: host directories (resolved)
    under which a squishfile of the repository may name absolute path
    layers (``--allow-host-path``); none by default. Blocking methods are
    thread-safe; syncs are serialised.
    """

    kind = "git"

    def __init__(
        self,
        url: str,
        *,
        ref: str = "main",
        path: str = ".",
        work_dir: Path,
        cache: LayerCache,
        name: str = "git",
        interval: float = DEFAULT_INTERVAL,
        metrics: SyncMetrics | None = None,
        limits: GitLimits = GitLimits(),
        guard: Guard | None = None,
        host_paths: tuple[Path, ...] = (),
    ) -> None:
        self.host_paths = host_paths
        self._credentials = Credentials.of(url)
        self.url = self._credentials.redacted
        if not _REF.fullmatch(ref) or ".." in ref or ref.endswith((".lock", "/", ".")):
            raise SquishError(
                f"git source {name!r}: ref {ref!r} is not a branch, tag or ref name "
                '(e.g. "main", "v1.2", "refs/heads/deploy")'
            )
        self.ref = ref
        normal = posixpath.normpath(path or ".")
        if normal.startswith("/") or normal == ".." or normal.startswith("../"):
            raise SquishError(
                f"git source {name!r}: path {path!r} must be a directory inside the repository, "
                'relative to its root (e.g. "." or "deploy/apps")'
            )
        self.path = "" if normal == "." else normal
        self.work_dir = work_dir
        self.cache = cache
        self.name = name
        self.interval = interval
        self.metrics = metrics
        self.limits = limits
        self.guard = guard
        self._repo = work_dir / "repo.git"
        self._git = Git(self._repo, url, self._credentials, limits.timeout)
        self.repo_name = _repo_name(self.url)
        # Path layers go to the cache through the one exporter, which reads
        # the clone through each revision (squish.layers.git_tree).
        self.exporter = GitTreeExporter(
            cache, max_bytes=limits.max_bytes, max_files=limits.max_files, work_dir=work_dir
        )
        self._lock = threading.Lock()
        self._snapshot: Mapping[str, Manifest] = MappingProxyType({})
        self._generation = 0
        self._status = SourceStatus(name, self.kind, self.url, ref, self.path or ".")
        self._wake: anyio.Event | None = None
        self._locks_cleared = False

    # -- what the reconciler and the API read --------------------------------

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        """The manifests of the applied revision (empty before the first sync)."""
        return self._snapshot

    def status(self) -> SourceStatus:
        return self._status

    # -- syncing -------------------------------------------------------------

    def sync_now(self) -> SourceStatus:
        """Fetch and, if the commit changed, build and apply it; blocks.

        Never raises for what the repository or the network do: the outcome
        is in the returned status.
        """
        return self._sync(Attempt())

    async def sync(self) -> SourceStatus:
        """``sync_now`` in a worker thread; cancelling it kills git at once."""
        attempt = Attempt()
        try:
            return await anyio.to_thread.run_sync(self._sync, attempt, abandon_on_cancel=True)
        except BaseException:
            # Cancelled (the daemon is stopping): stop git now rather than at
            # its timeout, and give the thread a moment to let go of the
            # clone, so no git of ours outlives the task that started it.
            attempt.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(attempt.finished.wait, _CANCEL_GRACE)
            raise

    def request_sync(self) -> None:
        """Make ``run()`` sync now instead of at the end of its interval.

        Call it from the event loop's thread (the API's handlers); other
        threads call ``sync_now()``. Without a running ``run()`` it does
        nothing.
        """
        if self._wake is not None:
            self._wake.set()

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Sync every ``interval`` seconds (and on ``request_sync()``), until cancelled.

        Calls ``changed()`` after each sync that changed the applied
        revision, and after the first successful sync. A failed sync is
        retried sooner: after about 1 s, doubling up to ``interval``.
        """
        task_status.started()
        first = True
        retry = _RETRY_FIRST
        while True:
            # A request that arrives during the sync below is for a fetch
            # after it: the event is renewed before, not after, syncing.
            self._wake = anyio.Event()
            before = self._generation
            status = await self.sync()
            if self._generation != before or (first and status.error is None):
                first = False
                changed()
            wait = self.interval
            if status.error is not None:
                # A failed fetch (a server busy with the whole fleet after a
                # push, a network blip) is tried again soon rather than a
                # whole interval later, with jitter so that a fleet does not
                # come back in step: 1 s, 2 s, 4 s, ... up to the interval.
                wait = min(self.interval, retry * random.uniform(0.5, 1.5))  # noqa: S311
                retry *= 2
            else:
                retry = _RETRY_FIRST
            with anyio.move_on_after(wait):
                await self._wake.wait()

    def _sync(self, attempt: Attempt) -> SourceStatus:
        try:
            with self._lock:
                if not attempt.cancelled:
                    self._attempt(attempt)
        except Cancelled:
            pass
        finally:
            attempt.finished.set()
        return self._status

    def _attempt(self, attempt: Attempt) -> None:
        started = time.time()
        commit: str | None = None
        try:
            commit = self._fetch(attempt)
            if commit == self._status.applied_revision:
                self._succeeded(commit, started)
                return
            manifests = self._build(attempt, commit)
            reason = self.guard(self._snapshot, manifests) if self.guard else None
            if reason is not None:
                self._held(commit, started, reason)
                return
            self._snapshot = MappingProxyType(manifests)
            self._generation += 1
            log.info("git source %s: applied %s (%s)", self.name, commit, self.url)
            self._succeeded(commit, started)
        except SyncFailed as exc:
            self._failed(commit, started, str(exc))
        except LayerError as exc:  # the cache cannot be written
            self._failed(commit, started, str(exc))
        except OSError as exc:  # work_dir: temporary files
            self._failed(commit, started, f"cannot write in {self.work_dir}: {exc.strerror or exc}")

    def _succeeded(self, commit: str, started: float) -> None:
        self._status = replace(
            self._status,
            applied_revision=commit,
            attempted_revision=commit,
            last_sync=started,
            last_attempt=started,
            error=None,
            held=None,
        )
        if self.metrics is not None:
            self.metrics.source_synced(self.name, "success", revision=commit, at=started)

    def _held(self, commit: str, started: float, reason: str) -> None:
        if self._status.held != reason:
            log.warning("git source %s: holding %s back: %s", self.name, commit, reason)
        self._status = replace(
            self._status, attempted_revision=commit, last_attempt=started, error=None, held=reason
        )
        if self.metrics is not None:
            self.metrics.source_synced(self.name, "held")

    def _failed(self, commit: str | None, started: float, error: str) -> None:
        error = " ".join(self._credentials.scrub(error).split())
        if self._status.error != error:
            log.warning("git source %s: sync failed: %s", self.name, error)
        self._status = replace(
            self._status,
            attempted_revision=commit or self._status.attempted_revision,
            last_attempt=started,
            error=error,
            held=None,
        )
        if self.metrics is not None:
            self.metrics.source_synced(self.name, "error")

    # -- fetching ------------------------------------------------------------

    def _fetch(self, attempt: Attempt) -> str:
        """Fetch ``ref`` into the clone (made if missing); the commit it names."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SyncFailed(f"cannot create {self.work_dir}: {exc.strerror or exc}") from exc
        if not (self._repo / "HEAD").is_file():
            self._discard_clone()
            # No template: not even the sample hooks are copied.
            self._git.run(
                attempt,
                ["init", "--quiet", "--bare", "--template=", str(self._repo)],
                what=f"cannot create a clone in {self._repo}",
                in_repo=False,
            )
        if not self._locks_cleared:
            _remove_stale_locks(self._repo)
            self._locks_cleared = True
        what = f"cannot fetch {self.ref!r} from {self.url}"
        too_big = _SizeWatch(self._repo, self.limits.max_bytes)
        try:
            self._git.run(
                attempt,
                ["fetch", *FETCH_OPTIONS, "origin", f"+{self.ref}:{FETCHED_REF}"],
                what=what,
                check=too_big.check,
            )
            # Measured once more at the end: the last poll may predate the
            # last bytes written.
            if (reason := too_big.measure()) is not None:
                raise SyncFailed(f"{what}: {reason}")
        except SyncFailed as exc:
            if exc.killed or too_big.exceeded:
                # A fetch killed half-way leaves temporary packs and lock
                # files, and one over the limit a clone that stays over it:
                # start again from nothing next time.
                self._discard_clone()
            raise
        except Cancelled:
            self._discard_clone()
            raise
        commit = self._git.run(
            attempt,
            ["rev-parse", "--verify", "--end-of-options", f"{FETCHED_REF}^{{commit}}"],
            what=f"{what}: it is not a commit",
        ).decode("ascii", "replace")
        commit = commit.strip()
        if not _HEX.fullmatch(commit):
            raise SyncFailed(f"{what}: git answered {commit[:80]!r} for the commit")
        return commit

    def _discard_clone(self) -> None:
        shutil.rmtree(self._repo, ignore_errors=True)

    # -- building a revision ---------------------------------------------------

    def _build(self, attempt: Attempt, commit: str) -> dict[str, Manifest]:
        """Every manifest of ``commit``, with its path layers in the cache."""
        revision = Revision(self, attempt, commit)
        directory = revision.directory(self.path)
        found = revision.listing(directory)
        files: list[tuple[str, TreeEntry]] = [
            (name, entry)
            for name, entry in sorted(found.items())
            if is_manifest(name) and entry.kind == "blob"
        ]
        total = sum(entry.size for _name, entry in files if not entry.is_symlink)
        if total > self.limits.max_bytes:
            raise SyncFailed(
                f"{self.path or '.'}@{revision.short}: the squishfiles hold {total} bytes, "
                f"more than the limit of {self.limits.max_bytes} (max_bytes)"
            )
        readable = [
            entry.oid
            for _n, entry in files
            if not entry.is_symlink and entry.size <= MAX_SQUISHFILE
        ]
        contents = revision.read_blobs(readable)
        manifests: dict[str, Manifest] = {}
        for name, entry in files:
            repo_path = posixpath.join(self.path, name)
            manifest = revision.manifest(repo_path, entry, contents.get(entry.oid))
            manifests[manifest.name] = manifest
        return manifests


class _SizeWatch:
    """Measures the clone during a fetch; over ``limit`` bytes it says so."""

    def __init__(self, repo: Path, limit: int) -> None:
        self.repo = repo
        self.limit = limit
        self.exceeded = False
        self._next = 0.0

    def check(self) -> str | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + _SIZE_POLL
        return self.measure()

    def measure(self) -> str | None:
        size = _tree_bytes(self.repo)
        if size <= self.limit:
            return None
        self.exceeded = True
        return (
            f"the repository takes more than {self.limit} bytes, the limit (max_bytes); "
            "the clone was discarded"
        )


def _remove_stale_locks(repo: Path) -> None:
    """Remove lock files a git killed along with its daemon left in the clone.

    The clone belongs to one source of one daemon, so at that source's first
    sync any lock in it is stale; git would refuse to update a ref for as
    long as it exists.
    """
    for dirpath, _dirs, names in os.walk(repo):
        for name in names:
            if name.endswith(".lock"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _repo_name(url: str) -> str:
    """The repository's directory name in a checkout: ``.../web.git`` -> ``web``."""
    rest = url.split("://", 1)[1].partition("/")[2] if "://" in url else url
    if "://" not in url and ":" in rest.split("/", 1)[0]:
        rest = rest.split(":", 1)[1]  # scp-like: git@host:org/web.git
    name = rest.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return name if name not in ("", ".", "..") else "repository"
