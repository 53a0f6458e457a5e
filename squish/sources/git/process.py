"""Running git on a git source's bare clone: safely, within a timeout and limits.

Used by the git source (``squish.sources.git.source``) and its revision
reader (``revision``). Every command gets the same safe configuration (no
hooks, no ``ext::``, no submodules, fsck on fetch), an environment without
the daemon's git variables, the URL's credentials through git's own
mechanisms (never argv, never disk) and redacted from everything shown,
its own process group (killed whole on a timeout, a limit or a cancelled
sync), and one-line errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote

from squish.errors import SquishError

log = logging.getLogger("squish.sources.git")

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
_POLL = 0.05  # seconds between checks on a running git (timeout, limits, cancel)
MAX_LISTING = 256 << 20  # output of one ls-tree (256 MiB); beyond it a tree is unreasonable
_LINE = 300  # characters of git's message kept in an error


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***``; safe to show and log.

    A password is always hidden (``https://user:***@host/x``); a user name
    alone is hidden on http(s) and ftp(s), where it is usually a token
    (``https://***@github.com/x``), and kept for ssh and git, where it is
    ``git``.
    """
    return Credentials.of(url).redacted


@dataclass(frozen=True)
class Credentials:
    redacted: str
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, url: str) -> Credentials:
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


class SyncFailed(SquishError):
    """The sync as a whole failed; the previous snapshot stays.

    ``killed``: git was stopped by squish (timeout, a limit), possibly
    leaving lock files and temporary packs behind.
    """

    def __init__(self, message: str, *, killed: bool = False) -> None:
        super().__init__(message)
        self.killed = killed


class Cancelled(Exception):
    """The sync was cancelled (the daemon is stopping); record nothing."""


class Attempt:
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
            kill_group(process)

    def discard(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(process)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            processes = list(self._processes)
        for process in processes:
            kill_group(process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    # git runs in a session of its own: the whole group goes, helpers
    # (remote-http, upload-pack, ssh) included.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class Git:
    """Runs git on the bare clone, safely, with a timeout; one-line errors."""

    def __init__(self, repo: Path, url: str, credentials: Credentials, timeout: float) -> None:
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
        attempt: Attempt,
        args: Sequence[str],
        *,
        what: str,
        stdout: IO[bytes] | None = None,
        stdin: IO[bytes] | None = None,
        max_output: int = MAX_LISTING,
        check: Callable[[], str | None] | None = None,
        in_repo: bool = True,
    ) -> bytes:
        """Run ``git args``; its stdout, or b"" when written to ``stdout``.

        ``check`` is polled while git runs and may return why to stop it (a
        size limit); so are the timeout, ``max_output`` and cancellation.
        Raises ``SyncFailed`` saying ``what`` failed, in one line.
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
                raise SyncFailed(f"{what}: cannot run git: {exc.strerror or exc}") from exc
            attempt.add(process)
            try:
                stopped = self._wait(attempt, process, out, max_output, check)
            finally:
                attempt.discard(process)
                if process.poll() is None:
                    kill_group(process)
                    process.wait()
            if attempt.cancelled:
                raise Cancelled
            if stopped is not None:
                raise SyncFailed(f"{what}: {stopped}", killed=True)
            if process.returncode != 0:
                err.seek(0)
                message = self._one_line(err.read(64 * 1024), process.returncode)
                raise SyncFailed(f"{what}: {message}")
            if stdout is not None:
                return b""
            out.seek(0)
            return out.read()

    def _wait(
        self,
        attempt: Attempt,
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
