"""The git source: squishfiles from one branch of a git repository (GitOps sync).

The daemon owns a ``GitSource`` per configured repository and hands it to the
reconciler like any ``Source``; the API and the CLI read ``status()`` and call
``request_sync()`` for ``squish sync``. Every ``*.toml`` directly under
``path`` in the repository is a container, named and filtered like the
directory source's files (``is_manifest``).

How a sync goes, in a worker thread:

1. ``git fetch --depth=1`` of ``ref`` into a bare clone in ``work_dir``
   (``refs/squish/fetched``). Nothing is checked out, ever.
2. If the fetched commit is not the one applied, the whole snapshot for it is
   built from git objects (``git ls-tree``, ``git cat-file``): each squishfile
   is read and parsed, and each of its path layers is exported from git into
   the content-addressed ``LayerCache``. Only when all of that is done is the
   new snapshot swapped in, in one assignment, so the reconciler sees one
   commit or the next, never a mixture and never a half-written checkout. For
   the same reason old revisions need no cleanup: nothing mounts a checkout.
3. ``status()`` and the metrics record the outcome. A failed sync (remote
   gone, ref missing, a size limit exceeded) changes nothing: the previous
   snapshot stays, and the error is kept until a later sync succeeds.

Path layers point into the cache. A directory (a git tree) becomes the entry
keyed by its tree id, exported with ``git archive`` and unpacked by
``squish.layers.unpack`` (which refuses symlinks leading out of the layer); a
single file (a blob: a config file, a binary, an archive the layer store will
unpack) becomes an entry holding that one file, keyed by blob id, mode and
name. So an unchanged layer has the same host path in every revision (the
container's spec hash is unchanged, it keeps running) and a changed one a new
path (the container is replaced). ``git archive`` honours ``export-ignore``
attributes in the repository's ``.gitattributes``: such files are left out of
the layer, as they are from any archive of the repository.

The repository is untrusted input. Git runs with no hooks
(``core.hooksPath=/dev/null``), no ``ext::`` transport, no submodules, fsck
of everything fetched, no terminal prompts; credentials come from git's own
mechanisms (credential helpers, ssh keys). Squishfiles and layer paths that
are symlinks in the repository, or pass through one, are refused and never
read through; paths must stay inside the repository; gitlinks (submodules)
are refused. A ``user:password@`` in the URL is passed to git in its
environment (never in argv, never on disk) and redacted (``***``) in
everything squish shows: the status, errors, logs and git's own messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import IO, Protocol
from urllib.parse import unquote

import anyio
import anyio.to_thread

from squish.errors import LayerError, ManifestError, SquishError
from squish.layers.archive import UNPACKER_VERSION
from squish.layers.cache import LayerCache
from squish.layers.unpack import GiB, Limits, MiB, unpack_file
from squish.model.manifest import Manifest
from squish.model.squishfile import Layer, Squishfile, parse_squishfile
from squish.sources import SourceStatus
from squish.sources.directory import is_manifest

__all__ = ["GitLimits", "GitSource", "Guard", "SourceStatus", "redact_url"]

log = logging.getLogger("squish.sources.git")

DEFAULT_INTERVAL = 30.0
MAX_SQUISHFILE = MiB
"""A squishfile larger than this is refused unread (it would be a mistake)."""

FETCHED_REF = "refs/squish/fetched"
FETCH_OPTIONS = (
    "--quiet",
    "--no-tags",
    "--no-recurse-submodules",
    "--no-write-fetch-head",
    "--depth=1",
)
"""How every sync fetches: only the ref's commit, nothing else (the fleet benchmark uses it too)."""

# Keys of cache entries. The tree tag carries the unpacker's version because
# the entry is what the unpacker wrote; a new unpacker means a new entry.
_TREE_TAG = f"squish git tree v1 unpack {UNPACKER_VERSION}\n"
_BLOB_TAG = "squish git blob v1\n"

