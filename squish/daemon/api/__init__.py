"""The daemon's JSON API: HTTP on a unix socket, in front of a ``ControlPlane``.

The daemon builds the app with :func:`make_app` around its reconciler and runs
it with :func:`serve` inside its own task group; :mod:`squish.cli.client` (and so
the ``squish`` command) is the other end. The API only translates: a request
becomes one call on :class:`~squish.daemon.control.ControlPlane`, its result becomes
JSON, and a :class:`~squish.errors.SquishError` becomes ``{"error": "<one
line>"}`` with a status saying whose fault it was:

    400  ManifestError, LayerError, a malformed request
    404  ContainerNotFound (a container the daemon does not know), NoSuchSource, no such route
    409  RuntimeFailure, PortInUse (the request was fine; the host said no),
         AmbiguousName (with the candidates), SourceError (no git source to sync,
         a delete the prune guard holds)
    500  anything else (logged here with its traceback; the body has one line)

Routes (all under ``/v1``; the shapes are :mod:`squish.api_schema`'s, and
``GET /v1/openapi.json`` describes them all)::

    GET    /status                      DaemonStatus
    GET    /containers                  [Container]
    POST   /containers                  CreateRequest -> Container
    GET    /containers/{ref}            ContainerDetail (inspect)
    POST   /containers/{ref}/stop       Container
    POST   /containers/{ref}/start      StartRequest (optional) -> Container
    DELETE /containers/{ref}            Container (as it was)
    GET    /containers/{ref}/logs       ?follow=1&tail=N&since=T&until=T&timestamps=1 (T: Unix
                                        seconds), text/plain stream; with timestamps each line
                                        starts "2026-12-01T10:00:00.123Z "
    GET    /events                      x-ndjson stream of Event
    GET    /layers                      [LayerInfo]
    POST   /layers/pull                 PullRequest -> x-ndjson PullLine
    PUT    /layers/{name}/{version}     ?sha256=&source=; the body is the archive
    DELETE /layers/{name}/{version}     LayerInfo (409 while used)
    POST   /layers/gc                   GcResult
    GET    /sources                     [SourceStatus]
    POST   /sources/sync                SyncRequest (optional) -> [SourceStatus]
    GET    /openapi.json                the OpenAPI document

``{ref}`` is a container's name or a unique prefix of its id; an ambiguous
prefix answers 409 with the ``candidates``.

Only the daemon's own user may use the socket: its mode is 0600, and every
connection's peer uid (``SO_PEERCRED``, the kernel's word on who connected)
is checked too, so a mode loosened by hand lets no one else in. A connection
from another uid gets 403 for each request, and one warning in the log.

Streams (logs with follow, events) run until the client goes away or the
server shuts down; :func:`serve` ends them itself on shutdown, because uvicorn
would otherwise wait for them forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import json
import logging
import math
import os
import re
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from squish import __version__
from squish import api_schema as schema
from squish.daemon.control import ControlPlane
from squish.daemon.layer_admin import LayerAdmin
from squish.daemon.openapi import (
    NDJSON,
    OCTETS,
    TEXT,
    BadRequest,
    Operation,
    Param,
    document,
    validate,
)
from squish.daemon.source_admin import SourceAdmin
from squish.errors import (
    AmbiguousName,
    ContainerNotFound,
    LayerError,
    ManifestError,
    NoSuchSource,
    RuntimeFailure,
    SourceError,
    SquishError,
)
from squish.layers import Limits
from squish.layers.download import write
from squish.runtime.logs import LogFile, Stamper, kept_files

__all__ = ["check_socket", "make_app", "serve", "serve_tcp"]

logger = logging.getLogger(__name__)

# The same rule the manifest applies to file names: the name becomes a file,
# a hostname and a metrics label.
_NAME = re.compile(schema.NAME_PATTERN)
_DIGEST = re.compile(r"[0-9a-f]{64}")
_DEFAULT_TIMEOUT = 30.0
_MAX_TIMEOUT = 3600.0
_MAX_BODY = 4 * 1024 * 1024
_POLL = 0.1  # how often a followed log is checked for new data
# How long after --until a follower waits for lines timed before it: a line's
# time is taken as its chunk arrives, a moment before the chunk is written.
_UNTIL_SLACK = 0.2
_LATEST = 95_617_584_000  # 5000-01-01, in Unix seconds
# How long uvicorn lets plain requests (a create waiting for its container)
# finish at shutdown before cancelling them; streams are ended at once.
_GRACE = 5
# How long a client may take to send a request's headers (from connecting,
# or from the first byte of a next request on a kept-alive connection), and
# how long an idle kept-alive connection stays open.
HEADER_TIMEOUT = 5.0
_KEEP_ALIVE = 5

T = TypeVar("T")
Write = Callable[[bytes], Awaitable[None]]
Pump = Callable[[Write], Awaitable[None]]


# -- errors -----------------------------------------------------------------


def _status_for(exc: Exception) -> int:
    # ContainerNotFound is a RuntimeFailure, so it is checked first.
    if isinstance(exc, ContainerNotFound | NoSuchSource):
        return 404
    if isinstance(exc, SourceError):
        return 409
    if isinstance(exc, ManifestError | LayerError | BadRequest):
        return 400
    if isinstance(exc, RuntimeFailure):
        return 409
    return 500


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def _json(data: Any, status: int = 200) -> Response:
    # default=str: status dicts may hold paths or other plain values.
    body = json.dumps(data, default=str).encode()
    return Response(body, status_code=status, media_type="application/json")


def _error(message: str, status: int, **more: Any) -> Response:
    return _json({"error": _one_line(message), **more}, status)


Endpoint = Callable[[Request], Awaitable[Response]]


def _handled(endpoint: Endpoint) -> Endpoint:
    """Turn every exception of ``endpoint`` into a one-line JSON error.

    Done here rather than with Starlette exception handlers: its handler for
    ``Exception`` re-raises after answering (so the server logs the error
    again and test transports raise it).
    """

    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPException:
            raise  # answered by _http_error
        except AmbiguousName as exc:
            return _error(str(exc), 409, candidates=exc.candidates)
        except SquishError as exc:
            status = _status_for(exc)
            if status == 500:
                logger.error("%s %s: %s", request.method, request.url.path, exc)
            return _error(str(exc), status)
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error(f"internal error in the daemon: {type(exc).__name__}: {exc}", 500)

    return wrapper


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer in JSON like everything else."""
    if isinstance(exc, HTTPException):
        return _error(exc.detail or "request failed", exc.status_code)
    return _error(f"internal error in the daemon: {type(exc).__name__}", 500)


