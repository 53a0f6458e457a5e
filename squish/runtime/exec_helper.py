"""Run one command inside a running container, as its own command runs.

Started by ``BwrapRuntime.exec`` (``squish exec``, and later the health
checks) as a script, not a module of the package (standard library only,
``python -S``), so that it starts in a few milliseconds. It joins every
namespace of the container's sandbox (user, mount, pid, net, uts, ipc,
cgroup), so the command sees the container's root, processes, network and
hostname; it forks once (a process joins a pid namespace only through its
children), and the child drops every capability, sets no_new_privs, keeps
only fds 0 to 2, and execs the command with the container's environment,
in its working directory. No shell is needed in the image.

A timeout is enforced here: the command runs in a process group of its
own, and at the deadline the whole group is SIGKILLed (what it started
too). The helper's exit status is the command's (128+N for death by signal
N); 124 with ``timed out`` on stderr when the deadline struck. A SIGTERM
(the runtime cancelled the exec) ends the command's group and the helper,
reaped: nothing is left as a zombie for the runtime. It dies with the
runtime's thread (PDEATHSIG), and the command with it.

Usage: exec_helper.py PARENT_PID SANDBOX_PID TIMEOUT < {"argv": [...], "env": {...}}
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_CAP_LAST = 63  # beyond the kernel's last capability, PR_CAPBSET_DROP says EINVAL
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# The user namespace first: it gives the capabilities the others need.
_CLONE_NEWUSER = 0x10000000
_NS_GET_USERNS = 0xB701
_NAMESPACES = (
    ("user", _CLONE_NEWUSER),
    ("ipc", 0x08000000),
    ("uts", 0x04000000),
    ("net", 0x40000000),
    ("cgroup", 0x02000000),
    ("pid", 0x20000000),
    ("mnt", 0x00020000),
)
TIMED_OUT = 124

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


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


def drop_privileges() -> None:
    """No capabilities (none to regain: no_new_privs, an empty bounding set)."""
    for cap in range(_CAP_LAST + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def run(argv: list[str], env: dict[str, str], cwd: str, timeout: float) -> int:
    child = 0

    def end(signum: int, frame: object) -> None:
        """SIGTERM (the runtime gave up on us): take the command's group along."""
        if child:
            os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
        os._exit(128 + signum)

    # Before the fork: a SIGTERM at any moment from here leaves no orphan.
    signal.signal(signal.SIGTERM, end)
    child = os.fork()
    if child == 0:
        try:
            # What Python ignores, the command must not inherit ignored (a
            # `yes | head` would never end: yes would not die of its SIGPIPE).
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.setpgid(0, 0)
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            drop_privileges()
            os.closerange(3, 65536)
            os.chdir(cwd)
            program = argv[0]
            if "/" not in program:
                found = shutil.which(program, path=env.get("PATH", ""))
                if found is None:
                    sys.stderr.write(f"{program}: not found in the container's PATH\n")
                    os._exit(127)
                program = found
            os.execve(program, argv, env)  # noqa: S606 (the container's command, no shell)
        except OSError as exc:
            sys.stderr.write(f"{argv[0]}: {exc.strerror or exc}\n")
            os._exit(126 if not isinstance(exc, FileNotFoundError) else 127)
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
        if time.monotonic() >= deadline:
            os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
            sys.stderr.write(f"timed out after {timeout:g} s\n")
            return TIMED_OUT
        time.sleep(0.002)


def main(args: list[str]) -> int:
    parent, sandbox, timeout = int(args[0]), int(args[1]), float(args[2])
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != parent:
        return 1  # the runtime died before PDEATHSIG was armed
    request = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        join(sandbox)
    except OSError as exc:
        sys.stderr.write(f"cannot enter the container: {exc}\n")
        return 125
    # Joined as root of its user namespace: so the privileges stay, and the
    # credentials change, PDEATHSIG is armed again.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return run(list(request["argv"]), dict(request["env"]), request.get("cwd", "/"), timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
