"""The client side of the daemon's API (:mod:`squish.daemon.api`) over its unix socket.

Called by the ``squish`` command (:mod:`squish.cli.commands`) for everything that
needs the daemon. Synchronous: a command makes one or two calls and the
streaming ones (logs, events) simply iterate. Answers are the shapes of
:mod:`squish.api_schema`, the definitions the server builds them from.

It speaks HTTP/1.1 itself, over a plain ``socket``, rather than through
``http.client``: every ``squish ps`` is a fresh interpreter, and importing
``http.client`` (``email.parser``, ``ssl``, ``calendar`` and more behind it)
took 11 to 15 ms of a ``ps`` that should take 50 at most with 1000
containers (bench/cli_latency.py); h11 costs as much. The peer is always
our own daemon (uvicorn and h11), so the little needed is written out here:
one request per connection (``Connection: close``), a body of bytes or of
chunks (an upload), and an answer whose body ends at its ``Content-Length``,
at the end of its chunks (the streams: events, ``logs --follow``, pulls)
or, with neither, when the daemon closes. Status, header and chunk-size
lines are limited to 64 KiB and headers to 100, as http.client limits
them, so that a wrong peer on the socket cannot make the command hoard
memory; what is not HTTP/1.1 is an error saying so.

Foreign errors stop here. Not reaching the daemon at all (no socket, nobody
listening, no permission) is :class:`DaemonUnreachable`, whose message says
how to start it; an error the daemon answered is :class:`ApiError`, carrying
the daemon's one-line message and the HTTP status (404: no such container,
400: bad manifest or request, 409: the host refused, 500: daemon bug); a
connection lost mid-answer, an answer that is not HTTP or a timeout is a
plain ``SquishError``::

    SquishError
    ├── DaemonUnreachable
    └── ApiError (.status)
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

from squish.errors import SquishError

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self, TypeVar

    # Types only: the TypedDicts (and typing_extensions) are not loaded by `squish ps`.
    from squish import api_schema as schema

    T = TypeVar("T")

__all__ = ["ApiError", "Client", "DaemonUnreachable"]

JSONObject = dict[str, Any]

# The host part is required by HTTP and ignored by the daemon.
_HOST = "squish"
_TIMEOUT = 10.0
_CHUNK = 65536
# What a waiting request (create, start) may take beyond its own timeout.
_SLACK = 15.0
# The most a status, header or chunk-size line may hold, and the most headers
# an answer may have: http.client's limits.
_MAX_LINE = 65536
_MAX_HEADERS = 100


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


class _Answer:
    """A whole answer of the daemon: status, the path asked, the body."""

    __slots__ = ("body", "path", "status")

    def __init__(self, status: int, path: str, body: bytes) -> None:
        self.status = status
        self.path = path
        self.body = body

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
        return cast("schema.DaemonStatus", self._object(self._call("GET", "/v1/status")))

    def containers(self) -> list[schema.Container]:
        return cast("list[schema.Container]", self._list(self._call("GET", "/v1/containers")))

    def inspect(self, ref: str) -> schema.ContainerDetail:
        """Everything about the container ``ref`` (a name or a unique id prefix) names."""
        answer = self._object(self._call("GET", f"/v1/containers/{_segment(ref)}"))
        return cast("schema.ContainerDetail", answer)

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
        return cast("schema.Container", self._object(response))

    def apply(self, name: str, manifest: str) -> schema.Container:
        """Store ``manifest`` as container ``name`` without waiting (like kubectl apply)."""
        return self.create(name, manifest, wait=False)

    def stop(self, ref: str) -> schema.Container:
        """Stop the container ``ref`` names; one that is not running stays so."""
        path = f"/v1/containers/{_segment(ref)}/stop"
        return cast("schema.Container", self._object(self._call("POST", path, timeout=None)))

    def start(self, ref: str, *, timeout: float = 30.0) -> schema.Container:
        body: schema.StartRequest = {"timeout": timeout}
        response = self._call(
            "POST",
            f"/v1/containers/{_segment(ref)}/start",
            body=body,
            timeout=timeout + _SLACK,
        )
        return cast("schema.Container", self._object(response))

    def exec(self, ref: str, command: list[str], *, timeout: float = 30.0) -> schema.ExecResult:
        """Run ``command`` inside the running container ``ref``; its status and output."""
        body: schema.ExecRequest = {"command": command, "timeout": timeout}
        response = self._call(
            "POST", f"/v1/containers/{_segment(ref)}/exec", body=body, timeout=timeout + _SLACK
        )
        return cast("schema.ExecResult", self._object(response))

    def delete(self, ref: str) -> schema.Container:
        path = f"/v1/containers/{_segment(ref)}"
        return cast("schema.Container", self._object(self._call("DELETE", path, timeout=None)))

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
            for event in self._objects(response, "/v1/events"):
                yield cast("schema.Event", event)

    def openapi(self) -> JSONObject:
        """The daemon's OpenAPI document."""
        return self._object(self._call("GET", "/v1/openapi.json"))

    # -- networks -----------------------------------------------------------

    def networks(self) -> list[schema.Network]:
        return cast("list[schema.Network]", self._list(self._call("GET", "/v1/networks")))

    def network(self, name: str) -> schema.Network:
        answer = self._object(self._call("GET", f"/v1/networks/{_segment(name)}"))
        return cast("schema.Network", answer)

    # -- volumes ------------------------------------------------------------

    def volumes(self) -> list[schema.Volume]:
        return cast("list[schema.Volume]", self._list(self._call("GET", "/v1/volumes")))

    def volume(self, name: str) -> schema.Volume:
        answer = self._object(self._call("GET", f"/v1/volumes/{_segment(name)}", timeout=None))
        return cast("schema.Volume", answer)

    def remove_volume(self, name: str) -> schema.Volume:
        answer = self._object(self._call("DELETE", f"/v1/volumes/{_segment(name)}", timeout=None))
        return cast("schema.Volume", answer)

    def secrets(self) -> list[schema.Secret]:
        return cast("list[schema.Secret]", self._list(self._call("GET", "/v1/secrets")))

    def create_secret(self, name: str, value: Iterator[bytes]) -> schema.Secret:
        answer = self._call("PUT", f"/v1/secrets/{_segment(name)}", content=value)
        return cast("schema.Secret", self._object(answer))

    def remove_secret(self, name: str) -> schema.Secret:
        answer = self._object(self._call("DELETE", f"/v1/secrets/{_segment(name)}"))
        return cast("schema.Secret", answer)

    def export_volume(self, name: str) -> Iterator[bytes]:
        """Volume ``name`` as a tar, in chunks as they come."""
        with self._stream("GET", f"/v1/volumes/{_segment(name)}/export") as response:
            yield from self._translate_stream(response.iter_bytes())

    def import_volume(self, name: str, archive: Iterator[bytes]) -> schema.Volume:
        """Make volume ``name`` hold what ``archive`` (its chunks) holds."""
        path = f"/v1/volumes/{_segment(name)}/import"
        answer = self._call("PUT", path, content=archive, timeout=None)
        return cast("schema.Volume", self._object(answer))

    def prune_volumes(self) -> schema.VolumePrune:
        answer = self._object(self._call("POST", "/v1/volumes/prune", timeout=None))
        return cast("schema.VolumePrune", answer)

    # -- sources ------------------------------------------------------------

    def sources(self) -> list[schema.SourceStatus]:
        return cast("list[schema.SourceStatus]", self._list(self._call("GET", "/v1/sources")))

    def sync(self, name: str | None = None) -> list[schema.SourceStatus]:
        """Fetch the git sources (or the one named) now; their statuses after."""
        body: schema.SyncRequest = {} if name is None else {"name": name}
        answer = self._list(self._call("POST", "/v1/sources/sync", body=body, timeout=None))
        return cast("list[schema.SourceStatus]", answer)

    # -- layers -------------------------------------------------------------

    def layers(self) -> list[schema.LayerInfo]:
        return cast(
            "list[schema.LayerInfo]", self._list(self._call("GET", "/v1/layers", timeout=None))
        )

    def pull_layer(
        self, name: str, version: str, *, sha256: str | None = None
    ) -> Iterator[schema.PullLine]:
        """The daemon's progress lines, then ``{"layer": ...}`` or ``{"error": ...}``."""
        body: schema.PullRequest = {"name": name, "version": version}
        if sha256 is not None:
            body["sha256"] = sha256
        with self._stream("POST", "/v1/layers/pull", body=body) as response:
            for item in self._objects(response, "/v1/layers/pull"):
                yield cast("schema.PullLine", item)

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
        return cast("schema.LayerInfo", self._object(answer))

    def remove_layer(self, name: str, version: str) -> schema.LayerInfo:
        path = f"/v1/layers/{_segment(name)}/{_segment(version)}"
        return cast("schema.LayerInfo", self._object(self._call("DELETE", path, timeout=None)))

    def gc_layers(self) -> schema.GcResult:
        answer = self._call("POST", "/v1/layers/gc", timeout=None)
        return cast("schema.GcResult", self._object(answer))

    # -- plumbing -----------------------------------------------------------
    #
    # One connection per call, closed once its answer is read: all a command
    # needs, and nothing kept between calls.

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        content: Iterator[bytes] | None,
        timeout: float | None,
    ) -> _Connection:
        """Connect, send the request, read the status and headers."""
        target = path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        data: bytes | Iterator[bytes] | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif content is not None:
            data = content
            headers["Content-Type"] = "application/octet-stream"
        try:
            connection = _Connection(self.socket_path, self._timeout)  # the connect's timeout
        except OSError as exc:
            raise DaemonUnreachable(self.socket_path, _reason(exc)) from exc
        try:
            with self._translated():
                connection.settimeout(timeout)
                connection.send(method, target, headers, data)
                connection.read_head()
        except BaseException:
            connection.close()
            raise
        return connection

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
        connection = self._send(
            method, path, params=params, body=body, content=content, timeout=timeout
        )
        try:
            with self._translated():
                answer = _Answer(connection.status, path, b"".join(connection.iter_body()))
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
        connection = self._send(
            method, path, params=params, body=body, content=None, timeout=_TIMEOUT
        )
        try:
            if connection.status >= 400:
                with self._translated():
                    error = b"".join(connection.iter_body())
                raise _api_error(_Answer(connection.status, path, error))
            connection.settimeout(None)  # a followed log may be quiet for hours
            yield _Stream(connection)
        finally:
            connection.close()

    def _translate_stream(self, chunks: Iterator[T]) -> Iterator[T]:
        with self._translated():
            yield from chunks

    def _objects(self, response: _Stream, path: str) -> Iterator[JSONObject]:
        """The JSON objects of a stream, one a line (blank lines and other values skipped)."""
        for line in self._translate_stream(response.iter_lines()):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise SquishError(
                    f"the daemon sent a line of {path} that is not JSON: {exc}"
                ) from exc
            if isinstance(item, dict):
                yield item

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """What goes wrong on the connection, as the one-line errors of squish."""
        try:
            yield
        except TimeoutError as exc:
            raise SquishError(
                f"the squish daemon at {self.socket_path} did not answer in time"
            ) from exc
        except (OSError, EOFError) as exc:
            reason = _reason(exc) if isinstance(exc, OSError) else str(exc)
            raise SquishError(
                f"lost the connection to the squish daemon at {self.socket_path}: {reason}"
            ) from exc
        except _Garbled as exc:
            raise SquishError(
                f"what answered on {self.socket_path} is not the squish daemon, or not "
                f"HTTP/1.1: {exc}"
            ) from exc

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


