"""The API's streamed answers (NDJSON lines, logs), written until the client or server ends them.

:mod:`squish.daemon.api.routes` answers ``GET /v1/events``, ``POST
/v1/layers/pull`` and ``GET /v1/containers/{ref}/logs`` with a
:class:`Stream` whose pump writes the body; for logs the pump is
:func:`follow_log`, which reads the container's log files (rotated ones too)
as :mod:`squish.runtime.logs` keeps them. A stream runs until its pump
returns, the client goes away, or the server shuts down: the app holds one
:class:`Drain`, and :mod:`squish.daemon.api.server` closes it on shutdown,
because uvicorn would otherwise wait for open streams forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from squish.runtime.logs import LogFile, Stamper, kept_files

__all__ = ["Drain", "LogQuery", "Pump", "Stream", "Write", "follow_log"]

# The API's one logger, whichever of its modules logs: users filter on it.
logger = logging.getLogger("squish.daemon.api")

_POLL = 0.1  # how often a followed log is checked for new data
# How long after --until a follower waits for lines timed before it: a line's
# time is taken as its chunk arrives, a moment before the chunk is written.
_UNTIL_SLACK = 0.2

Write = Callable[[bytes], Awaitable[None]]
Pump = Callable[[Write], Awaitable[None]]


class Drain:
    """Ends every open stream when the server shuts down.

    Each stream waits on an Event of its own, made in the stream's event
    loop (the app itself is built outside any loop).
    """

    def __init__(self) -> None:
        self._closing = False
        self._waiters: set[anyio.Event] = set()

    def open(self) -> None:
        self._closing = False

    def close(self) -> None:
        self._closing = True
        for waiter in self._waiters:
            waiter.set()

    async def wait(self) -> None:
        if self._closing:
            return
        waiter = anyio.Event()
        self._waiters.add(waiter)
        try:
            await waiter.wait()
        finally:
            self._waiters.discard(waiter)


class Stream(Response):
    """A streamed body, written by ``pump`` until it returns.

    The pump runs next to two watchers: the client going away, and the
    server shutting down. Whichever comes first cancels the others, so a
    subscription opened by the pump is closed as soon as nobody listens.
    """

    def __init__(self, pump: Pump, media_type: str, drain: Drain) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-content-type-options": "nosniff"})
        self._pump = pump
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                try:
                    await self._pump(write)
                except OSError as exc:
                    # The client went away mid-write, or the log vanished.
                    logger.debug("stream ended: %s", exc)
                tg.cancel_scope.cancel()

            async def client_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            async def shutting_down() -> None:
                await self._drain.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(pump)
            tg.start_soon(client_gone)
            tg.start_soon(shutting_down)
        # Ends the chunked body cleanly; a no-op when the client is gone.
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass(frozen=True)
class LogQuery:
    """What a logs request asks for; times in ms, as the time index keeps them."""

    follow: bool = False
    tail: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    timestamps: bool = False


def _open_log(path: Path) -> LogFile | None:
    try:
        return LogFile(path)
    except FileNotFoundError:
        return None


def _newest_first(path: Path, query: LogQuery) -> list[tuple[LogFile, int, int]]:
    """The byte ranges of the log's files to send, newest file first.

    Blocking; run in a worker thread. The files are opened newest first: a
    rotation in between then shows up as a file seen twice (same inode),
    skipped, and never as a file missed. An older file is opened only when
    it can hold wanted lines: while every line of the newer one matched
    ``since`` (times only grow from file to file) and ``tail`` wants more.
    """
    ranges: list[tuple[LogFile, int, int]] = []
    seen: set[tuple[int, int]] = set()
    wanted = query.tail
    try:
        for candidate in reversed(kept_files(path)):
            file = _open_log(candidate)
            if file is None:
                if candidate == path:
                    continue  # a container that wrote nothing yet: older files may exist
                break
            if file.identity in seen:
                file.close()
                continue
            seen.add(file.identity)
            ranges.append((file, 0, 0))
            start, end = file.window(query.since_ms, query.until_ms)
            if wanted is not None:
                start, found = file.lines_back(start, end, wanted)
                wanted -= found
            ranges[-1] = (file, start, end)
            if start > 0 or wanted == 0:
                break
    except BaseException:
        for file, _, _ in ranges:
            file.close()
        raise
    return ranges


async def _send_range(
    file: LogFile, start: int, end: int, stamper: Stamper | None, write: Write
) -> None:
    while start < end:
        data = await anyio.to_thread.run_sync(file.read, start, end)
        if not data:
            return  # truncated under us
        await write(data if stamper is None else stamper.stamp(data, start, file))
        start += len(data)


async def follow_log(path: Path, query: LogQuery, write: Write) -> None:
    """Write the log's lines that ``query`` wants, then, with ``follow``, what is added.

    The whole kept log counts, rotated files too, oldest first. Following,
    the runtime rotates a log by renaming it and starting a new file, and a
    user may truncate it; both are noticed by comparing the file we hold with
    what the path names now. The rest of the old file is copied before the
    new one is opened, so no line written before the rotation is lost. With
    ``until_ms``, following ends at the first line after it, or once the clock
    has passed it (and its last lines have had time to arrive).
    """
    stamper = Stamper() if query.timestamps else None
    ranges = await anyio.to_thread.run_sync(_newest_first, path, query)
    current = ranges[0][0] if ranges and ranges[0][0].path == path else None
    position = 0
    try:
        for file, start, end in reversed(ranges):
            await _send_range(file, start, end, stamper, write)
            if file is current:
                position = end
        if current is not None and position < current.size:
            return  # ended by until before the end of the file
        while query.follow:
            past_until = (
                query.until_ms is not None
                and time.time() * 1000 > query.until_ms + _UNTIL_SLACK * 1000
            )
            await anyio.sleep(0 if past_until else _POLL)
            if current is None:
                current, position = await anyio.to_thread.run_sync(_open_log, path), 0
                if current is None:
                    if past_until:
                        return
                    continue
            position, done = await _send_new(current, position, query, stamper, write)
            if done or past_until:
                return
            try:
                now = await anyio.Path(path).stat()
            except FileNotFoundError:
                continue  # between rotation's rename and the new file
            if (now.st_dev, now.st_ino) != current.identity:
                # Rotated: whatever reached the old file after the copy above
                # and before the rename is still in it.
                position, done = await _send_new(current, position, query, stamper, write)
                current.close()
                current, position = await anyio.to_thread.run_sync(_open_log, path), 0
                if done:
                    return
            elif now.st_size < position:
                position = 0  # truncated in place
    finally:
        for file, _, _ in ranges:
            if file is not current:
                file.close()
        if current is not None:
            current.close()


async def _send_new(
    file: LogFile, position: int, query: LogQuery, stamper: Stamper | None, write: Write
) -> tuple[int, bool]:
    """Send what ``file`` holds past ``position``; the new position, and whether until is past."""
    size = await anyio.to_thread.run_sync(file.refresh)
    if size < position:
        return position, False  # truncated: the caller starts over
    start, end = await anyio.to_thread.run_sync(file.window, query.since_ms, query.until_ms)
    await _send_range(file, max(start, position), end, stamper, write)
    return max(end, position), end < size
