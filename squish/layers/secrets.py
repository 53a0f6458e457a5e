"""Node secrets: small values (credentials) kept by the daemon, given to containers by name.

``squish secret create NAME FILE`` stores a value here (``STATE/secrets``,
0700; each value a file of its own, 0600, written to a temporary file and
renamed into place). A squishfile names a secret, never holds it
(``[secrets] db_password = "pg-password"``); the runtime copies the value
into a tmpfs of the container at start (``/run/secrets/KEY``).

Nothing here ever puts a value in a message: errors name the secret. A
value's ``version`` (its file's inode and change time) changes whenever it
is replaced, which is how the reconciler knows to replace the containers
that use it; it is not derived from the value, so it tells nothing of it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from squish.errors import LayerError, SecretNotFound
from squish.layers.cache import checked_name, entry_names

MAX_SECRET_BYTES = 512 << 10
"""A value is at most 512 KiB."""


@dataclass(frozen=True)
class Secret:
    name: str
    path: Path
    created_at: float
    version: str


class Secrets:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, name: str) -> Path:
        return self.root / checked_name("secret", name, longest=128)

    def create(self, name: str, value: bytes) -> Secret:
        """Store ``value`` as secret ``name``, replacing any earlier value."""
        target = self._file(name)
        if len(value) > MAX_SECRET_BYTES:
            raise LayerError(
                f"secret {name}: the value is {len(value)} bytes; at most {MAX_SECRET_BYTES} "
                "(512 KiB)"
            )
        temporary = self.root / f".{name}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.root.chmod(0o700)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                written = 0
                while written < len(value):
                    written += os.write(fd, value[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            temporary.rename(target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise LayerError(f"cannot store secret {name}: {exc.strerror or exc}") from exc
        return self.get(name)

    def get(self, name: str) -> Secret:
        path = self._file(name)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise SecretNotFound(
                f"no secret {name!r}; squish secret create {name} FILE makes it"
            ) from None
        except OSError as exc:
            raise LayerError(f"cannot read secret {name}: {exc.strerror or exc}") from exc
        return Secret(name, path, info.st_mtime, f"{info.st_ino}:{info.st_ctime_ns}")

    def version(self, name: str) -> str | None:
        """What changes when ``name``'s value is replaced; None if there is no such secret."""
        try:
            return self.get(name).version
        except (SecretNotFound, LayerError):
            return None

    def list(self) -> list[Secret]:
        found = []
        for name in entry_names(self.root):
            try:
                found.append(self.get(name))
            except (SecretNotFound, LayerError):
                continue  # not a secret (a stray name)
        return found

    def remove(self, name: str) -> None:
        path = self._file(name)
        self.get(name)
        try:
            path.unlink()
        except OSError as exc:
            raise LayerError(f"cannot remove secret {name}: {exc.strerror or exc}") from exc
