"""slirp4netns: user-mode networking for one container, and its API socket.

Called by ``BwrapRuntime``, with its ``Kernel``. One slirp4netns process per networked container
joins the container's user and network namespaces, configures ``tap0`` with
10.0.2.100/24, gateway 10.0.2.2 and DNS 10.0.2.3, and forwards host TCP ports
into the container through its JSON API socket, which lets forwards be added
and removed while the container runs. It runs with its seccomp filter and its
sandbox (an empty mount namespace, no capabilities) enabled, and with none of
the daemon's environment.

Its lifetime is tied to the runtime's by ``--exit-fd``: slirp4netns exits as
soon as the pipe's write end closes, which the kernel does when the daemon
dies, however it dies. The other way round, the runtime holds a pidfd of it
and notices at once when it dies (``wait_exited``). Every call to its API
has a deadline: a slirp4netns that no longer answers is an error, not a
port update that waits forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from squish.errors import PortInUse, RuntimeFailure
from squish.runtime import HELPER_ENV
from squish.runtime.kernel import Kernel, LinuxKernel

MTU = 65520
GUEST_ADDR = "10.0.2.100"
# How long one API call may take; it answers in well under a millisecond.
API_TIMEOUT = 5.0


@dataclass
class Slirp:
    """A running slirp4netns and the fds that tie it to us."""

    process: subprocess.Popen[bytes]
    api_socket: Path
    exit_w: int  # closing this makes slirp4netns exit
    pidfd: int  # readable once it has exited

    @classmethod
    async def start(
        cls,
        *,
        pid: int,
        api_socket: Path,
        log_path: Path,
        slirp4netns: str = "slirp4netns",
        kernel: Kernel | None = None,
        namespaces: tuple[int, int] | None = None,
    ) -> Slirp:
        """Start it for the network namespace of ``pid``, joining ``pid``'s user namespace.

        ``namespaces``: (user, network) namespace fds to join instead, for a
        sandbox whose user namespace does not map root (a container running
        as another user: bwrap nests that user's namespace in one mapping
        root, which owns the network namespace). slirp4netns's sandbox needs
        to be root where it runs: it is started in that user namespace, by
        nsenter (as itself: it is root there), and joins the network one by path.
        """
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        prefix: list[str] = []
        target = [str(pid)]
        passed = [ready_w, exit_r]
        if namespaces is not None:
            userns, netns = namespaces
            prefix = ["nsenter", "--preserve-credentials", f"--user=/proc/self/fd/{userns}", "--"]
            target = ["--netns-type=path", f"/proc/self/fd/{netns}"]
            passed += namespaces
        argv = [
            *prefix,
            slirp4netns,
            "--configure",
            f"--mtu={MTU}",
            "--disable-host-loopback",
            "--enable-seccomp",
            "--enable-sandbox",
            "--ready-fd",
            str(ready_w),
            "--exit-fd",
            str(exit_r),
            "--api-socket",
            str(api_socket),
            # By pid, not by namespace paths: slirp4netns then joins the
            # pid's user namespace itself, which its sandbox needs
            # (--enable-sandbox fails with --userns-path, slirp4netns #317).
            # The pid is the sandbox's pid 1, held on bwrap's --block-fd.
            *target,
            "tap0",
        ]
        try:
            # Its chatter (one line per API call) stays out of the container's
            # log; it goes to a file in the container's run directory.
            with log_path.open("ab") as log:
                # In the loop's thread, like bwrap; exiting is tied to --exit-fd.
                process = subprocess.Popen(  # noqa: ASYNC220
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=passed,
                    env=HELPER_ENV,
                    start_new_session=True,
                )
        except OSError as exc:
            for fd in (ready_r, ready_w, exit_r, exit_w):
                os.close(fd)
            raise RuntimeFailure(f"cannot run slirp4netns: {exc}") from exc
        os.close(ready_w)
        os.close(exit_r)
        kernel = kernel if kernel is not None else LinuxKernel()
        slirp = cls(process, api_socket, exit_w, kernel.pidfd_open(process.pid))
        try:
            await anyio.wait_readable(ready_r)
            ready = os.read(ready_r, 1)
        except BaseException:
            # Cancelled (the start's deadline) while it set the network up.
            with anyio.CancelScope(shield=True):
                await slirp.close()
            raise
        finally:
            os.close(ready_r)
        if ready != b"1":
            await slirp.close()
            # A few lines, on the failure path only: not worth a thread.
            said = log_path.read_text(errors="replace").strip().splitlines()  # noqa: ASYNC240
            # Its warnings (seccomp is "experimental") are not why it failed.
            said = [line for line in said if not line.startswith("WARNING: ")] or said
            hint = "" if _tun_open_to_all() else "; is /dev/net/tun mode 0666?"
            raise RuntimeFailure(
                f"slirp4netns failed to set up the network ({said[-1] if said else 'no message'}"
                f"{hint})"
            )
        return slirp

    async def wait_exited(self) -> None:
        """Return once slirp4netns has exited (for any reason), and reap it."""
        # On a copy of the pidfd: close() waits on the pidfd itself, maybe
        # before a cancelled wait here has let go of it.
        pidfd = os.dup(self.pidfd)
        try:
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        self.process.poll()

    def describe_exit(self) -> str:
        """How it ended, in words: "was killed by SIGKILL", "exited with code 1"."""
        code = self.process.poll()
        if code is None:
            return "is running"
        if code < 0:
            with_name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            return f"was killed by {with_name}"
        return f"exited with code {code}"

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.process.poll() is not None:
            raise RuntimeFailure(f"slirp4netns API: slirp4netns {self.describe_exit()}")
        try:
            with anyio.fail_after(API_TIMEOUT):
                async with await anyio.connect_unix(str(self.api_socket)) as stream:
                    await stream.send(json.dumps(request).encode())
                    await stream.send_eof()
                    reply = b""
                    async for chunk in stream:
                        reply += chunk
        except TimeoutError:
            raise RuntimeFailure(f"slirp4netns API: no answer within {API_TIMEOUT:g} s") from None
        except (OSError, anyio.BrokenResourceError) as exc:
            raise RuntimeFailure(f"slirp4netns API: {exc}") from exc
        try:
            decoded: dict[str, Any] = json.loads(reply)
        except ValueError as exc:
            raise RuntimeFailure(f"slirp4netns API: unreadable reply {reply[:80]!r}") from exc
        return decoded

    async def add_forward(
        self,
        protocol: str,
        host_ip: str,
        host_port: int,
        guest_port: int,
        *,
        guest_addr: str = GUEST_ADDR,
    ) -> int:
        """Forward ``host_ip:host_port`` to ``guest_addr``; returns the forward's id."""
        reply = await self._call(
            {
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": protocol,
                    "host_addr": host_ip,
                    "host_port": host_port,
                    "guest_addr": guest_addr,
                    "guest_port": guest_port,
                },
            }
        )
        if "error" in reply:
            desc = str(reply["error"].get("desc", reply["error"]))
            # libslirp says only "slirp_add_hostfwd failed"; what fails there
            # is binding the host socket, i.e. someone took the port since
            # the runtime checked it.
            if "add_hostfwd failed" in desc or "bind" in desc.lower() or "in use" in desc.lower():
                raise PortInUse(f"host port {host_ip}:{host_port}/{protocol} is already in use")
            raise RuntimeFailure(f"slirp4netns cannot forward {host_port}/{protocol}: {desc}")
        return int(reply["return"]["id"])

    async def remove_forward(self, forward_id: int) -> None:
        reply = await self._call({"execute": "remove_hostfwd", "arguments": {"id": forward_id}})
        if "error" in reply:
            raise RuntimeFailure(
                f"slirp4netns cannot remove forward {forward_id}: {reply['error']}"
            )

    async def close(self) -> None:
        """Make slirp4netns exit and wait until it has, then remove its socket."""
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        if self.pidfd < 0:
            return
        try:
            with anyio.move_on_after(2):
                await anyio.wait_readable(self.pidfd)
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
        finally:
            os.close(self.pidfd)
            self.pidfd = -1
        self.api_socket.unlink(missing_ok=True)


def _tun_open_to_all() -> bool:
    """Whether /dev/net/tun is read-write for everyone, as rootless slirp4netns needs."""
    try:
        return os.stat("/dev/net/tun").st_mode & 0o006 == 0o006
    except OSError:
        return False