# Given to every git command. On the command line they outrank every config
# file, the user's global one included, and git passes them on to the
# commands it starts (upload-pack for a local remote).
_SAFE_CONFIG = (
    "core.hooksPath=/dev/null",  # no hook ever runs, not even reference-transaction
    "protocol.ext.allow=never",  # ext:: runs an arbitrary command
    "core.fsmonitor=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "transfer.fsckObjects=true",  # refuse malformed objects (".." or ".git" tree entries)
    "gc.autoDetach=false",  # an automatic gc finishes inside fetch, never behind our back
    "credential.interactive=false",
)
# Variables that would point git at another repository or change what it
# reads; the daemon's environment is no business of the clone.
_FOREIGN_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_QUARANTINE_PATH",
    "GIT_PREFIX",
    "GIT_CEILING_DIRECTORIES",
    "GIT_REPLACE_REF_BASE",
)
# A branch, a tag or a full ref; never an option, a refspec or a range.
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*")
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_POLL = 0.05  # seconds between checks on a running git (timeout, limits, cancel)
_SIZE_POLL = 0.5  # seconds between measurements of the clone during a fetch
_CANCEL_GRACE = 5.0  # how long a cancelled sync waits for its thread to let go
_RETRY_FIRST = 1.0  # seconds before the first retry of a failed sync
_MAX_LISTING = 256 * MiB  # output of one ls-tree; beyond it a tree is unreasonable
_LINE = 300  # characters of git's message kept in an error


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


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***``; safe to show and log.

    A password is always hidden (``https://user:***@host/x``); a user name
    alone is hidden on http(s) and ftp(s), where it is usually a token
    (``https://***@github.com/x``), and kept for ssh and git, where it is
    ``git``.
    """
    return _Credentials.of(url).redacted


@dataclass(frozen=True)
class _Credentials:
    redacted: str
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, url: str) -> _Credentials:
        match = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)", url)
        if match is None:
            # No scheme: scp-like (``git@host:org/r.git``) or a local path.
            # ``user:token@host:...`` is not valid there, but clearly meant
            # as credentials, so it is hidden all the same.
            match = re.match(r"([^/@:]+:[^/@]*@)", url)
            if match is None:
                return cls(url, ())
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        authority = match.group(1)
        userinfo, at, host = authority.rpartition("@")
        if not at:
            return cls(url, ())
        user, colon, password = userinfo.partition(":")
        if colon:
            shown, secret = f"{user}:***", password
        elif scheme in ("http", "https", "ftp", "ftps"):
            shown, secret = "***", userinfo
        else:
            return cls(url, ())
        redacted = f"{url[: match.start(1)]}{shown}@{host}{url[match.end(1) :]}"
        secrets = tuple(s for s in {secret, unquote(secret)} if s)
        return cls(redacted, secrets)

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


class _SyncFailed(SquishError):
    """The sync as a whole failed; the previous snapshot stays.

    ``killed``: git was stopped by squish (timeout, a limit), possibly
    leaving lock files and temporary packs behind.
    """

    def __init__(self, message: str, *, killed: bool = False) -> None:
        super().__init__(message)
        self.killed = killed


class _Refused(LayerError):
    """A layer's content was refused (unpack rules); the manifest is in error.

    Not an ``OSError``, so ``LayerCache.materialise`` passes it through
    untranslated, telling a refusal from a cache that cannot be written.
    """


class _Cancelled(Exception):
    """The sync was cancelled (the daemon is stopping); record nothing."""


class _Attempt:
    """One sync: its git processes, so that cancelling it can kill them."""

    def __init__(self) -> None:
        self.cancelled = False
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()

    def add(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.add(process)
            cancelled = self.cancelled
        if cancelled:
            _kill(process)

    def discard(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(process)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            processes = list(self._processes)
        for process in processes:
            _kill(process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    # git runs in a session of its own: the whole group goes, helpers
    # (remote-http, upload-pack, ssh) included.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class _Entry:
    """One entry of a git tree (``ls-tree -l``)."""

    mode: str
    kind: str  # blob, tree or commit (a gitlink)
    oid: str
    size: int  # 0 for trees and gitlinks

    @property
    def is_symlink(self) -> bool:
        return self.mode == "120000"


class _Git:
    """Runs git on the bare clone, safely, with a timeout; one-line errors."""

    def __init__(self, repo: Path, url: str, credentials: _Credentials, timeout: float) -> None:
        self.repo = repo
        self.credentials = credentials
        self.timeout = timeout
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
        # The URL goes in as config through the environment: argv is public
        # (ps, /proc/*/cmdline) and the clone's config is a file on disk.
        index = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
        env[f"GIT_CONFIG_KEY_{index}"] = "remote.origin.url"
        env[f"GIT_CONFIG_VALUE_{index}"] = url
        env["GIT_CONFIG_COUNT"] = str(index + 1)
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_NO_REPLACE_OBJECTS="1",
            GIT_LITERAL_PATHSPECS="1",
            LC_ALL="C",
            LANGUAGE="C",
        )
        self.env = env

    def run(
        self,
        attempt: _Attempt,
        args: Sequence[str],
        *,
        what: str,
        stdout: IO[bytes] | None = None,
        stdin: IO[bytes] | None = None,
        max_output: int = _MAX_LISTING,
        check: Callable[[], str | None] | None = None,
        in_repo: bool = True,
    ) -> bytes:
        """Run ``git args``; its stdout, or b"" when written to ``stdout``.

        ``check`` is polled while git runs and may return why to stop it (a
        size limit); so are the timeout, ``max_output`` and cancellation.
        Raises ``_SyncFailed`` saying ``what`` failed, in one line.
        """
        config = [arg for item in _SAFE_CONFIG for arg in ("-c", item)]
        prefix = ["git", *config, *(["--git-dir", str(self.repo)] if in_repo else [])]
        with contextlib.ExitStack() as stack:
            work = self.repo.parent
            err = stack.enter_context(tempfile.TemporaryFile(dir=work, prefix=".git-stderr-"))
            out = stdout or stack.enter_context(
                tempfile.TemporaryFile(dir=work, prefix=".git-stdout-")
            )
            try:
                process = subprocess.Popen(
                    [*prefix, *args],
                    stdin=stdin if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.env,
                    cwd=work,
                    start_new_session=True,
                )
            except OSError as exc:
                raise _SyncFailed(f"{what}: cannot run git: {exc.strerror or exc}") from exc
            attempt.add(process)
            try:
                stopped = self._wait(attempt, process, out, max_output, check)
            finally:
                attempt.discard(process)
                if process.poll() is None:
                    _kill(process)
                    process.wait()
            if attempt.cancelled:
                raise _Cancelled
            if stopped is not None:
                raise _SyncFailed(f"{what}: {stopped}", killed=True)
            if process.returncode != 0:
                err.seek(0)
                message = self._one_line(err.read(64 * 1024), process.returncode)
                raise _SyncFailed(f"{what}: {message}")
            if stdout is not None:
                return b""
            out.seek(0)
            return out.read()

    def _wait(
        self,
        attempt: _Attempt,
        process: subprocess.Popen[bytes],
        out: IO[bytes],
        max_output: int,
        check: Callable[[], str | None] | None,
    ) -> str | None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                process.wait(timeout=_POLL)
                return None
            except subprocess.TimeoutExpired:
                pass
            if attempt.cancelled:
                return "cancelled"
            if time.monotonic() > deadline:
                return f"git took longer than {self.timeout:g} s (the timeout)"
            if os.fstat(out.fileno()).st_size > max_output:
                return f"git wrote more than {max_output} bytes, the limit"
            if check is not None and (reason := check()) is not None:
                return reason

    def _one_line(self, stderr: bytes, returncode: int) -> str:
        text = self.credentials.scrub(stderr.decode("utf-8", "replace"))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        message = next(
            (
                line.partition(":")[2].strip()
                for prefix in ("fatal:", "error:")
                for line in lines
                if line.startswith(prefix)
            ),
            lines[-1] if lines else f"git failed with exit status {returncode}",
        )
        return message if len(message) <= _LINE else message[: _LINE - 3] + "..."


class SyncMetrics(Protocol):
    """What a git source tells its metrics (``squish.daemon.metrics.Metrics`` does it)."""

    def source_synced(
        self, source: str, result: str, *, revision: str | None = None, at: float | None = None
    ) -> None: ...


class GitSource:
    """Squishfiles from ``path`` in ``ref`` of the repository at ``url``.

    ``work_dir`` is this source's private directory (the bare clone lives
    there); ``cache`` is the layer store's cache, which path layers are
    exported into. ``interval``: seconds between fetches in ``changes()``.
    ``guard``: see ``Guard``. Blocking methods are thread-safe; syncs are
    serialised.
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
    ) -> None:
        self._credentials = _Credentials.of(url)
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
        self._git = _Git(self._repo, url, self._credentials, limits.timeout)
        self._repo_name = _repo_name(self.url)
        self._lock = threading.Lock()
        self._snapshot: Mapping[str, Manifest] = MappingProxyType({})
        self._generation = 0
        self._status = SourceStatus(name, self.kind, self.url, ref, self.path or ".")
        self._wake: anyio.Event | None = None
        self._locks_cleared = False

    # -- what the reconciler and the API read --------------------------------

    def snapshot(self) -> Mapping[str, Manifest]:
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
        return self._sync(_Attempt())

    async def sync(self) -> SourceStatus:
        """``sync_now`` in a worker thread; cancelling it kills git at once."""
        attempt = _Attempt()
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
        """Make ``changes()`` sync now instead of at the end of its interval.

        Call it from the event loop's thread (the API's handlers); other
        threads call ``sync_now()``. Without a running ``changes()`` it does
        nothing.
        """
        if self._wake is not None:
            self._wake.set()

    async def changes(self) -> AsyncGenerator[None, None]:
        """Sync every ``interval`` seconds (and on ``request_sync()``), forever.

        Yields after each sync that changed the applied revision, and after
        the first successful sync. A failed sync is retried sooner: after
        about 1 s, doubling up to ``interval``.
        """
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
                yield
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

    def _sync(self, attempt: _Attempt) -> SourceStatus:
        try:
            with self._lock:
                if not attempt.cancelled:
                    self._attempt(attempt)
        except _Cancelled:
            pass
        finally:
            attempt.finished.set()
        return self._status

    def _attempt(self, attempt: _Attempt) -> None:
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
        except _SyncFailed as exc:
            self._failed(commit, started, str(exc))
        except LayerError as exc:  # the cache cannot be written
            self._failed(commit, started, str(exc))
        except OSError as exc:  # work_dir: temporary files, the parse model
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

    def _fetch(self, attempt: _Attempt) -> str:
        """Fetch ``ref`` into the clone (made if missing); the commit it names."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _SyncFailed(f"cannot create {self.work_dir}: {exc.strerror or exc}") from exc
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
                raise _SyncFailed(f"{what}: {reason}")
        except _SyncFailed as exc:
            if exc.killed or too_big.exceeded:
                # A fetch killed half-way leaves temporary packs and lock
                # files, and one over the limit a clone that stays over it:
                # start again from nothing next time.
                self._discard_clone()
            raise
        except _Cancelled:
            self._discard_clone()
            raise
        commit = self._git.run(
            attempt,
            ["rev-parse", "--verify", "--end-of-options", f"{FETCHED_REF}^{{commit}}"],
            what=f"{what}: it is not a commit",
        ).decode("ascii", "replace")
        commit = commit.strip()
        if not _HEX.fullmatch(commit):
            raise _SyncFailed(f"{what}: git answered {commit[:80]!r} for the commit")
        return commit

    def _discard_clone(self) -> None:
        shutil.rmtree(self._repo, ignore_errors=True)

    # -- building a revision ---------------------------------------------------

    def _build(self, attempt: _Attempt, commit: str) -> dict[str, Manifest]:
        """Every manifest of ``commit``, with its path layers in the cache."""
        revision = _Revision(self, attempt, commit)
        directory = revision.directory(self.path)
        found = revision.listing(directory)
        files: list[tuple[str, _Entry]] = [
            (name, entry)
            for name, entry in sorted(found.items())
            if is_manifest(name) and entry.kind == "blob"
        ]
        total = sum(entry.size for _name, entry in files if not entry.is_symlink)
        if total > self.limits.max_bytes:
            raise _SyncFailed(
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
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix=".parse-") as scratch:
            # The parser anchors relative paths on the host and checks that
            # they exist: it is given an empty model of the repository (see
            # _model), named like the repository so that a default target
            # (``app = "./"`` at the top -> ``/app/<repository>``) comes out
            # as it would from a checkout.
            model = Path(scratch).resolve() / self._repo_name
            for name, entry in files:
                repo_path = posixpath.join(self.path, name)
                manifest = revision.manifest(repo_path, entry, contents.get(entry.oid), model)
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


class _Revision:
    """One commit of the clone, read through git's object database.

    Tree listings are remembered, so the squishfiles and layers of one
    revision list each directory once.
    """

    def __init__(self, source: GitSource, attempt: _Attempt, commit: str) -> None:
        self.source = source
        self.attempt = attempt
        self.commit = commit
        self.short = commit[:12]
        self._git = source._git
        self._listings: dict[str, dict[str, _Entry]] = {}
        root = self._run(["rev-parse", "--verify", f"{commit}^{{tree}}"], "reading the commit")
        self.root = _Entry("040000", "tree", root.decode("ascii", "replace").strip(), 0)

    def _run(
        self,
        args: Sequence[str],
        what: str,
        *,
        stdout: IO[bytes] | None = None,
        stdin: IO[bytes] | None = None,
        max_output: int = _MAX_LISTING,
    ) -> bytes:
        return self._git.run(
            self.attempt,
            args,
            what=f"{what} at {self.short}",
            stdout=stdout,
            stdin=stdin,
            max_output=max_output,
        )

    # -- trees ---------------------------------------------------------------

    def listing(self, tree: _Entry) -> dict[str, _Entry]:
        known = self._listings.get(tree.oid)
        if known is None:
            raw = self._run(["ls-tree", "-l", "-z", tree.oid], "listing a directory")
            known = dict(_parse_ls_tree(raw))
            self._listings[tree.oid] = known
        return known

    def walk(self, repo_path: str) -> _Entry:
        """The entry at ``repo_path`` (normalised, relative; "" is the root).

        Raises ``_NotThere`` naming the first component that is missing, is
        a symlink or a submodule, or is a file where a directory should be.
        """
        entry = self.root
        parts = repo_path.split("/") if repo_path else []
        for depth, part in enumerate(parts):
            so_far = "/".join(parts[: depth + 1])
            if entry.kind != "tree":
                raise _NotThere(f"'{posixpath.dirname(so_far)}' is a file, not a directory")
            child = self.listing(entry).get(part)
            if child is None:
                raise _NotThere("does not exist")
            if child.is_symlink:
                what = "is" if so_far == repo_path else f"passes through '{so_far}', which is"
                raise _NotThere(
                    f"{what} a symlink in the repository; a git source never follows "
                    "symlinks: commit the files themselves"
                )
            if child.kind == "commit":
                what = "is" if so_far == repo_path else f"passes through '{so_far}', which is"
                raise _NotThere(
                    f"{what} a submodule; a git source does not fetch submodules: "
                    "commit the files themselves"
                )
            entry = child
        return entry

    def directory(self, repo_path: str) -> _Entry:
        """The tree at the source's ``path``; a sync failure if there is none."""
        try:
            entry = self.walk(repo_path)
        except _NotThere as exc:
            raise _SyncFailed(
                f"path '{repo_path}' at {self.short}: {exc.message} (the path of the git source)"
            ) from exc
        if entry.kind != "tree":
            raise _SyncFailed(f"path '{repo_path}' at {self.short}: is a file, not a directory")
        return entry

    def read_blobs(self, oids: Sequence[str]) -> dict[str, bytes]:
        """The contents of ``oids`` (all blobs), read with one ``cat-file --batch``."""
        if not oids:
            return {}
        with tempfile.TemporaryFile(dir=self.source.work_dir, prefix=".git-stdin-") as stdin:
            stdin.write("".join(f"{oid}\n" for oid in oids).encode("ascii"))
            stdin.seek(0)
            raw = self._run(["cat-file", "--batch"], "reading squishfiles", stdin=stdin)
        found: dict[str, bytes] = {}
        at = 0
        for oid in oids:
            end = raw.index(b"\n", at)
            header = raw[at:end].split()
            if len(header) != 3 or header[1] != b"blob":
                raise _SyncFailed(f"reading squishfiles at {self.short}: git cannot read {oid}")
            size = int(header[2])
            found[oid] = raw[end + 1 : end + 1 + size]
            at = end + 1 + size + 1
        return found

    # -- one squishfile --------------------------------------------------------

    def manifest(self, repo_path: str, entry: _Entry, data: bytes | None, model: Path) -> Manifest:
        file = f"{repo_path}@{self.short}"
        name = posixpath.basename(repo_path).removesuffix(".toml")
        try:
            if entry.is_symlink:
                raise ManifestError(
                    file,
                    "is a symlink in the repository; a git source reads squishfiles only "
                    "from regular files: commit the file itself",
                )
            if data is None:
                raise ManifestError(
                    file, f"is {entry.size} bytes; a squishfile may be at most {MAX_SQUISHFILE}"
                )
            squishfile = self._parse(file, posixpath.dirname(repo_path), name, data, model)
        except ManifestError as exc:
            return Manifest(name, file, None, exc)
        return Manifest(name, file, squishfile)

    def _parse(self, file: str, directory: str, name: str, data: bytes, model: Path) -> Squishfile:
        located: dict[str, tuple[str, _Entry, str]] = {}
        for layer, (raw, field) in _path_layers(data).items():
            if raw.startswith("/"):
                raise ManifestError(
                    file,
                    f"{raw!r} is an absolute path; in a git repository a path layer is "
                    'relative to the squishfile, e.g. "./app"',
                    field=field,
                )
            repo_path = posixpath.normpath(posixpath.join(directory, raw))
            if repo_path == ".." or repo_path.startswith("../"):
                raise ManifestError(
                    file,
                    f"{raw!r} leaves the repository; a path layer must be inside it",
                    field=field,
                )
            repo_path = "" if repo_path == "." else repo_path
            try:
                entry = self.walk(repo_path)
            except _NotThere as exc:
                shown = f"'{repo_path}'" if repo_path else "the repository root"
                raise ManifestError(
                    file, f"{raw!r} ({shown} in the repository) {exc.message}", field=field
                ) from exc
            _model(model, repo_path, entry)
            located[layer] = (repo_path, entry, field)
        squishfile = parse_squishfile(data, file=file, base_dir=model / directory, name=name)

        def exported(layer: Layer) -> Layer:
            if layer.path is None:
                return layer
            # Every path layer the parser accepted was located above: the
            # two read the same TOML with the same rules.
            if layer.name not in located:  # pragma: no cover - a parser they disagree on
                raise ManifestError(file, "cannot find this layer's path", field="layers")
            repo_path, entry, field = located[layer.name]
            try:
                path = self._export(repo_path, entry)
            except _Refused as exc:
                raise ManifestError(file, str(exc), field=field) from exc
            except _SyncFailed as exc:
                # Too big: the whole sync fails, saying where.
                raise _SyncFailed(f"{file}: {field}: {exc}", killed=exc.killed) from exc
            return replace(layer, path=path)

        return replace(
            squishfile,
            base=None if squishfile.base is None else exported(squishfile.base),
            layers=tuple(exported(layer) for layer in squishfile.layers),
        )

    # -- exporting layers ------------------------------------------------------

    def _export(self, repo_path: str, entry: _Entry) -> Path:
        """The cache path holding ``entry``: a directory, or a directory's one file."""
        limits = self.source.limits
        label = f"'{repo_path or '.'}'"
        cache = self.source.cache
        if entry.kind == "blob":
            if entry.size > limits.max_bytes:
                raise _SyncFailed(
                    f"{label} is {entry.size} bytes, more than the limit of "
                    f"{limits.max_bytes} (max_bytes)"
                )
            basename = posixpath.basename(repo_path)
            key = _key(_BLOB_TAG, f"{entry.oid}\n{entry.mode}\n{basename}")
            return cache.materialise(key, lambda into: self._write_blob(entry, into / basename)) / (
                basename
            )
        key = _key(_TREE_TAG, entry.oid)
        hit = cache.get(key)
        if hit is not None:
            return hit
        files = dict(
            _parse_ls_tree(self._run(["ls-tree", "-r", "-l", "-z", entry.oid], "listing a layer"))
        )
        for path, item in files.items():
            if item.kind == "commit":
                raise _Refused(
                    f"{label} contains the submodule '{posixpath.join(repo_path, path)}'; a git "
                    "source does not fetch submodules: commit the files themselves"
                )
        total = sum(item.size for item in files.values())
        if total > limits.max_bytes:
            raise _SyncFailed(
                f"{label} holds {total} bytes, more than the limit of "
                f"{limits.max_bytes} (max_bytes)"
            )
        unpack_limits = Limits(total_bytes=limits.max_bytes, members=limits.max_files)
        return cache.materialise(
            key, lambda into: self._write_tree(entry, label, into, unpack_limits)
        )

    def _write_blob(self, entry: _Entry, target: Path) -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            self._run(
                ["cat-file", "blob", entry.oid],
                f"exporting {target.name}",
                stdout=out,
                max_output=entry.size,
            )
            # The one mode bit git keeps; layers are world-readable by design.
            os.fchmod(out.fileno(), 0o755 if entry.mode == "100755" else 0o644)

    def _write_tree(self, entry: _Entry, label: str, into: Path, limits: Limits) -> None:
        # Tar headers and padding: at most 1.5 KiB per member on top of the data.
        overhead = 1536 * (limits.members + 1) + 10240
        with tempfile.TemporaryFile(dir=self.source.work_dir, prefix=".git-archive-") as tar:
            self._run(
                ["archive", "--format=tar", entry.oid],
                f"exporting {label}",
                stdout=tar,
                max_output=limits.total_bytes + overhead,
            )
            try:
                unpack_file(tar, into, name=label, limits=limits)
            except LayerError as exc:
                raise _Refused(str(exc)) from exc