class _Garbled(Exception):
    """What came on the socket is not an HTTP/1.1 answer; ``str()`` says what is wrong."""


_HEX_DIGITS = b"0123456789abcdefABCDEF"


class _Connection:
    """One request and its answer on a connection of their own to the daemon's socket.

    Connecting raises ``OSError`` (nobody listens there). After it, sending
    and reading raise ``TimeoutError``, another ``OSError``, ``EOFError``
    (the connection ended before the answer did) or :class:`_Garbled`.
    """

    def __init__(self, socket_path: Path, timeout: float | None) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.settimeout(timeout)
            self._socket.connect(str(socket_path))
        except OSError:
            self._socket.close()
            raise
        self._reader = self._socket.makefile("rb")
        self.status = 0
        self.headers: dict[str, str] = {}  # names in lower case

    def settimeout(self, timeout: float | None) -> None:
        """The longest any one send or read may wait from now on (``None``: for ever)."""
        self._socket.settimeout(timeout)

    def close(self) -> None:
        self._reader.close()
        self._socket.close()

    def send(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | Iterator[bytes] | None,
    ) -> None:
        """The request: ``body`` as bytes (with a length), or as chunks (an upload)."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {_HOST}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is None or isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body or b'')}")
        else:
            lines.append("Transfer-Encoding: chunked")
        head = "\r\n".join([*lines, "", ""]).encode("latin-1")
        if body is None or isinstance(body, bytes):
            self._socket.sendall(head + (body or b""))
            return
        self._socket.sendall(head)
        for chunk in body:
            if chunk:  # an empty chunk would end the body
                self._socket.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        self._socket.sendall(b"0\r\n\r\n")

    def read_head(self) -> None:
        """The status line and the headers (past any informational 1xx answer)."""
        while True:
            line = self._reader.readline(_MAX_LINE + 1)
            if not line:
                raise EOFError("it closed the connection without answering")
            line = self._line_of(line)
            version, _, rest = line.partition(b" ")
            code = rest[:3]
            if (
                version not in (b"HTTP/1.1", b"HTTP/1.0")
                or len(code) != 3
                or not code.isdigit()
                or rest[3:4] not in (b"", b" ")
            ):
                raise _Garbled(f"the status line is {_shown(line)}")
            self.status = int(code)
            self.headers = self._fields()
            if not 100 <= self.status < 200:
                return

    def iter_body(self) -> Iterator[bytes]:
        """The body as it arrives, to its Content-Length, its last chunk, or the close."""
        if self.status in (204, 304):
            return
        coding = self.headers.get("transfer-encoding")
        length = self.headers.get("content-length")
        if coding is not None:
            if coding.lower() != "chunked":
                raise _Garbled(f"the transfer encoding is {coding!r}, not chunked")
            yield from self._chunks()
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise _Garbled(f"the Content-Length is {length!r}")
            yield from self._exactly(int(length))
        else:
            while data := self._reader.read1(_CHUNK):
                yield data

    def _chunks(self) -> Iterator[bytes]:
        while True:
            line = self._line()
            size = line.split(b";", 1)[0].strip()  # a chunk extension is ignored
            if not size or size.strip(_HEX_DIGITS):
                raise _Garbled(f"a chunk's size line is {_shown(line)}")
            length = int(size, 16)
            if length == 0:
                self._fields()  # the trailer, up to its empty line
                return
            yield from self._exactly(length)
            if self._line():
                raise _Garbled("a chunk is longer than its size says")

    def _exactly(self, length: int) -> Iterator[bytes]:
        """``length`` bytes of the body, in pieces of at most ``_CHUNK`` as they arrive."""
        while length > 0:
            data = self._reader.read1(min(length, _CHUNK))
            if not data:
                raise EOFError(f"the answer stopped {length} bytes short of its end")
            length -= len(data)
            yield data

    def _fields(self) -> dict[str, str]:
        """Header (or trailer) lines up to the empty line; a name seen twice: values joined."""
        fields: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if not line:
                return fields
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise _Garbled(f"a header line is {_shown(line)}")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text
        raise _Garbled(f"the answer has more than {_MAX_HEADERS} headers")

    def _line(self) -> bytes:
        return self._line_of(self._reader.readline(_MAX_LINE + 1))

    @staticmethod
    def _line_of(line: bytes) -> bytes:
        """``line`` (as ``readline`` gave it) without its line end."""
        if len(line) > _MAX_LINE:
            raise _Garbled(f"a line of the answer is longer than {_MAX_LINE} bytes")
        if not line.endswith(b"\n"):
            raise EOFError("the answer stopped before its end")
        return line.rstrip(b"\r\n")


def _shown(line: bytes) -> str:
    """A line of what answered, short and printable, for an error message."""
    text = line[:60].decode("latin-1")
    return repr(text + ("..." if len(line) > 60 else ""))


class _Stream:
    """The body of a streamed answer, as it arrives: raw chunks, or lines."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def iter_bytes(self) -> Iterator[bytes]:
        return self._connection.iter_body()

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
