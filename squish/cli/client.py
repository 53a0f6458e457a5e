"""The client side of the daemon's API (:mod:`squish.daemon.api`) over its unix socket.

Called by the ``squish`` command (:mod:`squish.cli.commands`) for everything that
needs the daemon. Synchronous, over the standard library's http.client: a
command makes one or two calls and the streaming ones (logs, events) simply
iterate. Answers are the shapes
of :mod:`squish.api_schema`, the definitions the server builds them from.

Foreign errors stop here. Not reaching the daemon at all (no socket, nobody
listening, no permission) is :class:`DaemonUnreachable`, whose message says
how to start it; an error the daemon answered is :class:`ApiError`, carrying
the daemon's one-line message and the HTTP status (404: no such container,
400: bad manifest or request, 409: the host refused, 500: daemon bug); a
connection lost mid-answer or a timeout is a plain ``SquishError``::

    SquishError
    ├── DaemonUnreachable
    └── ApiError (.status)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast
from urllib.parse import quote, urlencode

from squish import api_schema as schema
from squish.errors import SquishError

__all__ = ["ApiError", "Client", "DaemonUnreachable"]

JSONObject = dict[str, Any]
T = TypeVar("T")

# The host part is required by HTTP and ignored by the daemon.
_HOST = "squish"
_TIMEOUT = 10.0
_CHUNK = 65536
# What a waiting request (create, start) may take beyond its own timeout.
_SLACK = 15.0


class DaemonUnreachable(SquishError):
    """Nothing answers on the daemon's socket."""

    def __init__(self, socket_path: Path, reason: str) -> None:
        self.socket_path = socket_path
        super().__init__(
            f"cannot reach the squish daemon at {socket_path} ({reason}); start it with "
            "`squish daemon --manifests DIR`, or point at its socket with --socket PATH "
            "or $SQUISH_SOCKET"
        )


class ApiError(SquishError):
    """The daemon answered with an error; ``str()`` is its one-line message.

    ``candidates`` lists the containers an ambiguous id prefix could mean.
    """

    def __init__(self, status: int, message: str, candidates: list[str] | None = None) -> None:
        self.status = status
        self.message = message
        self.candidates = candidates or []
        super().__init__(message)


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


