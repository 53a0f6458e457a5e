"""Serving the API: on the daemon's unix socket (its owner only) or on a TCP address.

The daemon (:mod:`squish.daemon.main`) calls :func:`check_socket` before it
starts anything, then runs ``await task_group.start(serve, app, path)`` for
the API and :func:`serve_tcp` for the webhook. Both run uvicorn inside the
caller's task group, without its signal handlers (the daemon owns SIGINT and
SIGTERM), with an h11 protocol that gives each request's headers
``HEADER_TIMEOUT`` seconds.

Only the daemon's own user may use the socket: its mode is 0600, and every
connection's peer uid (``SO_PEERCRED``, the kernel's word on who connected)
is checked too, so a mode loosened by hand lets no one else in. A connection
from another uid gets 403 for each request, and one warning in the log.

A socket in the way is replaced only if it is a dead daemon's (it refuses
connections); one that answers, or is not a socket, is refused and never
removed. On shutdown the app's streams are ended at once (its
:class:`~squish.daemon.api.streams.Drain`), requests in flight get a few
seconds, and the socket is removed if it is still ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from squish.daemon.api.errors import error_response
from squish.daemon.api.streams import Drain
from squish.errors import SquishError

__all__ = ["HEADER_TIMEOUT", "check_socket", "peer_refusal", "serve", "serve_tcp"]

# The API's one logger, whichever of its modules logs: users filter on it.
logger = logging.getLogger("squish.daemon.api")

# How long uvicorn lets plain requests (a create waiting for its container)
# finish at shutdown before cancelling them; streams are ended at once.
_GRACE = 5
# How long a client may take to send a request's headers (from connecting,
# or from the first byte of a next request on a kept-alive connection), and
# how long an idle kept-alive connection stays open.
HEADER_TIMEOUT = 5.0
_KEEP_ALIVE = 5


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
                refusal = error_response(reason, 403)

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
    if isinstance(drain, Drain):
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
            if isinstance(drain, Drain):
                drain.close()
            server.should_exit = True


def _remove_socket(path: Path, identity: int) -> None:
    # Only our own socket: a new daemon may already have replaced it.
    try:
        if path.lstat().st_ino == identity:
            path.unlink()
    except FileNotFoundError:
        pass
