"""The few Linux calls the real runtime makes beyond spawning processes.

Called by ``bwrap_runtime`` and ``slirp``. Every ``OSError`` is translated
into ``RuntimeFailure`` by the callers, which know what they were doing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1), linux/nsfs.h

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def become_subreaper() -> None:
    """Adopt orphaned descendants instead of letting them go to the host's init.

    bwrap's monitor process can exit before the sandbox's pid 1 has been
    reaped; as a subreaper we inherit that pid 1 and can wait until it is
    really gone, so "stopped" means no process of the container is left.
    """
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def owning_userns(ns_fd: int) -> int:
    """Return a new fd for the user namespace that owns namespace ``ns_fd``."""
    return fcntl.ioctl(ns_fd, _NS_GET_USERNS)


def _write_proc(path: str, data: str) -> None:
    # One write() per file: the kernel accepts an id map only in one go, and
    # a buffered file object would hide a failed write in close().
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def map_root_to(pid: int, uid: int, gid: int) -> None:
    """Map uid/gid 0 of ``pid``'s user namespace to ``uid``/``gid`` outside.

    An unprivileged process may write exactly one mapping of its own ids,
    and only after denying setgroups.
    """
    _write_proc(f"/proc/{pid}/uid_map", f"0 {uid} 1\n")
    _write_proc(f"/proc/{pid}/setgroups", "deny")
    _write_proc(f"/proc/{pid}/gid_map", f"0 {gid} 1\n")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (needs CONFIG_PROC_CHILDREN)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(part) for part in text.split()]
