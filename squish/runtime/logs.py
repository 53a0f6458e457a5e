"""Container logs: a pipe drained into a size-bounded, rotated file.

Called by ``BwrapRuntime``. The container's stdout and stderr (and bwrap's
and slirp4netns's own complaints) share one pipe, so lines keep their order.
The runtime drains it into ``<name>.log``; when the file would grow past
``max_bytes`` it is rotated to ``<name>.log.1`` (and so on, ``keep`` files in
all), so a chatty container can never fill the disk. Going through the
daemon costs a copy, but it is the only way to bound the size: a file
handed to the container directly could only ever grow.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3
_CHUNK = 65536
_RECENT = 4096


class RotatingLog:
    """An append-only log file that rotates itself by size."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP):
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        # The last few KiB written, to explain an exit without rereading the file.
        self.recent = bytearray()

    def write(self, data: bytes) -> None:
        self.recent += data[-_RECENT:]
        del self.recent[:-_RECENT]
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        os.write(self._fd, data)
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if index == self.keep - 1:
                older.unlink(missing_ok=True)
            if index > 1:
                newer = self.path.with_name(f"{self.path.name}.{index - 1}")
                if newer.exists():
                    newer.rename(older)
        # The file may have been deleted while open (rm to free space): then
        # there is nothing to keep, and the new file starts afresh.
        if self.keep > 1 and self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_TRUNC, 0o600
        )
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def drain(read_fd: int, log: RotatingLog) -> None:
    """Copy everything from ``read_fd`` into ``log`` until every writer is gone."""
    os.set_blocking(read_fd, False)
    try:
        while True:
            await anyio.wait_readable(read_fd)
            try:
                chunk = os.read(read_fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                return
            log.write(chunk)
    finally:
        os.close(read_fd)
        log.close()
