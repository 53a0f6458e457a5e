"""Run commands inside running containers, as their own commands run.

Started once by ``BwrapRuntime`` (for ``squish exec`` and the health
checks), as a script, not a module of the package (standard library only,
``python -S``), and kept: the exec server. For each request it forks a
runner, so an exec costs a fork of this small process, not an interpreter
starting (25 ms of CPU a check, before).

The runtime sends each request on the server's stdin, a unix
``SOCK_SEQPACKET`` socket: three fds, a memfd with the request (JSON:
the sandbox's pid, argv, env, working directory, timeout), the write end of
the output pipe (the command's stdout and stderr) and a stream socket, the
runner's control channel. The server closes the stdin socket's end of
EOF and exits; it dies with the runtime's thread (PDEATHSIG), its runners
with it.

A runner joins every namespace of the container's sandbox (user, mount,
pid, net, uts, ipc, cgroup), so the command sees the container's root,
processes, network and hostname; it drops every capability, sets
no_new_privs, and spawns the command (a process joins a pid namespace only
through its children) with the container's environment, in its working
directory, with only fds 0 to 2. No shell is needed in the image.

A request for sockets (``"sockets": N``) is answered otherwise: the
runner joins the sandbox's network namespace (through the user namespace
that owns it), makes N TCP sockets there and sends them back on the
control channel (``make_sockets``), for the daemon's http and tcp health
checks.

On the control channel the runner of a command writes its pid, then, at
the end, the command's exit status (128+N for death by signal N; 124,
with ``timed out`` in the output, when its timeout struck; 125 when it
cannot enter the container). The command runs in a process group of its
own, and at the timeout the whole group is SIGKILLed (what it started
too). When the runtime shuts the channel (it gave up on the exec), the
runner ends the command's group the same way, reaps it, and says so:
nothing is left as a zombie.

Usage: exec_helper.py PARENT_PID SECCOMP_FD  (stdin: the socket; the fd: the default filter)
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_CAP_LAST = 63  # beyond the kernel's last capability, PR_CAPBSET_DROP says EINVAL
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# The user namespace first: it gives the capabilities the others need.
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_NS_GET_USERNS = 0xB701
_NAMESPACES = (
    ("user", _CLONE_NEWUSER),
    ("ipc", 0x08000000),
    ("uts", 0x04000000),
    ("net", _CLONE_NEWNET),
    ("cgroup", 0x02000000),
    ("pid", 0x20000000),
    ("mnt", 0x00020000),
)
_ALL_NAMESPACES = 0
for _, _flag in _NAMESPACES:
    _ALL_NAMESPACES |= _flag
TIMED_OUT = 124


def _load_libc() -> ctypes.CDLL:
    # By its soname: ctypes.util.find_library runs ldconfig and loads half
    # the standard library, which made every fork of the server (a runner
    # per exec) cost three times as much.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - a libc of another name
        from ctypes import util  # noqa: PLC0415 (only then: see above)

        return ctypes.CDLL(util.find_library("c"), use_errno=True)


_libc = _load_libc()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def join(sandbox: int) -> None:
    """Join every namespace of ``sandbox`` (opened first: joining mnt changes /proc).

    A container running as another user than root has its user namespace
    nested in the one its other namespaces belong to (bwrap's, or the
    network host's, mapping root): that one is joined first, for the
    capabilities over them, and the container's own last.
    """
    # All at once, through a pidfd (Linux 5.8): one call instead of seven
    # opens and seven setns. Refused (nothing joined) when the user
    # namespace is nested (its other namespaces are not its own) or the
    # kernel is older: then one by one.
    sandbox_fd = os.pidfd_open(sandbox)
    try:
        if _libc.setns(sandbox_fd, _ALL_NAMESPACES) == 0:
            return
    finally:
        os.close(sandbox_fd)
    fds = []
    for name, flag in _NAMESPACES:
        try:
            fds.append((name, flag, os.open(f"/proc/{sandbox}/ns/{name}", os.O_RDONLY)))
        except FileNotFoundError:
            if name != "cgroup":  # a kernel without cgroup namespaces
                raise
    net = next(fd for name, _, fd in fds if name == "net")
    owner = fcntl.ioctl(net, _NS_GET_USERNS)
    own = os.fstat(fds[0][2]).st_ino
    if os.fstat(owner).st_ino != own:
        fds = [("user", _CLONE_NEWUSER, owner), *fds[1:], fds[0]]
    else:
        os.close(owner)
    own_user = os.stat("/proc/self/ns/user").st_ino
    for name, flag, fd in fds:
        if name == "user" and os.fstat(fd).st_ino == own_user:
            continue  # already in it
        _check(_libc.setns(fd, flag), f"setns {name}")
        os.close(fd)


def join_network(sandbox: int) -> None:
    """Join only the network namespace of ``sandbox``, through the user namespace owning it.

    Enough to make sockets there: two ``setns``, none of the mount, pid and
    other namespaces a command needs.
    """
    net = os.open(f"/proc/{sandbox}/ns/net", os.O_RDONLY)
    try:
        owner = fcntl.ioctl(net, _NS_GET_USERNS)
        try:
            if os.fstat(owner).st_ino != os.stat("/proc/self/ns/user").st_ino:
                _check(_libc.setns(owner, _CLONE_NEWUSER), "setns user")
        finally:
            os.close(owner)
        _check(_libc.setns(net, _CLONE_NEWNET), "setns net")
    finally:
        os.close(net)


def drop_privileges() -> None:
    """No capabilities (none to regain: no_new_privs, an empty bounding set)."""
    for cap in range(_CAP_LAST + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def run(request: dict[str, Any], ctl: socket.socket) -> int:
    """Run the command; its exit status, once it ended, timed out, or ``ctl`` was shut.

    The runner makes itself what the command must be (no capabilities,
    no_new_privs, in the working directory) and spawns it (``posix_spawn``,
    a vfork: a fork of this interpreter cost more than the rest of an exec
    together) in a process group of its own, with Python's ignored signals
    set back to their defaults (a `yes | head` must end: yes dies of its
    SIGPIPE). It has only fds 0 to 2: everything else here is close-on-exec.
    Being in the container's pid namespace, it dies with the container.
    """
    argv: list[str] = list(request["argv"])
    env: dict[str, str] = dict(request["env"])
    cwd: str = request.get("cwd", "/")
    timeout = float(request["timeout"])
    drop_privileges()
    try:
        for rlimit, soft, hard in request.get("rlimits", []):  # the container's, as it started
            resource.setrlimit(rlimit, (soft, hard))
    except (OSError, ValueError) as exc:
        _say(f"cannot set the container's limits: {exc}")
        return 125
    if request.get("seccomp", True):
        try:
            _load_filter()  # the container's own, after no_new_privs (which it needs)
        except OSError as exc:
            _say(f"cannot load the container's seccomp filter: {exc}")
            return 125
    try:
        os.chdir(cwd)
    except OSError as exc:
        _say(f"{cwd}: {exc.strerror or exc}")
        return 126
    program = argv[0]
    if "/" not in program:
        found = shutil.which(program, path=env.get("PATH", ""))
        if found is None:
            _say(f"{program}: not found in the container's PATH")
            return 127
        program = found
    try:
        child = os.posix_spawn(
            program,
            argv,
            env,
            setpgroup=0,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGCHLD),
            setsigmask=(),
        )
    except OSError as exc:
        _say(f"{argv[0]}: {exc.strerror or exc}")
        return 126 if not isinstance(exc, FileNotFoundError) else 127
    exited = os.pidfd_open(child)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        ready: list[int] = (
            select.select([exited, ctl.fileno()], [], [], left)[0] if left > 0 else []
        )
        if exited in ready:
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
        if ctl.fileno() in ready and ctl.recv(1):
            continue  # nothing else is ever sent; only EOF means something
        # Timed out, or the runtime shut the channel: the whole group goes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
        os.waitpid(child, 0)
        if ctl.fileno() in ready:
            return 128 + signal.SIGTERM
        _say(f"timed out after {timeout:g} s")
        return TIMED_OUT


class _SockFilterProgram(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_FILTER = b""  # the default seccomp filter (BPF), read at the server's start


def _load_filter() -> None:
    if not _FILTER:
        raise OSError("the exec server was given no filter")
    program = _SockFilterProgram(len(_FILTER) // 8, _FILTER)
    _check(
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0),
        "seccomp",
    )


def _say(line: str) -> None:
    """A line on fd 2 (the exec's output), unbuffered: runners leave by os._exit."""
    os.write(2, (line + "\n").encode(errors="replace"))


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def runner(server: int, request_fd: int, out: int, ctl: socket.socket) -> int:
    """One exec, in a fork of the server: join, run, report on ``ctl``."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Dies with the server (which dies with the runtime), and the command
    # with it (its own PDEATHSIG).
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server:
        return 1
    os.lseek(request_fd, 0, os.SEEK_SET)
    request = json.loads(_read_all(request_fd))
    os.close(request_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    if "sockets" in request:
        return make_sockets(int(request["sandbox"]), int(request["sockets"]), ctl)
    ctl.sendall(f"{os.getpid()}\n".encode())
    try:
        join(int(request["sandbox"]))
    except OSError as exc:
        _say(f"cannot enter the container: {exc}")
        code = 125
    else:
        # Joined as root of its user namespace: so the privileges stay, and
        # the credentials change, PDEATHSIG is armed again.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        code = run(request, ctl)
    ctl.sendall(f"{code}\n".encode())
    return code


_MAX_SOCKETS = 64


def make_sockets(sandbox: int, count: int, ctl: socket.socket) -> int:
    """Make ``count`` TCP sockets in the sandbox's network namespace and send them on ``ctl``.

    For the daemon's own health checks (http, tcp): a socket belongs to the
    namespace it was made in, whoever holds it, so the daemon connects
    through them into the container with no process started there. They
    go in one message ("sockets"); what went wrong instead, on fd 2.
    """
    try:
        join_network(sandbox)
        made = [
            socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            for _ in range(max(1, min(count, _MAX_SOCKETS)))
        ]
    except (FileNotFoundError, ProcessLookupError):
        _say(f"cannot make sockets in the container: its sandbox (pid {sandbox}) is gone")
        return 125
    except OSError as exc:
        _say(f"cannot make sockets in the container: {exc}")
        return 125
    socket.send_fds(ctl, [b"sockets"], [each.fileno() for each in made])
    return 0


def _reap(signum: int, frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def serve(requests: socket.socket) -> None:
    """Fork a runner for each request, until the runtime closes the socket."""
    # Runners are reaped as they end (so their CPU counts as this process's
    # children's, in /proc: what the benchmarks read).
    signal.signal(signal.SIGCHLD, _reap)
    server = os.getpid()
    while True:
        message, fds, _, _ = socket.recv_fds(requests, 16, 3)
        if not message:
            return  # the runtime closed it; runners in flight die with it (PDEATHSIG)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        for fd in fds:
            os.set_inheritable(fd, False)  # none of them reaches a command
        request_fd, out, ctl_fd = fds
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                requests.close()
                code = runner(server, request_fd, out, socket.socket(fileno=ctl_fd))
            except BaseException as exc:  # a runner must never return into the server's loop
                with contextlib.suppress(OSError):
                    _say(f"exec failed: {exc}")
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def main(args: list[str]) -> int:
    global _FILTER  # noqa: PLW0603 (read once, before any runner is forked)
    parent = int(args[0])
    if len(args) > 1:
        seccomp = int(args[1])
        _FILTER = _read_all(seccomp)
        os.close(seccomp)
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != parent:
        return 1  # the runtime died before PDEATHSIG was armed
    requests = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    serve(requests)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
