"""Health checks made by the daemon itself: a TCP connection, or an HTTP GET, into a container.

The kubelet's tcpSocket and httpGet probes. No process is started in the
container: a socket belongs to the network namespace it was made in,
whoever holds it, so the exec server (``squish.runtime.execs``) makes a
batch of TCP sockets in the container's namespace (``ProbeSockets``), and
each check takes one and connects it to ``127.0.0.1:PORT`` there. A check
then costs a connection, not a fork: what lets a node check hundreds of
containers every second. As the kubelet's, a socket is closed with a
reset (``SO_LINGER`` 0), leaving no ``TIME_WAIT`` behind in the
container for each check.

Each result is an ``ExecResult``, as a command's: exit code 0 when it
passed, 1 when it failed (refused, reset, an HTTP status outside 200 to
399), 124 at its timeout, 125 when no socket could be made; the output
says what happened (``HTTP 503 Service Unavailable`` and the first lines
of the body).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from squish.runtime import ExecResult, Probe

AHEAD = 30.0
"""Sockets are made for about this many seconds of checks at a time, at the rate seen."""
MIN_BATCH, MAX_BATCH = 2, 32
KEPT_BODY = 4096  # bytes of an HTTP answer's body kept in the output
_MAX_HEAD = 16384  # an HTTP answer's status line and headers, at most
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset
_TIMED_OUT = 124
_NO_SOCKET = 125


class SocketBudget:
    """How many sockets made ahead all the containers' ``ProbeSockets`` may hold together.

    They are the daemon's fds: held past its limit, a start, an API
    connection or a log would fail for want of one. By default a quarter of
    the soft ``RLIMIT_NOFILE`` as it is when the first check is made (the
    daemon raises it to the hard limit at its start). Each container's
    batch is at most its fair share of it (the limit over the containers
    checked so), and what is left; with nothing left, one socket: a fork of
    the exec server per check, slower, never an fd short.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4
        self.limit = limit
        self.held = 0
        self.pools = 0  # the containers' ProbeSockets open now

    def grant(self, wanted: int) -> int:
        share = self.limit // max(1, self.pools)
        return max(1, min(wanted, share, self.limit - self.held))


