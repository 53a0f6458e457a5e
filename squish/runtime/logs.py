"""Container logs: a pipe drained into a size-bounded, rotated file, with times.

Called by ``BwrapRuntime`` (writing) and by the API's logs route (reading).
The container's stdout and stderr (and bwrap's and slirp4netns's own
complaints) share one pipe, so lines keep their order. The runtime drains it
into ``<name>.log``; when the file would grow past ``max_bytes`` it is
rotated to ``<name>.log.1`` (and so on, ``keep`` files in all), so a chatty
container can never fill the disk. Going through the daemon costs a copy,
but it is the only way to bound the size: a file handed to the container
directly could only ever grow.

The log file stays the raw byte stream (``cat`` reads it). When each line
arrived is kept beside it, in a small time index ``<file>.times`` that
rotates with its log (``c.log.1`` has ``c.log.1.times``): a 16-byte header
(a magic and the log file's inode, so a log is never read with another
file's index) and then 16-byte records ``(byte offset, time in ns)``, each
written just before the chunk it dates. A line's time is the time of the
chunk holding its first byte, so only chunks in which a line starts get a
record, and none within a millisecond of the previous record: a chatty
container costs at most one record per millisecond.

A log must never stop a container, nor cost the daemon without bound:

- Writes that fail (a full disk, a log directory gone or read-only) drop
  that output and count it; the pipe keeps being drained, so the container
  never blocks on it, and writing starts again by itself when it can (the
  file reopened if need be). One warning per log and episode goes to the
  daemon's log.
- Each log takes at most ``rate`` bytes a second (whole lines where it can):
  the rest of that second's output is dropped and counted.
- The pipe is read at most once per ``_TICK``: output gathers in the pipe
  meanwhile, so a container writing a line at a time costs the daemon one
  wakeup per tick rather than one per line; one writing faster than a pipe
  full per tick waits on the pipe, as it would on a slow terminal.

Dropped output is said in the log itself, on a line of its own where the
output resumes (``squish: 1234 bytes of output dropped: ...``), and counted
through ``LogCounter`` (the daemon's metrics).

The index is a help, never a requirement. A missing, truncated or garbled
index, or one of another file, degrades to "time unknown", and such a line
takes the nearest time known: that of the record before it (a line whose
record was lost), of the first record (lines written before the index
began), or, with no usable record, the log file's last modification. Writing
the index never fails a write of the log; an index that cannot be written
(a full disk) misses records meanwhile and goes on once it can.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import anyio

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3
DEFAULT_RATE = 1024 * 1024
"""Bytes a second each container may write into its log; 0: no limit."""
_CHUNK = 65536
_RECENT = 4096
# How often a busy pipe is read, and how much is taken each time at most.
_TICK = 0.01
_READS_PER_TICK = 16
# A rate limit episode ends after this long without drops (for the warning).
_RATE_QUIET = 60.0
# How often a log that cannot be opened, or an index that cannot be
# started, is tried again.
_RETRY_NS = 1_000_000_000

DropReason = Literal["rate", "error"]
DROP_REASONS: tuple[DropReason, ...] = ("rate", "error")
"""Why output was dropped: over the rate limit, or the write failed."""

log = logging.getLogger("squish.runtime.logs")


class LogCounter(Protocol):
    """Who counts what each container's log took and dropped (the daemon's metrics)."""

    def log_written(self, container: str, size: int) -> None: ...

    def log_dropped(self, container: str, size: int, reason: DropReason) -> None: ...


INDEX_SUFFIX = ".times"
_MAGIC = b"squish.t"
_HEADER = struct.Struct("<8sQ")  # magic, the log file's inode
_RECORD = struct.Struct("<QQ")  # byte offset in the log, time.time_ns()
_COALESCE_NS = 1_000_000
# Times outside these years are garbage, not a record.
_PLAUSIBLE_NS = (946_684_800 * 10**9, 4_102_444_800 * 10**9)


def index_path(log: Path) -> Path:
    """The time index kept beside the log file ``log``."""
    return log.with_name(log.name + INDEX_SUFFIX)


def kept_files(path: Path) -> list[Path]:
    """The files of the log ``path``, oldest first: ``path.N`` ... ``path.1``, then ``path``."""
    rotated: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            number = entry.name.removeprefix(path.name + ".")
            if entry.name != number and number.isdigit():
                rotated.append((int(number), entry))
    return [entry for _, entry in sorted(rotated, reverse=True)] + [path]


def remove_log(path: Path) -> None:
    """Remove the log ``path``: every kept file and its time index."""
    for kept in kept_files(path):
        for gone in (index_path(kept), kept):
            with contextlib.suppress(OSError):
                gone.unlink(missing_ok=True)


class _IndexWriter:
    """The append side of a time index; every failure just ends the index."""

    def __init__(self, path: Path, inode: int) -> None:
        self._last_ns = 0
        self._failed = False
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(self._fd).st_size
            header = os.pread(self._fd, _HEADER.size, 0)
            if size < _HEADER.size or header != _HEADER.pack(_MAGIC, inode):
                # Empty, or another file's index: start afresh.
                os.ftruncate(self._fd, 0)
                self._append(_HEADER.pack(_MAGIC, inode))
            elif size % _RECORD.size:
                # A record cut short (a crash, a full disk): drop it so the next
                # one lands on a record boundary.
                os.ftruncate(self._fd, size - size % _RECORD.size)
        except OSError:
            self.close()
            raise

    def note(self, offset: int, now_ns: int) -> None:
        if self._fd < 0:
            return
        self._last_ns = now_ns
        try:
            if self._failed:
                # The last record may have been cut short: back to a boundary.
                size = os.fstat(self._fd).st_size
                if size % _RECORD.size:
                    os.ftruncate(self._fd, size - size % _RECORD.size)
            self._append(_RECORD.pack(offset, now_ns))
        except OSError:
            # A full disk: this chunk's lines take the time of the record
            # before; the next chunk tries again.
            self._failed = True
        else:
            self._failed = False

    def due(self, now_ns: int) -> bool:
        """Whether a chunk arriving now needs a record of its own."""
        # abs: after the clock steps back, records go on (the reader flattens them).
        return self._fd >= 0 and abs(now_ns - self._last_ns) >= _COALESCE_NS

    def _append(self, data: bytes) -> None:
        if os.write(self._fd, data) != len(data):
            raise OSError("short write to the time index")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RotatingLog:
    """An append-only log file that rotates itself by size and dates its lines.

    ``write`` never raises for the file's sake: what cannot be written is
    dropped, counted (``counter``) and said in the log once it can be
    written again (see the module docstring).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        rate: int = DEFAULT_RATE,
        counter: LogCounter | None = None,
        name: str | None = None,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.rate = rate
        self.name = name if name is not None else path.name.removesuffix(".log")
        self._counter = counter
        self._clock = clock
        self._monotonic = monotonic
        self._fd = -1
        self._index: _IndexWriter | None = None
        self._size = 0
        self._at_line_start = True
        self._retry_ns = 0
        # The rate limit: what is left of the current second's budget.
        self._window_end = 0.0
        self._window_left = 0
        # Output dropped and not yet said in the log, and why.
        self._unsaid = 0
        self._unsaid_why = ""
        self._failing = False
        self._error = ""
        self._last_rate_drop = -_RATE_QUIET
        # The last few KiB written, to explain an exit without rereading the file.
        self.recent = bytearray()
        with contextlib.suppress(OSError):  # a full disk: the first write tries again
            path.parent.mkdir(parents=True, exist_ok=True)
        # The file and its index are made (or checked) now, and kept open
        # from the first write: a container that says nothing holds no file
        # open in the daemon (thousands of quiet ones are thousands of open
        # files fewer, and every spawn copies the daemon's table of them).
        if self._reopen(self._clock(), os.O_APPEND):
            self.close()
            self._retry_ns = 0

    def _reopen(self, now_ns: int, flags: int) -> bool:
        """Open the file (again); False when it cannot be, for now."""
        self._retry_ns = now_ns + _RETRY_NS
        try:
            self._open(flags)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.close()
            self._failed(exc)
            return False
        return True

    def _open(self, flags: int) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, 0o600)
        # Assume a line starts: one record too many costs 16 bytes, one too
        # few would give a line the time of an older chunk.
        self._at_line_start = True
        self._open_index()

    def _open_index(self) -> None:
        try:
            self._index = _IndexWriter(index_path(self.path), os.fstat(self._fd).st_ino)
        except OSError:
            self._index = None  # tried again later (a full disk)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.recent += data[-_RECENT:]
        del self.recent[:-_RECENT]
        kept = self._within_rate(data)
        if kept:
            self._put_saying_drops(kept)
        if len(kept) < len(data):
            # Counted after the kept part is written: its notice goes after it.
            why = f"over the log rate limit of {_size(self.rate)}/s"
            self._drop(len(data) - len(kept), "rate", why)

    def finish(self) -> None:
        """Say in the log what was dropped and not said yet (the writers are gone), and close."""
        if self._unsaid:
            self._put_saying_drops(b"")
        self.close()

    def _put_saying_drops(self, kept: bytes) -> None:
        if self._unsaid:
            why = self._unsaid_why
            notice = f"squish: {self._unsaid} bytes of output dropped: {why}\n".encode()
            said = self._unsaid
            if self._put((b"" if self._at_line_start else b"\n") + notice + kept, len(kept)):
                self._unsaid -= said
                if self._failing:
                    self._failing = False
                    log.info(
                        "container %s: its log is written again (%s)",
                        self.name,
                        notice.decode().strip(),
                    )
        else:
            self._put(kept, len(kept))

    def _within_rate(self, data: bytes) -> bytes:
        """What of ``data`` the rate limit lets through (a prefix); the rest is to be dropped."""
        if self.rate <= 0:
            return data
        now = self._monotonic()
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._window_left = self.rate
        if len(data) <= self._window_left:
            self._window_left -= len(data)
            return data
        # Whole lines where there is a line end within the budget; the rest
        # of this second's output goes, so the log resumes at a chunk start.
        cut = self._window_left
        newline = data.rfind(b"\n", 0, cut)
        if newline >= 0:
            cut = newline + 1
        self._window_left = 0
        if now - self._last_rate_drop >= _RATE_QUIET:
            log.warning(
                "container %s writes more than %s/s: the rest of each second's output is "
                "dropped (counted in squish_log_bytes_dropped_total, said in its log)",
                self.name,
                _size(self.rate),
            )
        self._last_rate_drop = now
        return data[:cut]

    def _put(self, data: bytes, counted: int) -> bool:
        """Append ``data`` (``counted`` bytes of it the container's); False if it failed.

        What could not be written is dropped and counted; a short write
        leaves the written part, and the rest is dropped.
        """
        written = 0
        now = self._clock()
        try:
            if self._fd < 0 and (now < self._retry_ns or not self._reopen(now, os.O_APPEND)):
                raise _NotOpen
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._date(data, now)
            view = memoryview(data)
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            self._failed(exc)
            self._drop(min(counted, len(data) - written), "error", self._error)
            return False
        except _NotOpen:
            self._drop(counted, "error", self._error)
            return False
        finally:
            self._size += written
            if written:
                self._at_line_start = data[written - 1] == 0x0A
        if self._counter is not None:
            self._counter.log_written(self.name, counted)
        return True

    def _date(self, data: bytes, now: int) -> None:
        """Write the index record for a chunk about to be appended, if it needs one."""
        if self._index is None:
            if now < self._retry_ns:
                return
            self._retry_ns = now + _RETRY_NS
            self._open_index()
            if self._index is None:
                return
        starts_line = self._at_line_start or data.find(b"\n", 0, len(data) - 1) >= 0
        if starts_line and self._index.due(now):
            # The record goes first: a crash between the two leaves a record
            # of nothing rather than a chunk dated by an older one. The real
            # end, not our count: the file may have been truncated under us.
            self._index.note(os.lseek(self._fd, 0, os.SEEK_END), now)

    def _failed(self, exc: OSError) -> None:
        self._error = exc.strerror or str(exc)
        if not self._failing:
            self._failing = True
            log.warning(
                "container %s: cannot write its log %s (%s): its output is dropped and counted "
                "(squish_log_bytes_dropped_total) until it can; the container goes on",
                self.name,
                self.path,
                exc.strerror or exc,
            )

    def _drop(self, size: int, reason: DropReason, why: str) -> None:
        if size <= 0:
            return
        self._unsaid += size
        self._unsaid_why = why
        if self._counter is not None:
            self._counter.log_dropped(self.name, size, reason)

    def _rotate(self) -> None:
        self.close()
        names = [self.path] + [
            self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.keep)
        ]
        for gone in (index_path(names[-1]), names[-1]):
            gone.unlink(missing_ok=True)
        for newer, older in reversed(list(itertools.pairwise(names))):
            # Each index moves before its log, so a reader opening the log by
            # name never finds the index of the next one in its place. (It
            # would notice by the inode anyway, and show no times rather than
            # wrong ones.) The log may have been deleted while open (rm to
            # free space): then there is nothing to keep.
            for source, target in ((index_path(newer), index_path(older)), (newer, older)):
                with contextlib.suppress(FileNotFoundError):
                    source.rename(target)
        self._open(os.O_APPEND | os.O_TRUNC)
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._index is not None:
            self._index.close()
            self._index = None