# -- request parsing --------------------------------------------------------


def _name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadRequest(
            f"{what} must be letters, digits, '_', '.' and '-', starting with a letter or "
            f"digit, at most 128 of them, got {value!r:.80}"
        )
    return value


def _timeout(value: object) -> float:
    # bool is an int to Python, never a timeout.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"timeout must be a number of seconds, got {value!r}")
    if not 0 < value <= _MAX_TIMEOUT:
        raise BadRequest(f"timeout must be between 0 and {_MAX_TIMEOUT:g} seconds, got {value}")
    return float(value)


async def _read_json(request: Request, *, optional: bool = False) -> object:
    """The request's JSON body (``{}`` when ``optional`` and empty), size-capped."""
    size = request.headers.get("content-length", "0")
    if size.isdigit() and int(size) > _MAX_BODY:
        raise BadRequest(f"the request body is larger than {_MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            raise BadRequest(f"the request body is larger than {_MAX_BODY} bytes")
    if not raw.strip() and optional:
        return {}
    try:
        data: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadRequest(f"the request body is not usable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


async def _body(request: Request, shape: type[T], *, optional: bool = False) -> T:
    return validate(shape, await _read_json(request, optional=optional))


def _flag(request: Request, key: str) -> bool:
    value = request.query_params.get(key, "0").lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"query parameter {key} must be 1 or 0, got {value!r}")


def _count(request: Request, key: str) -> int | None:
    value = request.query_params.get(key)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest(f"query parameter {key} must be a whole number, got {value!r}")
    return int(value)


# -- streams ----------------------------------------------------------------


class _Drain:
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


class _Stream(Response):
    """A streamed body, written by ``pump`` until it returns.

    The pump runs next to two watchers: the client going away, and the
    server shutting down. Whichever comes first cancels the others, so a
    subscription opened by the pump is closed as soon as nobody listens.
    """

    def __init__(self, pump: Pump, media_type: str, drain: _Drain) -> None:
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
class _LogQuery:
    """What a logs request asks for; times in ms, as the time index keeps them."""

    follow: bool = False
    tail: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    timestamps: bool = False


def _moment(request: Request, key: str) -> int | None:
    """A query parameter in Unix seconds, as ms (a line timed in that ms matches)."""
    value = request.query_params.get(key)
    if value is None or value == "":
        return None
    # Decimal, not float: 1796119200.123 s is exactly ms 1796119200123, where
    # a float product may fall just below it and miss the line of that ms.
    # Bounded too: the year 5000 is far enough, and 1e999999999 s would make
    # a billion-digit integer.
    try:
        seconds = decimal.Decimal(value)
        usable = seconds.is_finite() and abs(seconds) <= _LATEST
    except decimal.DecimalException:
        usable = False
    if not usable:
        raise BadRequest(f"query parameter {key} must be a Unix time in seconds, got {value!r}")
    return math.floor(seconds * 1000)


def _open_log(path: Path) -> LogFile | None:
    try:
        return LogFile(path)
    except FileNotFoundError:
        return None


def _newest_first(path: Path, query: _LogQuery) -> list[tuple[LogFile, int, int]]:
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


async def _follow_log(path: Path, query: _LogQuery, write: Write) -> None:
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
    file: LogFile, position: int, query: _LogQuery, stamper: Stamper | None, write: Write
) -> tuple[int, bool]:
    """Send what ``file`` holds past ``position``; the new position, and whether until is past."""
    size = await anyio.to_thread.run_sync(file.refresh)
    if size < position:
        return position, False  # truncated: the caller starts over
    start, end = await anyio.to_thread.run_sync(file.window, query.since_ms, query.until_ms)
    await _send_range(file, max(start, position), end, stamper, write)
    return max(end, position), end < size


