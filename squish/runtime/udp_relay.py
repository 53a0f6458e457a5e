"""UDP port forwarding into a container, as a tiny relay process.

Started by ``BwrapRuntime`` (one process per UDP forward) as a script, not as
a module of the package, so that it starts in a few milliseconds.

Why not slirp4netns's own UDP forwarding: with ``--disable-host-loopback``
(which keeps containers away from services on the host's 127.0.0.1),
libslirp drops every UDP reply addressed to a client on the host's loopback,
because the reply's destination 10.0.2.2 *is* the host's loopback
(podman issue #4586). TCP is unaffected, since replies travel on the
accepted connection.

So, as rootlesskit's port driver does: the runtime binds the host socket and
hands it over; the relay joins the container's user and network namespaces
(it is single-threaded, which joining a user namespace requires), and for
each client opens a socket *inside* the container connected to
127.0.0.1:<container port>. Datagrams go both ways; a flow idle for a
minute is forgotten. The relay dies with the runtime (PDEATHSIG).

Usage: udp_relay.py PARENT_PID USERNS_FD NETNS_FD HOST_SOCKET_FD CONTAINER_PORT
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import selectors
import signal
import socket
import sys
import time

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_IDLE = 60.0


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def relay(host: socket.socket, port: int) -> None:
    selector = selectors.DefaultSelector()
    selector.register(host, selectors.EVENT_READ, None)
    flows: dict[tuple[str, int], socket.socket] = {}
    last_used: dict[tuple[str, int], float] = {}
    while True:
        for key, _ in selector.select(timeout=_IDLE / 4):
            client = key.data
            if client is None:
                data, client = host.recvfrom(65535)
                inner = flows.get(client)
                if inner is None:
                    inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    inner.connect(("127.0.0.1", port))
                    flows[client] = inner
                    selector.register(inner, selectors.EVENT_READ, client)
                # Nothing listening in the container (yet) is like a lost datagram.
                with contextlib.suppress(ConnectionRefusedError):
                    inner.send(data)
            else:
                try:
                    data = key.fileobj.recv(65535)  # type: ignore[union-attr]
                except ConnectionRefusedError:
                    continue
                host.sendto(data, client)
            last_used[client] = time.monotonic()
        stale = [c for c, at in last_used.items() if time.monotonic() - at > _IDLE]
        for client in stale:
            selector.unregister(flows[client])
            flows.pop(client).close()
            del last_used[client]


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    parent, userns_fd, netns_fd, host_fd, port = (int(arg) for arg in argv)
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != parent:
        return 1  # the runtime died before PDEATHSIG was armed
    host = socket.socket(fileno=host_fd)  # bound in the host's namespace, stays there
    _check(libc.setns(userns_fd, _CLONE_NEWUSER), "setns user")
    _check(libc.setns(netns_fd, _CLONE_NEWNET), "setns net")
    os.close(userns_fd)
    os.close(netns_fd)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    relay(host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