class _NotOpen(Exception):
    """The log file is not open, and not due to be tried again yet."""


def _size(size: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


async def drain(read_fd: int, log: RotatingLog) -> None:
    """Copy everything from ``read_fd`` into ``log`` until every writer is gone.

    Never fails for the log's sake (``RotatingLog.write`` drops what it
    cannot write), so the container's output never backs up on a full disk.
    """
    os.set_blocking(read_fd, False)
    try:
        while True:
            await anyio.wait_readable(read_fd)
            for _ in range(_READS_PER_TICK):
                try:
                    chunk = os.read(read_fd, _CHUNK)
                except BlockingIOError:
                    break
                if not chunk:
                    return
                log.write(chunk)
                if len(chunk) < _CHUNK:
                    break  # the pipe is empty
            # Let output gather before looking again: a chatty container
            # costs a wakeup per tick, not one per write.
            await anyio.sleep(_TICK)
    finally:
        os.close(read_fd)
        log.finish()


# -- reading -------------------------------------------------------------------


class _Records:
    """The usable records of one index, parsed as its bytes arrive."""

    def __init__(self, inode: int) -> None:
        self.inode = inode
        self.offsets: list[int] = []
        self.stamps: list[int] = []  # ms
        self._pending = b""
        self._valid: bool | None = None  # the header: not read yet, right, wrong

    def feed(self, data: bytes, size: int) -> None:
        """Take in the next bytes of the index; ``size`` is the log file's size."""
        self._pending += data
        if self._valid is None:
            if len(self._pending) < _HEADER.size:
                return  # the writer is still writing it
            self._valid = self._pending[: _HEADER.size] == _HEADER.pack(_MAGIC, self.inode)
            self._pending = self._pending[_HEADER.size :]
        if not self._valid:
            self._pending = b""
            return
        usable = len(self._pending) // _RECORD.size * _RECORD.size
        low, high = _PLAUSIBLE_NS
        for offset, stamp in _RECORD.iter_unpack(self._pending[:usable]):
            if offset > size or not low <= stamp < high:
                continue
            if self.offsets and offset < self.offsets[-1]:
                self.offsets.clear()
                self.stamps.clear()
            self.offsets.append(offset)
            self.stamps.append(max(stamp // 1_000_000, self.stamps[-1] if self.stamps else 0))
        self._pending = self._pending[usable:]


def parse_index(data: bytes, *, inode: int, size: int) -> tuple[list[int], list[int]]:
    """The usable records of an index: (offsets, times in ms), both non-decreasing.

    Everything doubtful is dropped rather than trusted: no header or another
    file's header (no records at all), a cut-off last record, records
    pointing past the end of the log or with an impossible time. Offsets
    going back mean the log was truncated in place, so only the records
    after that count. A clock stepping back is flattened: a record is never
    earlier than the one before.
    """
    records = _Records(inode)
    records.feed(data, size)
    return records.offsets, records.stamps


def format_ms(ms: int) -> str:
    """RFC 3339 in UTC to the millisecond, as ``-t`` shows it and ``--since`` takes it."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class LogFile:
    """One file of a log, held open with its time index, for reading.

    ``size`` is the end of what may be read: it is taken before the index is
    read, and every chunk's record is written before the chunk, so every
    byte below ``size`` has its record loaded. ``refresh`` moves it on.
    Blocking calls (small reads); the API runs them in a worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(self._fd)
        self.identity = (info.st_dev, info.st_ino)
        self.size = 0
        self._mtime_ms = 0
        self._index_fd: int | None = None
        self._index_read = 0
        self._records = _Records(info.st_ino)
        try:
            self.refresh()
        except OSError:
            self.close()
            raise

    def refresh(self) -> int:
        """Take in what was written since; returns the new ``size``."""
        info = os.fstat(self._fd)
        self.size = info.st_size
        self._mtime_ms = info.st_mtime_ns // 1_000_000
        if self._index_fd is None:
            with contextlib.suppress(OSError):
                self._index_fd = os.open(index_path(self.path), os.O_RDONLY | os.O_CLOEXEC)
        if self._index_fd is not None:
            try:
                while more := os.pread(self._index_fd, _CHUNK, self._index_read):
                    self._index_read += len(more)
                    self._records.feed(more, self.size)
            except OSError:
                pass  # what was read so far still counts
        return self.size

    def close(self) -> None:
        os.close(self._fd)
        if self._index_fd is not None:
            os.close(self._index_fd)
            self._index_fd = None

    def _points(self) -> tuple[list[int], list[int]]:
        # Lines before the first record were written before its chunk, and
        # with no record at all, before the file's last change: point 0 of
        # the list stands for offset 0 (see _offset).
        if not self._records.offsets:
            return [0], [self._mtime_ms]
        return self._records.offsets, self._records.stamps

    @staticmethod
    def _offset(offsets: list[int], point: int) -> int:
        return 0 if point == 0 else offsets[point]

    def time_at(self, offset: int) -> int:
        """The time (ms) of the line starting at ``offset``."""
        offsets, stamps = self._points()
        return stamps[max(bisect.bisect_right(offsets, offset) - 1, 0)]

    def window(self, since_ms: int | None, until_ms: int | None) -> tuple[int, int]:
        """The bytes ``[start, end)`` holding exactly the lines timed within since..until."""
        offsets, stamps = self._points()
        start, end = 0, self.size
        if since_ms is not None:
            first = bisect.bisect_left(stamps, since_ms)
            if first < len(offsets):
                start = self.line_start(self._offset(offsets, first))
            else:
                start = self.size
        if until_ms is not None:
            after = bisect.bisect_right(stamps, until_ms)
            if after < len(offsets):
                end = self.line_start(self._offset(offsets, after))
        return start, max(start, end)

    def line_start(self, offset: int) -> int:
        """The first line start at or after ``offset`` (``size`` if none)."""
        offset = min(offset, self.size)
        if offset == 0 or os.pread(self._fd, 1, offset - 1) == b"\n":
            return offset
        while offset < self.size:
            data = os.pread(self._fd, min(_CHUNK, self.size - offset), offset)
            if not data:
                break
            newline = data.find(b"\n")
            if newline >= 0:
                return offset + newline + 1
            offset += len(data)
        return self.size

    def lines_back(self, start: int, end: int, count: int) -> tuple[int, int]:
        """Where the last ``count`` lines of ``[start, end)`` begin, and how many there are.

        ``end`` is a line start (or the end of the file, maybe after a line
        still being written).
        """
        if count <= 0 or end <= start:
            return end, 0
        position = end
        data = b""
        # One more newline than lines wanted: the last line normally ends with one.
        while position > start and data.count(b"\n") <= count:
            step = min(_CHUNK, position - start)
            position -= step
            data = os.pread(self._fd, step, position) + data
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # what follows the last newline: nothing
        kept = lines[-count:]
        length = sum(len(line) + 1 for line in kept) - (0 if data.endswith(b"\n") else 1)
        return end - length, len(kept)

    def read(self, start: int, end: int) -> bytes:
        """Up to one chunk of ``[start, end)``."""
        if end <= start:
            return b""
        return os.pread(self._fd, min(_CHUNK, end - start), start)


class Stamper:
    """Puts each line's time in front of it, across the chunks of a stream."""

    def __init__(self) -> None:
        self._at_line_start = True
        self._cached = (-1, "")

    def stamp(self, data: bytes, start: int, file: LogFile) -> bytes:
        """``data`` (read from ``file`` at ``start``) with ``TIME `` before each line."""
        if not data:
            return data
        pieces: list[bytes] = []
        position = 0
        while position < len(data):
            if self._at_line_start:
                pieces.append(self._prefix(file.time_at(start + position)))
            newline = data.find(b"\n", position)
            stop = len(data) if newline < 0 else newline + 1
            pieces.append(data[position:stop])
            self._at_line_start = newline >= 0
            position = stop
        return b"".join(pieces)

    def _prefix(self, ms: int) -> bytes:
        if self._cached[0] != ms:
            self._cached = (ms, format_ms(ms) + " ")
        return self._cached[1].encode()