# -- routes -----------------------------------------------------------------


def make_app(
    control: ControlPlane, layers: LayerAdmin | None = None, sources: SourceAdmin | None = None
) -> Starlette:
    """The API app serving ``control`` (and the layer and source routes, if given)."""
    drain = _Drain()
    operations = _container_operations(control, drain)
    if layers is not None:
        operations += _layer_operations(layers, drain)
    if sources is not None:
        operations += _source_operations(sources)

    async def openapi(request: Request) -> Response:
        return _json(spec)

    operations.append(Operation("GET", "/v1/openapi.json", "this document", openapi, errors=()))
    spec = document(operations, version=__version__)
    app = Starlette(
        routes=[Route(op.path, _handled(op.endpoint), methods=[op.method]) for op in operations],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.drain = drain
    app.state.openapi = spec
    return app


def _timeout_of(value: float | None) -> float:
    return _timeout(_DEFAULT_TIMEOUT if value is None else value)


def _container_operations(control: ControlPlane, drain: _Drain) -> list[Operation]:
    def ref_of(request: Request) -> str:
        return _name(request.path_params["ref"], "container name or id")

    async def status(request: Request) -> Response:
        return _json(control.status())

    async def list_containers(request: Request) -> Response:
        return _json(control.containers())

    async def create(request: Request) -> Response:
        body = await _body(request, schema.CreateRequest)
        name = _name(body["name"])
        timeout = _timeout_of(body.get("timeout"))
        data = body["manifest"].encode()
        if body.get("wait", True):
            return _json(await control.create(name, data, timeout=timeout))
        return _json(await control.apply(name, data))

    async def inspect(request: Request) -> Response:
        return _json(control.inspect(ref_of(request)))

    async def stop(request: Request) -> Response:
        return _json(await control.stop(ref_of(request)))

    async def start(request: Request) -> Response:
        ref = ref_of(request)
        body = await _body(request, schema.StartRequest, optional=True)
        return _json(await control.start(ref, timeout=_timeout_of(body.get("timeout"))))

    async def delete(request: Request) -> Response:
        return _json(await control.delete(ref_of(request)))

    async def logs(request: Request) -> Response:
        query = _LogQuery(
            follow=_flag(request, "follow"),
            tail=_count(request, "tail"),
            since_ms=_moment(request, "since"),
            until_ms=_moment(request, "until"),
            timestamps=_flag(request, "timestamps"),
        )
        path = control.log_path(ref_of(request))

        async def pump(write: Write) -> None:
            await _follow_log(path, query, write)

        return _Stream(pump, "text/plain; charset=utf-8", drain)

    async def events(request: Request) -> Response:
        async def pump(write: Write) -> None:
            with control.subscribe() as subscription:
                async for event in subscription:
                    line = json.dumps(event.to_json(), default=str) + "\n"
                    await write(line.encode())

        return _Stream(pump, NDJSON, drain)

    by_ref = (400, 404, 409)
    return [
        Operation("GET", "/v1/status", "the daemon's status", status, schema.DaemonStatus),
        Operation(
            "GET", "/v1/containers", "every container", list_containers, list[schema.Container]
        ),
        Operation(
            "POST",
            "/v1/containers",
            "store a squishfile; with wait, until its container runs or fails",
            create,
            schema.Container,
            body=schema.CreateRequest,
            errors=(400, 409),
        ),
        Operation(
            "GET",
            "/v1/containers/{ref}",
            "everything about one container",
            inspect,
            schema.ContainerDetail,
            errors=by_ref,
        ),
        Operation(
            "DELETE",
            "/v1/containers/{ref}",
            "remove a container's squishfile; its container stops",
            delete,
            schema.Container,
            errors=by_ref,
        ),
        Operation(
            "POST",
            "/v1/containers/{ref}/stop",
            "stop a container; it stays stopped until start or an edit",
            stop,
            schema.Container,
            errors=by_ref,
        ),
        Operation(
            "POST",
            "/v1/containers/{ref}/start",
            "start a stopped container again",
            start,
            schema.Container,
            body=schema.StartRequest,
            body_required=False,
            errors=by_ref,
        ),
        Operation(
            "GET",
            "/v1/containers/{ref}/logs",
            "the container's log",
            logs,
            media=TEXT,
            params=(
                Param("follow", "boolean", "keep sending what it writes"),
                Param("tail", "integer", "start with the last N lines"),
                Param("since", "number", "only lines that arrived at or after this Unix time"),
                Param("until", "number", "only lines that arrived at or before this Unix time"),
                Param("timestamps", "boolean", "start each line with the time it arrived"),
            ),
            errors=by_ref,
        ),
        Operation(
            "GET", "/v1/events", "every event from now on", events, schema.Event, media=NDJSON
        ),
    ]


def _layer_operations(layers: LayerAdmin, drain: _Drain) -> list[Operation]:
    def layer_name(request: Request) -> tuple[str, str]:
        name, version = request.path_params["name"], request.path_params["version"]
        return _name(name, "layer name"), _name(version, "version")

    async def list_layers(request: Request) -> Response:
        return _json([info.to_json() for info in await layers.entries()])

    async def pull(request: Request) -> Response:
        body = await _body(request, schema.PullRequest)
        name = _name(body["name"], "layer name")
        version = _name(body["version"], "version")
        sha256 = _sha256(body.get("sha256"))

        async def pump(write: Write) -> None:
            send, receive = anyio.create_memory_object_stream[schema.PullLine](math.inf)

            def progress(done: int, total: int | None) -> None:
                # Called in the download's worker thread.
                item: schema.PullLine = {"progress": {"done": done, "total": total}}
                anyio.from_thread.run_sync(send.send_nowait, item)

            async def run() -> None:
                with send:
                    try:
                        info = await layers.pull(name, version, sha256=sha256, progress=progress)
                        send.send_nowait({"layer": info.to_json()})
                    except SquishError as exc:
                        send.send_nowait({"error": _one_line(str(exc))})

            async with receive, anyio.create_task_group() as tg:
                tg.start_soon(run)
                async for item in receive:
                    await write((json.dumps(item) + "\n").encode())

        return _Stream(pump, NDJSON, drain)

    async def import_layer(request: Request) -> Response:
        name, version = layer_name(request)
        sha256 = _sha256(request.query_params.get("sha256") or None)
        source = request.query_params.get("source") or "upload"
        limit = Limits().total_bytes  # no archive bigger than what one may unpack to
        received = 0
        with layers.store.cache.download_file(prefix=".import-") as file:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise LayerError(f"{source}: an archive larger than {limit} bytes is refused")
                write(file, chunk)  # a full disk is a LayerError, not a 500
            info = await layers.import_file(name, version, file, source=source, sha256=sha256)
        return _json(info.to_json())

    async def remove(request: Request) -> Response:
        name, version = layer_name(request)
        return _json((await layers.remove(name, version)).to_json())

    async def gc(request: Request) -> Response:
        result: schema.GcResult = {"removed": [info.to_json() for info in await layers.gc()]}
        return _json(result)

    return [
        Operation(
            "GET", "/v1/layers", "every layer in the cache", list_layers, list[schema.LayerInfo]
        ),
        Operation(
            "POST",
            "/v1/layers/pull",
            "download a layer: progress lines, then the layer or the error",
            pull,
            schema.PullLine,
            body=schema.PullRequest,
            media=NDJSON,
        ),
        Operation(
            "POST", "/v1/layers/gc", "remove unused layers", gc, schema.GcResult, errors=(409,)
        ),
        Operation(
            "PUT",
            "/v1/layers/{name}/{version}",
            "import an archive (the body) as a layer",
            import_layer,
            schema.LayerInfo,
            body=bytes,
            body_media=OCTETS,
            params=(
                Param("sha256", "string", "the archive's expected sha256"),
                Param("source", "string", "where the archive came from, for messages"),
            ),
        ),
        Operation(
            "DELETE",
            "/v1/layers/{name}/{version}",
            "remove a layer (refused while used)",
            remove,
            schema.LayerInfo,
            errors=(400, 404, 409),
        ),
    ]


def _source_operations(sources: SourceAdmin) -> list[Operation]:
    async def list_sources(request: Request) -> Response:
        return _json([asdict(status) for status in sources.statuses()])

    async def sync(request: Request) -> Response:
        body = await _body(request, schema.SyncRequest, optional=True)
        name = body.get("name")
        if name is not None:
            name = _name(name, "source name")
        return _json([asdict(status) for status in await sources.sync(name)])

    return [
        Operation(
            "GET",
            "/v1/sources",
            "every source's status",
            list_sources,
            list[schema.SourceStatus],
            errors=(),
        ),
        Operation(
            "POST",
            "/v1/sources/sync",
            "fetch the git sources (or one) now",
            sync,
            list[schema.SourceStatus],
            body=schema.SyncRequest,
            body_required=False,
            errors=(400, 404, 409),
        ),
    ]


def _sha256(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DIGEST.fullmatch(value.lower()):
        raise BadRequest(f"sha256 must be 64 hex digits, got {value!r:.80}")
    return value.lower()


# -- serving ----------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# A unix socket's path is at most 108 bytes, its terminating NUL included.
_MAX_SOCKET_PATH = 107
# How long a connection to a socket found in the way may take before it is
# taken for a live daemon too busy (or stopped) to accept.
_PROBE_TIMEOUT = 2.0


def check_socket(path: Path) -> None:
    """Refuse a socket path no daemon can listen on, or one that a live daemon answers on.

    The daemon calls it before it starts anything; :func:`serve` checks again
    when it listens. Removes nothing: a leftover socket is replaced by ``serve``.
    """
    _stale_socket(path)


def _stale_socket(path: Path) -> int | None:
    """The inode of a dead daemon's socket at ``path``, to replace; None when there is none.

    Only a socket that refuses connections is dead: one that accepts, times
    out or cannot be tried (another user's) belongs to someone alive, and is
    never removed.
    """
    size = len(os.fsencode(path))
    if size > _MAX_SOCKET_PATH:
        raise SquishError(
            f"socket path {path} is {size} bytes, longer than the {_MAX_SOCKET_PATH} a unix "
            "socket may have; choose a shorter --socket"
        )
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(info.st_mode):
        raise SquishError(f"{path} exists and is not a socket; remove it or choose another")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return info.st_ino  # bound, nobody listening: what a killed daemon leaves
        except FileNotFoundError:
            return None  # removed meanwhile
        except TimeoutError:
            raise SquishError(
                f"a squish daemon on {path} does not accept connections (stopped or busy); "
                "stop it or use another --socket"
            ) from None
        except OSError as exc:
            raise SquishError(f"cannot use {path}: {exc.strerror or exc}") from exc
    raise SquishError(f"another squish daemon already listens on {path}; use another --socket")


class _HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn times out only an idle kept-alive connection: a client that
    connects and sends nothing, or sends its headers a byte at a time, would
    hold a connection (and its fd) forever. Here the clock starts when the
    connection is made, or when the first bytes of a later request arrive,
    and stops once h11 has the whole request head; the body is the app's.
    """

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # a request begun and not complete (no-op if armed)
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()


def _listen(path: Path) -> tuple[socket.socket, int]:
    """A listening unix socket at ``path`` (and its inode), mode 0600 before anyone can connect.

    A leftover socket of a dead daemon is replaced; a live one is refused.
    The mode is set between bind and listen: until listen, connecting fails,
    so no other user ever gets in through the default (umask) permissions.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stale = _stale_socket(path)
    if stale is not None:
        # Only the very socket found dead: another daemon starting at the
        # same moment may have replaced it with its live one since.
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_ino == stale:
                path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)
        sock.listen(128)
        sock.setblocking(False)
        identity = path.lstat().st_ino
    except OSError as exc:
        sock.close()
        raise SquishError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock, identity


# struct ucred, what SO_PEERCRED gives: pid, uid, gid.
_UCRED = struct.Struct("3i")


def peer_refusal(peer_uid: int, owner: int) -> str | None:
    """Why a client running as ``peer_uid`` may not use ``owner``'s daemon; None if it may."""
    if peer_uid == owner:
        return None
    return (
        f"uid {peer_uid} may not use this squish daemon: only the user running it (uid {owner}) may"
    )


def _owner_only(owner: int, where: str) -> type[_HeaderTimeoutProtocol]:
    """uvicorn's HTTP/1.1 protocol, refusing every request of a connection from another uid.

    The peer is checked once, when the connection is made; a refused one is
    served by an app that answers 403 to everything, swapped in the way
    uvicorn swaps in its own for a 503, so that reading the request and
    framing the answer stay uvicorn's.
    """

    class OwnerOnly(_HeaderTimeoutProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            pid, uid, _ = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            reason = peer_refusal(uid, owner)
            if reason is not None:
                logger.warning("refused a connection on %s from pid %d: %s", where, pid, reason)
                refusal = _error(reason, 403)

                async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
                    await refusal(scope, receive, send)

                self.app = refuse

    return OwnerOnly


async def serve(
    app: Starlette,
    socket_path: Path,
    *,
    owner: int | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the unix socket ``socket_path`` until cancelled.

    Call it with ``await task_group.start(serve, app, path)``: that returns
    once the socket accepts connections. Cancelling the task shuts uvicorn
    down gracefully (open streams are ended, requests in flight get a few
    seconds) and removes the socket. Only clients running as ``owner``
    (default: this process's uid) are served; others get 403.
    """
    sock, identity = _listen(socket_path)
    protocol = _owner_only(os.getuid() if owner is None else owner, str(socket_path))
    try:
        await _serve_on(
            app, sock, str(socket_path), task_status, protocol=protocol, uds=str(socket_path)
        )
    finally:
        sock.close()
        _remove_socket(socket_path, identity)


async def serve_tcp(
    app: Starlette,
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (TCP) until cancelled; like ``serve``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SquishError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        await _serve_on(app, sock, f"{host}:{port}", task_status, host=host, port=port)
    finally:
        sock.close()


async def _serve_on(
    app: Starlette,
    sock: socket.socket,
    where: str,
    task_status: anyio.abc.TaskStatus[None],
    *,
    protocol: type[H11Protocol] = _HeaderTimeoutProtocol,
    **address: Any,
) -> None:
    config = uvicorn.Config(
        app,
        **address,
        log_level="warning",
        # None: uvicorn's records go to the daemon's handlers (text or JSON)
        # instead of a stderr handler of its own.
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=_GRACE,
        http=protocol,
        timeout_keep_alive=_KEEP_ALIVE,
    )
    server = _Server(config)
    finished = False

    async def run() -> None:
        nonlocal finished
        # Shielded: cancelling serve() must not tear uvicorn down mid-request;
        # should_exit (set below) lets it finish its own shutdown instead.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                finished = True

    drain = getattr(app.state, "drain", None)
    if isinstance(drain, _Drain):
        drain.open()  # the app may be served again after a shutdown
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            while not server.started:
                if finished:
                    raise SquishError(f"the API server on {where} stopped while starting")
                await anyio.sleep(0.01)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            # Also when cancelled while starting: uvicorn checks should_exit
            # once started, and the shielded run() would wait forever otherwise.
            if isinstance(drain, _Drain):
                drain.close()
            server.should_exit = True


def _remove_socket(path: Path, identity: int) -> None:
    # Only our own socket: a new daemon may already have replaced it.
    try:
        if path.lstat().st_ino == identity:
            path.unlink()
    except FileNotFoundError:
        pass
