"""The bwrap command line for a container: pure, sync, tested with tables.

Called by ``BwrapRuntime.start``. The file descriptors are the runtime's
handshake with bwrap (see ``bwrap_runtime`` for the dance):

- ``--info-fd``: bwrap writes the sandbox's pid 1 (as seen from the host).
- ``--userns`` (containers on named networks only): the network host's user
  namespace, which the sandbox is made in instead of a new one of its own,
  so that the network host can wire its network namespace
  (``squish.runtime.networks``). Root inside is the daemon's user outside
  there too, and the command has no capabilities in it. bwrap never closes
  that fd; given as ``--sync-fd`` as well, it is closed before the command
  runs.
- ``--userns-block-fd`` (networked containers only): bwrap waits until the
  runtime has written the user namespace's uid/gid maps. The runtime writes
  them itself (instead of letting bwrap do it inside the child) so that they
  exist before slirp4netns joins the namespace.
- ``--block-fd``: bwrap waits with the command until the network is up; it
  reads the fd once its mounts are done and closes it, which tells the
  runtime the sandbox is set up (the runtime's end is a socket, which reads
  EOF once every copy of bwrap's is closed). A container without network
  has it released before bwrap starts, and no ``--userns-block-fd``.

For a networked container the two blocks are one fd, read twice, a byte
each. bwrap's monitor reads the first byte from ``--userns-block-fd`` and
closes it, but the sandbox was cloned before that and keeps its copy, which
bwrap never closes there: a fd of its own, it would reach the command (runc's
fd-leak check). The sandbox does close ``--block-fd`` after reading it, so
giving both options the same fd closes it everywhere. The order is safe: the
sandbox reads its byte only after the monitor has read its own and let the
sandbox go on.

A container without network needs no ``--userns-block-fd``: bwrap maps uid
0 to the user itself, exactly as the runtime would, and runs at full speed.

bwrap gets its options through ``--args FD`` (see ``args_data``), not its
argv: bwrap is the container's pid 1, and ``/proc/1/cmdline`` would show the
host paths of every bind mount to the container. It shows ``bwrap --args N
-- COMMAND ARGS...`` instead (bwrap reads only options from the file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from squish.runtime import DEFAULT_PATH, ContainerSpec
from squish.runtime.mounts import HostView, Pinned, Special, plan_mounts

SECRETS_DIR = "/run/secrets"
SECRETS_TMPFS = 8 << 20  # bytes: room for 16 values of the largest size


@dataclass(frozen=True)
class HandshakeFds:
    """The child's ends of the runtime <-> bwrap pipes (the two blocks may share one)."""

    info: int
    userns_block: int | None = None
    block: int | None = None
    userns: int | None = None  # join this user namespace instead of making one
    seccomp: int | None = None  # the seccomp filter (BPF) to load before the command
    secrets: tuple[tuple[str, int], ...] = ()  # (key, fd of its value) for /run/secrets


def container_env(spec: ContainerSpec) -> dict[str, str]:
    """Exactly the squishfile's env, plus a default PATH when it sets none."""
    env = {"PATH": DEFAULT_PATH}
    env.update(spec.env)
    return env


def bwrap_argv(
    spec: ContainerSpec,
    fds: HandshakeFds,
    *,
    bwrap: str = "bwrap",
    host: HostView | None = None,
    pinned: Pinned | None = None,
) -> list[str]:
    """Build the full argv that runs ``spec`` under bwrap (``pinned``: see ``plan_mounts``)."""
    argv = [bwrap]
    if fds.userns is not None:
        # The same fd as --sync-fd too: bwrap never closes a --userns fd, and
        # would pass it on to the command; the sandbox closes its --sync-fd
        # before it execs the command (its pid 1 keeps it, as bwrap's own).
        argv += ["--userns", str(fds.userns), "--sync-fd", str(fds.userns)]
    else:
        argv += ["--unshare-user"]
    argv += [
        # Every namespace; the net namespace too when the container has no
        # network, so that it sees nothing but its own loopback.
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        # uid 0 inside (or the squishfile's user), the daemon's user outside;
        # no capabilities (bwrap drops them all and sets no_new_privs). A
        # user namespace of bwrap's own maps root first (devpts needs it), and
        # another inside it then maps the user, if it is not root.
        "--uid",
        str(spec.uid),
        "--gid",
        str(spec.gid),
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        # A new session: the command cannot TIOCSTI into the daemon's tty.
        "--new-session",
        "--info-fd",
        str(fds.info),
    ]
    if fds.userns_block is not None:
        argv += ["--userns-block-fd", str(fds.userns_block)]
    if fds.block is not None:
        argv += ["--block-fd", str(fds.block)]
    if fds.seccomp is not None:
        argv += ["--seccomp", str(fds.seccomp)]
    argv += ["--hostname", spec.name]
    specials = [
        Special("/proc", "proc"),
        Special("/dev", "dev"),
        Special("/tmp", "tmpfs", size=spec.tmp_size),  # noqa: S108 (inside the container)
    ]
    if fds.secrets:
        # A tmpfs of the container's own: never the shared base, never a layer.
        specials.append(Special(SECRETS_DIR, "tmpfs", size=SECRETS_TMPFS))
    argv += plan_mounts(spec.rootfs, spec.mounts, specials, host, pinned)
    for key, fd in fds.secrets:
        # bwrap copies the value from the fd (and closes it), owned by the user.
        argv += ["--perms", "0400", "--file", str(fd), f"{SECRETS_DIR}/{key}"]
    if fds.secrets:
        argv += ["--remount-ro", SECRETS_DIR]  # mounted read-only, as a secret is
    argv += ["--chdir", spec.workdir, "--clearenv"]
    for key, value in container_env(spec).items():
        argv += ["--setenv", key, value]
    argv += ["--", spec.command, *spec.args]
    return argv


def args_data(argv: Sequence[str]) -> bytes:
    """bwrap options as ``bwrap --args FD`` reads them: each one NUL-terminated."""
    return b"".join(os.fsencode(arg) + b"\0" for arg in argv)
