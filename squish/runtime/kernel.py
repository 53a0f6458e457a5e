"""The Linux calls the real runtime makes beyond spawning processes, behind one protocol.

``Kernel`` is what ``BwrapRuntime`` and ``Slirp`` call into: signals to a
pid, a pidfd or a process group, reaping, the subreaper bit, user namespace
id maps, and what ``/proc`` says about a process's children and who owns
what. ``LinuxKernel`` makes the real calls; ``squish.runtime.fake_kernel``
ships a recording fake, so that the runtime's start and stop decisions are
tested without bwrap (as youki's ``Syscall`` trait and its
``TestHelperSyscall``). The daemon's metrics read a container's process tree
through ``LinuxKernel.children`` too: one reader of the children files.

Spawning (``subprocess.Popen``) is not here: a fake of it would be a fake
bwrap, and the real runtime's tests run the real one.

Errors are the kernel's own (``OSError`` and its subclasses, such as
``ProcessLookupError`` for a process that is gone); the callers, which know
what they were doing, translate them into ``RuntimeFailure``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import resource
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_PR_SET_CHILD_SUBREAPER = 36
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1), linux/nsfs.h

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Process:
    """A process as ``/proc`` shows it: enough to recognise a sandbox of ours."""

    pid: int
    uid: int  # the owner of its /proc entry
    comm: bytes  # the kernel's short name, with its newline: b"bwrap\n"
    cmdline: bytes  # argv, each argument ending in NUL


class Kernel(Protocol):
    """The calls into the kernel that the runtime makes, other than spawning."""

    def become_subreaper(self) -> None:
        """Adopt orphaned descendants instead of letting them go to the host's init."""
        ...

    def owning_userns(self, ns_fd: int) -> int:
        """A new fd for the user namespace that owns namespace ``ns_fd``."""
        ...

    def map_ids(self, pid: int, inside: tuple[int, int], outside: tuple[int, int]) -> None:
        """Map uid, gid ``inside`` ``pid``'s user namespace to ``outside`` ones (one each)."""
        ...

    def set_rlimit(self, pid: int, rlimit: int, soft: int, hard: int) -> None:
        """Set ``pid``'s resource limit ``rlimit`` (``resource.RLIMIT_*``); ``ValueError``
        or ``PermissionError`` above what may be set, ``ProcessLookupError`` if it is gone."""
        ...

    def children(self, pid: int) -> list[int]:
        """The direct children of ``pid``, forked by any of its threads; [] if it is gone."""
        ...

    def processes_of(self, uid: int) -> Iterator[Process]:
        """Every process whose ``/proc`` entry ``uid`` owns (those gone meanwhile skipped)."""
        ...

    def pidfd_open(self, pid: int) -> int:
        """A pidfd for ``pid`` (readable once it has exited); ProcessLookupError if gone."""
        ...

    def signal_pidfd(self, pidfd: int, sig: signal.Signals) -> None:
        """Send ``sig`` to the process of ``pidfd``; ProcessLookupError once it has exited."""
        ...

    def kill(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to ``pid``."""
        ...

    def kill_group(self, pgid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of the process group ``pgid``."""
        ...

    def reap_pidfd(self, pidfd: int) -> None:
        """Reap the exited child of ``pidfd`` if it has exited (never blocks).

        ChildProcessError when it is not (or no longer) a child of ours.
        """
        ...

    def reap_group(self, pgid: int) -> int:
        """Reap one exited child in process group ``pgid``: its pid, or 0 if none has exited.

        Never blocks; ChildProcessError when no child of ours is in the group.
        """
        ...


class LinuxKernel:
    """The real calls (``Kernel``)."""

    def become_subreaper(self) -> None:
        # bwrap's monitor process can exit before the sandbox's pid 1 has
        # been reaped; as a subreaper we inherit that pid 1 and can wait
        # until it is really gone, so "stopped" means no process of the
        # container is left.
        if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def owning_userns(self, ns_fd: int) -> int:
        return fcntl.ioctl(ns_fd, _NS_GET_USERNS)

    def map_ids(self, pid: int, inside: tuple[int, int], outside: tuple[int, int]) -> None:
        # An unprivileged process may write exactly one mapping of its own
        # ids, and only after denying setgroups.
        _write_proc(f"/proc/{pid}/uid_map", f"{inside[0]} {outside[0]} 1\n")
        _write_proc(f"/proc/{pid}/setgroups", "deny")
        _write_proc(f"/proc/{pid}/gid_map", f"{inside[1]} {outside[1]} 1\n")

    def set_rlimit(self, pid: int, rlimit: int, soft: int, hard: int) -> None:
        resource.prlimit(pid, rlimit, (soft, hard))

    def children(self, pid: int) -> list[int]:
        # The children file (CONFIG_PROC_CHILDREN) is per thread: a child
        # forked by a thread other than the main one is listed only under
        # that thread, so every thread's is read.
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            return []
        found: list[int] = []
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    found.extend(int(part) for part in f.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
        return found

    def processes_of(self, uid: int) -> Iterator[Process]:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                owner = entry.stat().st_uid
                if owner != uid:
                    continue
                comm = (entry / "comm").read_bytes()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            yield Process(int(entry.name), owner, comm, cmdline)

    def pidfd_open(self, pid: int) -> int:
        return os.pidfd_open(pid)

    def signal_pidfd(self, pidfd: int, sig: signal.Signals) -> None:
        signal.pidfd_send_signal(pidfd, sig)

    def kill(self, pid: int, sig: signal.Signals) -> None:
        os.kill(pid, sig)

    def kill_group(self, pgid: int, sig: signal.Signals) -> None:
        os.killpg(pgid, sig)

    def reap_pidfd(self, pidfd: int) -> None:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)

    def reap_group(self, pgid: int) -> int:
        pid, _ = os.waitpid(-pgid, os.WNOHANG)
        return pid


def memfd(name: str, data: bytes) -> int:
    """A close-on-exec memfd holding ``data``, at its start (the caller closes it).

    How the runtime hands a helper more than a pipe or a datagram would
    hold before it is read: bwrap's arguments, a seccomp filter, an exec's
    request.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_proc(path: str, data: str) -> None:
    # One write() per file: the kernel accepts an id map only in one go, and
    # a buffered file object would hide a failed write in close().
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