class ProbeSockets:
    """The sockets made ahead in one container's network namespace, for its checks.

    ``make(count)`` makes more (the exec server's ``sockets``, bound to the
    container's sandbox): a fork of the exec server per batch. A batch is
    as many as the checks of the last ``AHEAD`` seconds at the rate they
    were taken (``MIN_BATCH`` to ``MAX_BATCH``): a check every second
    costs a fork every 30 s, and a socket held costs 3.5 KiB of the
    kernel's, so one every 30 s holds two; all of them together stay within
    a ``SocketBudget``. ``close`` closes every one left: a socket keeps the
    namespace it belongs to alive, so they go with the container.
    """

    def __init__(
        self,
        make: Callable[[int], Awaitable[list[socket.socket]]],
        budget: SocketBudget,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self._budget = budget
        budget.pools += 1
        self._clock = clock
        self._ready: list[socket.socket] = []
        self._lock = anyio.Lock()
        self._closed = False
        self._since: float | None = None  # when the last batch was made
        self._taken = 0  # since then

    async def take(self) -> socket.socket:
        if not self._ready:
            async with self._lock:
                if not self._ready:
                    made = await self._make(self._budget.grant(self._batch()))
                    if self._closed or not made:  # the container went meanwhile
                        for each in made:
                            each.close()
                        raise OSError(errno.ESRCH, "the container is gone")
                    self._ready = made
                    self._budget.held += len(made)
        self._taken += 1
        self._budget.held -= 1
        return self._ready.pop()

    def _batch(self) -> int:
        now = self._clock()
        since, taken = self._since, self._taken
        self._since, self._taken = now, 0
        if since is None or now <= since:
            return MIN_BATCH
        return max(MIN_BATCH, min(MAX_BATCH, math.ceil(taken / (now - since) * AHEAD)))

    def close(self) -> None:
        if not self._closed:
            self._budget.pools -= 1
        self._closed = True
        self._budget.held -= len(self._ready)
        for each in self._ready:
            each.close()
        self._ready.clear()


async def run_probe(sockets: ProbeSockets, probe: Probe, *, timeout: float) -> ExecResult:
    """Make one check of ``probe`` through a socket of ``sockets``, within ``timeout``."""
    began = time.perf_counter()

    def result(code: int, output: str) -> ExecResult:
        seconds = time.perf_counter() - began
        return ExecResult(code, output, seconds, timed_out=code == _TIMED_OUT)

    where = probe.describe()
    answer = _Answer()
    with anyio.move_on_after(timeout):
        try:
            sock = await sockets.take()
        except OSError as exc:
            return result(_NO_SOCKET, f"the check could not run: {exc.strerror or exc}\n")
        with sock:
            try:
                await _connect(sock, probe.port)
                if probe.http_path is None:
                    return result(0, f"connected to {where}\n")
                await _get(sock, probe, answer)
            except OSError as exc:
                return result(1, f"{where}: {exc.strerror or exc}\n")
            except ValueError as exc:  # not HTTP
                return result(1, f"{where}: {exc}\n")
    if answer.status is None:
        return result(_TIMED_OUT, f"{where}: timed out after {timeout:g} s\n")
    # A timeout while the body came leaves what came: the status decides.
    passed = 200 <= answer.status < 400
    return result(0 if passed else 1, answer.output.decode(errors="replace"))


@dataclass
class _Answer:
    """An HTTP answer as far as it came: its status once its headers are in."""

    status: int | None = None
    output: bytearray = field(default_factory=bytearray)


async def _connect(sock: socket.socket, port: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    code = sock.connect_ex(("127.0.0.1", port))
    if code == errno.EINPROGRESS:
        # On a loopback the handshake is mostly done by now: a look costs
        # less than a turn of the event loop.
        if not _ready(sock, select.POLLOUT):
            await anyio.wait_writable(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


async def _get(sock: socket.socket, probe: Probe, answer: _Answer) -> None:
    """Send the GET and read the answer into ``answer``.

    Its output: the status line, then what of the body arrives before the
    answer's end (its length, or the connection's end), at most
    ``KEPT_BODY`` bytes.
    """
    data = _request(probe)
    while data:
        try:
            data = data[sock.send(data) :]
        except BlockingIOError:
            await anyio.wait_writable(sock)
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > _MAX_HEAD:
            raise ValueError("not an HTTP answer (its headers do not end)")
        chunk = await _read(sock)
        if not chunk:
            raise ValueError(
                "the connection ended within the HTTP answer's headers"
                if received
                else "the connection ended with no HTTP answer"
            )
        received += chunk
    status_line, *header_lines = received[:end].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    length = KEPT_BODY
    for line in header_lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length" and value.strip().isdigit():
            length = min(length, int(value.strip()))
    answer.output += f"HTTP {code} {reason}".rstrip().encode() + b"\n"
    answer.status = int(code)
    body = received[end + 4 :][:length]
    answer.output += body
    got = len(body)
    with contextlib.suppress(OSError):  # a reset after the status: the status decides
        while got < length and (chunk := await _read(sock)):
            answer.output += chunk[: length - got]
            got += len(chunk)


def _request(probe: Probe) -> bytes:
    headers = dict(probe.headers)
    lines = [f"GET {probe.http_path} HTTP/1.1"]
    if not any(key.lower() == "host" for key in headers):
        lines.append(f"Host: 127.0.0.1:{probe.port}")
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines += ["User-Agent: squish-health", "Accept: */*", "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def _ready(sock: socket.socket, events: int) -> bool:
    poll = select.poll()
    poll.register(sock, events)
    return bool(poll.poll(0))


async def _read(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await anyio.wait_readable(sock)
