"""Tell systemd how the daemon is doing: the sd_notify(3) protocol, without libsystemd.

Called by the daemon: ``ready()`` once its API serves and the reconciler runs,
``stopping()`` when a signal asks it to stop. Under a ``Type=notify`` unit
(``deploy/systemd/``) systemd then starts units ordered after squish only once
the socket answers, and shows "deactivating" while containers are being
stopped; anywhere else ``$NOTIFY_SOCKET`` is unset and every call is a no-op.

The protocol is one datagram of newline-separated ``KEY=value`` assignments
to the AF_UNIX socket named by ``$NOTIFY_SOCKET``: a path, or ``@name`` for
the abstract namespace. Notifying is best effort by design: a missing or
refusing socket is logged at debug level and reported as False, never raised,
because a daemon must not fail over telling its supervisor it is alive.

``$NOTIFY_SOCKET`` is left in the environment: containers never see it (bwrap
runs them with ``--clearenv``), and systemd's default ``NotifyAccess=main``
ignores any other process that might write to it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("squish.sdnotify")

# systemd reads the datagram as soon as it arrives; the timeout only bounds
# the unlikely case of a full receive queue on a hung manager.
_SEND_TIMEOUT = 1.0


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``.

    True when the datagram was sent; False when there is no socket to tell
    (not run by systemd) or sending failed.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        # systemd 254+ may also hand out "vsock:CID:PORT" (for VMs); squish
        # runs on the host, so that is not a case worth a dependency.
        log.debug("NOTIFY_SOCKET=%r: unsupported address, not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.debug("NOTIFY_SOCKET=%r: cannot send %r: %s", address, state, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Start-up is done: the API answers and the reconciler runs."""
    return notify("READY=1" if status is None else f"READY=1\n{_status_line(status)}")


def stopping() -> bool:
    """Shutdown has begun (containers are being stopped)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A one-line status that ``systemctl status`` shows."""
    return notify(_status_line(text))


def _status_line(text: str) -> str:
    # A newline would end the assignment and start another one: the status
    # could then set READY=1 or MAINPID= by accident.
    return "STATUS=" + " ".join(text.splitlines())
