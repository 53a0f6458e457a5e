"""The runtime's side of running commands in containers: the exec server.

``BwrapRuntime.exec`` (``squish exec``, the health checks) asks an
``ExecServer``: one process (``exec_helper.py``, started on the first exec
and again if it ever died) that forks a runner per command. See that
script for what a runner does; here a request is sent, the output read
(at most ``EXEC_OUTPUT_LIMIT`` bytes kept), and the runner's control
channel followed: its pid first, its exit status at the end. An exec that
is cancelled shuts the channel, which makes the runner end the command's
whole group and reap it; one whose runner outlives its timeout by
``GRACE`` is killed.

Everything runs in the event loop's thread: the server's PDEATHSIG
follows the thread that spawned it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio

from squish.errors import RuntimeFailure
from squish.runtime import EXEC_OUTPUT_LIMIT, HELPER_ENV, ExecResult
from squish.runtime.kernel import Kernel, memfd

_HELPER = Path(__file__).with_name("exec_helper.py")
GRACE = 5.0
"""Past the command's own timeout (enforced by the runner), how long before the runner is killed."""
_KILL_WAIT = 2.0
_TIMED_OUT = 124


class ExecServer:
    def __init__(self, kernel: Kernel, seccomp_filter: Callable[[], bytes]) -> None:
        self._kernel = kernel
        self._filter = seccomp_filter
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: socket.socket | None = None

    def _server(self) -> socket.socket:
        """The socket to the running server, started (again) if need be."""
        if self._process is not None and self._process.poll() is None:
            assert self._requests is not None
            return self._requests
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        seccomp = -1
        try:
            # The default seccomp filter, read once by the server, loaded by
            # the runners of containers that have it.
            seccomp = memfd("seccomp", self._filter())
            # Its stderr is the runtime's (the daemon's log): what a runner
            # says goes to its exec's output, so only the server's own
            # failure would show there.
            self._process = subprocess.Popen(
                [sys.executable, "-S", str(_HELPER), str(os.getpid()), str(seccomp)],
                stdin=theirs.fileno(),
                pass_fds=(seccomp,),
                stdout=subprocess.DEVNULL,
                env=HELPER_ENV,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise RuntimeFailure(f"cannot start the exec helper: {exc}") from exc
        finally:
            theirs.close()
            if seccomp >= 0:
                os.close(seccomp)
        ours.setblocking(False)
        self._requests = ours
        return ours

    def close(self) -> None:
        """Stop the server (it exits on EOF); runners of execs in flight go with it."""
        if self._requests is not None:
            self._requests.close()
            self._requests = None
        if self._process is not None:
            try:
                self._process.wait(timeout=_KILL_WAIT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    async def sockets(self, sandbox: int, count: int, *, timeout: float) -> list[socket.socket]:
        """``count`` unconnected TCP sockets made in the network namespace of ``sandbox``.

        Non-blocking and close-on-exec. ``RuntimeFailure``, saying why, when
        the runner could not make them within ``timeout``.
        """
        out_r, ctl = await self._submit(
            {"sandbox": sandbox, "sockets": count}, socket.SOCK_SEQPACKET
        )
        fds: list[int] = []
        try:
            with ctl, anyio.move_on_after(timeout):
                # One message: the sockets; or the end of the channel, with
                # what went wrong on the output.
                while True:
                    await anyio.wait_readable(ctl)
                    try:
                        _, fds, _, _ = socket.recv_fds(
                            ctl, 16, count, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
                        )
                        break
                    except BlockingIOError:
                        continue
            if not fds:
                os.set_blocking(out_r, False)
                with contextlib.suppress(BlockingIOError):
                    said = os.read(out_r, 4096).decode(errors="replace").strip()
                    raise RuntimeFailure(said or "the exec helper made no sockets")
                raise RuntimeFailure(f"the exec helper made no sockets within {timeout:g} s")
        finally:
            os.close(out_r)
        return [socket.socket(fileno=fd) for fd in fds]

    async def _submit(self, request: dict[str, object], ctl_type: int) -> tuple[int, socket.socket]:
        """Hand ``request`` to the server; the read end of its runner's output, and its
        control channel (a socketpair of ``ctl_type``), both the caller's to close."""
        requests = self._server()
        # A file, not the message: an env of 128 KiB is more than a datagram.
        request_fd = memfd("exec", json.dumps(request).encode())
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        ctl, ctl_theirs = socket.socketpair(socket.AF_UNIX, ctl_type)
        try:
            fds = [request_fd, out_w, ctl_theirs.fileno()]
            while True:
                try:
                    socket.send_fds(requests, [b"x"], fds)
                    break
                except BlockingIOError:
                    await anyio.wait_writable(requests)
                except OSError as exc:
                    raise RuntimeFailure(f"the exec helper is gone: {exc}") from exc
        except BaseException:
            os.close(out_r)
            ctl.close()
            raise
        finally:
            os.close(request_fd)
            os.close(out_w)
            ctl_theirs.close()
        return out_r, ctl

    async def run(
        self,
        sandbox: int,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        timeout: float,
        rlimits: Sequence[tuple[int, int, int]] = (),
        seccomp: bool = True,
    ) -> ExecResult:
        """Run ``argv`` in the sandbox whose pid 1 is ``sandbox``, within ``timeout``.

        ``rlimits``: (RLIMIT_*, soft, hard) for the command, as the container's;
        ``seccomp``: whether it gets the default seccomp filter, as the container.
        """
        began = time.perf_counter()
        out_r, ctl = await self._submit(
            {"sandbox": sandbox, "argv": list(argv), "env": dict(env), "cwd": cwd}
            | {"timeout": timeout, "rlimits": [list(limit) for limit in rlimits]}
            | {"seccomp": seccomp},
            socket.SOCK_STREAM,
        )
        try:
            return await self._follow(ctl, out_r, timeout, began)
        finally:
            ctl.close()
            os.close(out_r)

    async def _follow(
        self, ctl: socket.socket, out_r: int, timeout: float, began: float
    ) -> ExecResult:
        ctl.setblocking(False)
        os.set_blocking(out_r, False)
        output = bytearray()
        said = bytearray()  # the control channel: "PID\n", then "CODE\n"
        truncated = False
        runner: int | None = None  # a pidfd, once the runner said its pid

        def drain() -> bool:
            """Read what output there is; False at end of file."""
            nonlocal truncated
            while True:
                try:
                    chunk = os.read(out_r, 65536)
                except BlockingIOError:
                    return True
                if not chunk:
                    return False
                room = EXEC_OUTPUT_LIMIT - len(output)
                output.extend(chunk[:room])
                truncated = truncated or len(chunk) > room

        async def listen() -> None:
            """Read the control channel until the runner closes it."""
            nonlocal runner
            while True:
                await anyio.wait_readable(ctl)
                try:
                    chunk = ctl.recv(64)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                said.extend(chunk)
                if runner is None and b"\n" in said:
                    with contextlib.suppress(ValueError, ProcessLookupError):
                        runner = self._kernel.pidfd_open(int(said.split(b"\n")[0]))

        code: int | None = None
        try:
            with anyio.move_on_after(timeout + GRACE) as overdue:
                async with anyio.create_task_group() as tg:

                    async def read() -> None:
                        while drain():
                            await anyio.wait_readable(out_r)

                    tg.start_soon(read)
                    await listen()
                    tg.cancel_scope.cancel()  # what a leftover child still holds open is not ours
            drain()
            lines = said.split(b"\n")
            if len(lines) >= 3 and lines[1].isdigit():
                code = int(lines[1])
            if runner is not None:
                # Its channel closes while it exits; it is gone just after.
                with anyio.move_on_after(_KILL_WAIT):
                    await anyio.wait_readable(runner)
        finally:
            if code is None:
                # Cancelled, or past its grace: the runner ends the command's
                # whole group when its channel is shut, and says so.
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(OSError):
                        ctl.shutdown(socket.SHUT_WR)
                    with anyio.move_on_after(_KILL_WAIT):
                        await listen()
                    if runner is not None:
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(runner, signal.SIGKILL)
            if runner is not None:
                os.close(runner)
        if code is None:
            # Not cancelled: the runner was killed past its grace, or died.
            code = 137 if overdue.cancelled_caught else 125
            output.extend(b"the exec helper ended without saying how the command did\n")
        return ExecResult(
            exit_code=code,
            output=output.decode(errors="replace"),
            seconds=time.perf_counter() - began,
            timed_out=code == _TIMED_OUT
            and output.endswith(f"timed out after {timeout:g} s\n".encode()),
            truncated=truncated,
        )