class _NotThere(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _parse_ls_tree(raw: bytes) -> list[tuple[str, _Entry]]:
    """``git ls-tree -l -z`` output as (name, entry) pairs."""
    found: list[tuple[str, _Entry]] = []
    for record in raw.split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, oid, size = meta.decode("ascii").split()
        found.append(
            (
                name.decode("utf-8", "surrogateescape"),
                _Entry(mode, kind, oid, int(size) if size != "-" else 0),
            )
        )
    return found


def _path_layers(data: bytes) -> dict[str, tuple[str, str]]:
    """Each path layer of a squishfile: name -> (path as written, field).

    The same reading the parser does (``layers.<name>`` a string starting
    with ./, ../ or /, or a table with a string ``path``), done first so
    that the paths can be checked against the repository. A file the parser
    will refuse anyway may yield nothing.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return {}
    layers = doc.get("layers")
    if not isinstance(layers, dict):
        return {}
    found: dict[str, tuple[str, str]] = {}
    for name, value in layers.items():
        if isinstance(value, str) and value.startswith(("./", "../", "/")):
            found[name] = (value, _field("layers", name))
        elif isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
            found[name] = (value["path"], _field("layers", name, "path"))
    return {name: (raw, field) for name, (raw, field) in found.items() if "\0" not in raw}


def _field(*parts: str) -> str:
    # Spelled as squish.model.squishfile spells field paths: odd keys are quoted.
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p) for p in parts)


def _model(root: Path, repo_path: str, entry: _Entry) -> None:
    """Make ``repo_path`` exist (empty) under ``root``, as a directory or a file."""
    target = root / repo_path if repo_path else root
    if entry.kind == "tree":
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)


def _key(tag: str, identity: str) -> str:
    return hashlib.sha256(f"{tag}{identity}".encode("utf-8", "surrogateescape")).hexdigest()


def _repo_name(url: str) -> str:
    """The repository's directory name in a checkout: ``.../web.git`` -> ``web``."""
    rest = url.split("://", 1)[1].partition("/")[2] if "://" in url else url
    if "://" not in url and ":" in rest.split("/", 1)[0]:
        rest = rest.split(":", 1)[1]  # scp-like: git@host:org/web.git
    name = rest.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return name if name not in ("", ".", "..") else "repository"