class _Connection(http.client.HTTPConnection):
    """HTTP/1.1 over the daemon's unix socket (http.client speaks only TCP itself)."""

    def __init__(self, socket_path: Path, timeout: float | None) -> None:
        super().__init__(_HOST, timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class _Answer:
    """A whole answer of the daemon: status, the path asked, the body."""

    status: int
    path: str
    body: bytes

    @property
    def is_error(self) -> bool:
        return self.status >= 400


class Client:
    """Calls on the daemon listening on ``socket_path``; a context manager."""

    def __init__(self, socket_path: Path, *, timeout: float = _TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self._timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every call has a connection of its own."""

    # -- calls --------------------------------------------------------------

    def status(self) -> schema.DaemonStatus:
        return cast(schema.DaemonStatus, self._object(self._call("GET", "/v1/status")))

    def containers(self) -> list[schema.Container]:
        return cast(list[schema.Container], self._list(self._call("GET", "/v1/containers")))

    def inspect(self, ref: str) -> schema.ContainerDetail:
        """Everything about the container ``ref`` (a name or a unique id prefix) names."""
        answer = self._object(self._call("GET", f"/v1/containers/{_segment(ref)}"))
        return cast(schema.ContainerDetail, answer)

    def create(
        self, name: str, manifest: str, *, wait: bool = True, timeout: float = 30.0
    ) -> schema.Container:
        """Store ``manifest`` as container ``name``; with ``wait``, until it runs or fails."""
        body: schema.CreateRequest = {
            "name": name,
            "manifest": manifest,
            "wait": wait,
            "timeout": timeout,
        }
        response = self._call("POST", "/v1/containers", body=body, timeout=timeout + _SLACK)
        return cast(schema.Container, self._object(response))

    def apply(self, name: str, manifest: str) -> schema.Container:
        """Store ``manifest`` as container ``name`` without waiting (like kubectl apply)."""
        return self.create(name, manifest, wait=False)

    def stop(self, ref: str) -> schema.Container:
        """Stop the container ``ref`` names; one that is not running stays so."""
        path = f"/v1/containers/{_segment(ref)}/stop"
        return cast(schema.Container, self._object(self._call("POST", path, timeout=None)))

    def start(self, ref: str, *, timeout: float = 30.0) -> schema.Container:
        body: schema.StartRequest = {"timeout": timeout}
        response = self._call(
            "POST",
            f"/v1/containers/{_segment(ref)}/start",
            body=body,
            timeout=timeout + _SLACK,
        )
        return cast(schema.Container, self._object(response))

    def delete(self, ref: str) -> schema.Container:
        path = f"/v1/containers/{_segment(ref)}"
        return cast(schema.Container, self._object(self._call("DELETE", path, timeout=None)))

    def logs(
        self,
        ref: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        until: float | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """The container's log as it is read; with ``follow``, until interrupted or ``until``.

        ``since`` and ``until`` are Unix seconds; with ``timestamps`` each line
        starts with its time (``2026-12-01T10:00:00.123Z``) and a space.
        """
        params: dict[str, str] = {"follow": "1" if follow else "0"}
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = repr(since)
        if until is not None:
            params["until"] = repr(until)
        if timestamps:
            params["timestamps"] = "1"
        path = f"/v1/containers/{_segment(ref)}/logs"
        with self._stream("GET", path, params=params) as response:
            yield from self._translate_stream(response.iter_bytes())

    def events(self) -> Iterator[schema.Event]:
        """Every event from now on, until interrupted."""
        with self._stream("GET", "/v1/events") as response:
            for line in self._translate_stream(response.iter_lines()):
                if line.strip():
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield cast(schema.Event, event)

    def openapi(self) -> JSONObject:
        """The daemon's OpenAPI document."""
        return self._object(self._call("GET", "/v1/openapi.json"))

    # -- sources ------------------------------------------------------------

    def sources(self) -> list[schema.SourceStatus]:
        return cast(list[schema.SourceStatus], self._list(self._call("GET", "/v1/sources")))

    def sync(self, name: str | None = None) -> list[schema.SourceStatus]:
        """Fetch the git sources (or the one named) now; their statuses after."""
        body: schema.SyncRequest = {} if name is None else {"name": name}
        answer = self._list(self._call("POST", "/v1/sources/sync", body=body, timeout=None))
        return cast(list[schema.SourceStatus], answer)

    # -- layers -------------------------------------------------------------

    def layers(self) -> list[schema.LayerInfo]:
        return cast(
            list[schema.LayerInfo], self._list(self._call("GET", "/v1/layers", timeout=None))
        )

    def pull_layer(
        self, name: str, version: str, *, sha256: str | None = None
    ) -> Iterator[schema.PullLine]:
        """The daemon's progress lines, then ``{"layer": ...}`` or ``{"error": ...}``."""
        body: schema.PullRequest = {"name": name, "version": version}
        if sha256 is not None:
            body["sha256"] = sha256
        with self._stream("POST", "/v1/layers/pull", body=body) as response:
            for line in self._translate_stream(response.iter_lines()):
                if line.strip():
                    item = json.loads(line)
                    if isinstance(item, dict):
                        yield cast(schema.PullLine, item)

    def import_layer(
        self,
        name: str,
        version: str,
        archive: Iterator[bytes],
        *,
        source: str,
        sha256: str | None = None,
    ) -> schema.LayerInfo:
        """Upload ``archive`` (its chunks) as layer ``name`` ``version``."""
        params = {"source": source}
        if sha256 is not None:
            params["sha256"] = sha256
        path = f"/v1/layers/{_segment(name)}/{_segment(version)}"
        # No timeout: uploading and unpacking a large archive takes what it takes.
        answer = self._call("PUT", path, content=archive, params=params, timeout=None)
        return cast(schema.LayerInfo, self._object(answer))

    def remove_layer(self, name: str, version: str) -> schema.LayerInfo:
        path = f"/v1/layers/{_segment(name)}/{_segment(version)}"
        return cast(schema.LayerInfo, self._object(self._call("DELETE", path, timeout=None)))

    def gc_layers(self) -> schema.GcResult:
        answer = self._call("POST", "/v1/layers/gc", timeout=None)
        return cast(schema.GcResult, self._object(answer))

    # -- plumbing -----------------------------------------------------------
    #
    # http.client rather than httpx: `import httpx` alone took half of the
    # time of a `squish ps` (bench/cli_latency.py); one request per
    # connection is all a command needs.

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        content: Iterator[bytes] | None,
        timeout: float | None,
    ) -> tuple[_Connection, http.client.HTTPResponse]:
        """Connect, send the request, read the status and headers."""
        url = path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        data: bytes | Iterator[bytes] | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif content is not None:
            data = content
            headers["Content-Type"] = "application/octet-stream"
        connection = _Connection(self.socket_path, self._timeout)  # the connect's timeout
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise DaemonUnreachable(self.socket_path, _reason(exc)) from exc
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request(
                method, url, body=data, headers=headers, encode_chunked=content is not None
            )
            response = connection.getresponse()
        except TimeoutError as exc:
            connection.close()
            raise SquishError(
                f"the squish daemon at {self.socket_path} did not answer in time"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._lost(exc) from exc
        return connection, response

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        content: Iterator[bytes] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = _TIMEOUT,
    ) -> _Answer:
        connection, response = self._send(
            method, path, params=params, body=body, content=content, timeout=timeout
        )
        try:
            answer = _Answer(response.status, path, response.read())
        except TimeoutError as exc:
            raise SquishError(
                f"the squish daemon at {self.socket_path} did not answer in time"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._lost(exc) from exc
        finally:
            connection.close()
        if answer.is_error:
            raise _api_error(answer)
        return answer

    @contextlib.contextmanager
    def _stream(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Iterator[_Stream]:
        """A streamed answer (no read timeout once it starts), errors translated like ``_call``."""
        connection, response = self._send(
            method, path, params=params, body=body, content=None, timeout=_TIMEOUT
        )
        try:
            if response.status >= 400:
                raise _api_error(_Answer(response.status, path, response.read()))
            if connection.sock is not None:
                connection.sock.settimeout(None)  # a followed log may be quiet for hours
            yield _Stream(response)
        finally:
            connection.close()

    def _translate_stream(self, chunks: Iterator[T]) -> Iterator[T]:
        try:
            yield from chunks
        except (OSError, http.client.HTTPException) as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: OSError | http.client.HTTPException) -> SquishError:
        reason = _reason(exc) if isinstance(exc, OSError) else (str(exc) or type(exc).__name__)
        return SquishError(
            f"lost the connection to the squish daemon at {self.socket_path}: {reason}"
        )

    @staticmethod
    def _object(answer: _Answer) -> JSONObject:
        data = _decode(answer)
        if not isinstance(data, dict):
            raise SquishError(f"the daemon answered {answer.path} with something not an object")
        return data

    @staticmethod
    def _list(answer: _Answer) -> list[JSONObject]:
        data = _decode(answer)
        if not isinstance(data, list):
            raise SquishError(f"the daemon answered {answer.path} with something not a list")
        return data


class _Stream:
    """The body of a streamed answer, as it arrives: raw chunks, or lines."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self._response = response

    def iter_bytes(self) -> Iterator[bytes]:
        while chunk := self._response.read1(_CHUNK):
            yield chunk

    def iter_lines(self) -> Iterator[str]:
        pending = b""
        for chunk in self.iter_bytes():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
        if pending:
            yield pending.decode("utf-8", errors="replace")


def _segment(value: str) -> str:
    # A name or prefix is one path segment, whatever the user typed.
    return quote(value, safe="")


def _decode(answer: _Answer) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        raise SquishError(f"the daemon answered {answer.path} with invalid JSON: {exc}") from exc


def _api_error(answer: _Answer) -> ApiError:
    message = ""
    try:
        data = json.loads(answer.body)
    except ValueError:
        data = None
    candidates: list[str] = []
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
        if isinstance(data.get("candidates"), list):
            candidates = [str(name) for name in data["candidates"]]
    if not message:
        text = " ".join(answer.body.decode("utf-8", errors="replace").split())[:200]
        message = f"the daemon answered {answer.status}" + (f": {text}" if text else "")
    return ApiError(answer.status, message, candidates)
