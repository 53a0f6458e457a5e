"""The real runtime: containers as bwrap sandboxes with slirp4netns networking.

Used by the daemon and the CLI through the ``Runtime`` protocol. Must run in
the event loop's thread of the process that owns the containers: bwrap's
``--die-with-parent`` fires when the *thread* that spawned it exits, so
spawning from a worker thread would kill containers when the thread pool
retires that thread.

Starting a networked container is a handshake with bwrap over pipes:

1. bwrap clones its sandbox (new user, mount, pid, uts, ipc and net
   namespaces) and writes the sandbox's pid 1 to ``--info-fd``; it then waits
   on ``--userns-block-fd``.
2. We write the uid/gid maps (root inside = our user outside) and release it.
   Doing it ourselves means the maps exist before slirp4netns joins the user
   namespace; bwrap would otherwise write them later, from inside, racing
   slirp4netns's ``setegid(0)``.
3. While bwrap builds the mounts, slirp4netns joins the sandbox's user and
   network namespaces, brings up ``tap0`` and reports ready.
4. We write to ``--block-fd``: only now does the command run, with its
   network already up. Port forwards are added while it starts: TCP through
   slirp4netns's API, UDP through ``udp_relay`` (which needs the namespaces'
   fds, the user namespace found with NS_GET_USERNS).
5. bwrap reads ``--block-fd`` once its mounts are done and closes it; that
   close is how we learn the sandbox is set up (it then only forks the
   command and execs it). ``start`` returns then, not before: a set-up that
   hangs (a mount of a hung FUSE or NFS path) must be a start that does not
   finish, which the caller can give a deadline, not a container that
   "runs" with no command.

A container without network skips steps 1 to 4: bwrap maps the ids itself,
its ``--block-fd`` is released before it is even spawned, and nothing of
ours runs while it sets the sandbox up.

A cancelled ``start`` leaves nothing behind: the sandbox's pid 1 and bwrap's
whole process group (bwrap and anything a wrapper of it started) are killed,
slirp4netns is stopped, every fd is closed, each wait bounded.

Stopping sends SIGTERM to the command (pid 2 inside, found through pid 1's
children; a SIGTERM to a pid namespace's init without a handler would be
ignored), waits for the grace period, then SIGKILLs pid 1, which takes the
whole pid namespace with it. Exits are noticed through pidfds, at once, not
by polling; slirp4netns is watched the same way, and a container whose
slirp4netns dies (killed, crashed) is stopped and reported as exited for
that reason, so that it is restarted with a network, as the kubelet
restarts the containers of a dead pod sandbox.

Every call into the kernel but spawning (signals, pidfds, reaping, the id
maps, what ``/proc`` says) goes through the runtime's ``Kernel``
(``squish.runtime.kernel``): given the recording fake, the stop, abort and
clean-up decisions are tested without bwrap (tests/test_kernel.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from squish.broadcast import Broadcast
from squish.errors import ContainerNotFound, PortInUse, RuntimeFailure
from squish.layers import Mount
from squish.runtime import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_HOST_IP,
    DEFAULT_STOP_GRACE,
    HELPER_ENV,
    Container,
    ContainerSpec,
    ContainerState,
    ExecResult,
    ExitEvent,
    NetworkInfo,
    PortForward,
    Probe,
)
from squish.runtime.bwrap import HandshakeFds, args_data, bwrap_argv, container_env
from squish.runtime.execs import ExecServer
from squish.runtime.kernel import Kernel, LinuxKernel, memfd
from squish.runtime.logs import (
    DEFAULT_KEEP,
    DEFAULT_MAX_BYTES,
    DEFAULT_RATE,
    LogCounter,
    RotatingLog,
    drain,
)
from squish.runtime.mounts import Pinned, pin
from squish.runtime.networks import Network, NetworkHost
from squish.runtime.probes import ProbeSockets, SocketBudget, run_probe
from squish.runtime.seccomp import default_filter
from squish.runtime.slirp import Slirp

# How long stop() looks for pid 2 when called right after start(), before
# bwrap's pid 1 has forked it.
_PID2_WAIT = 0.5
# How long a process may take to be gone after SIGKILL (or bwrap to say which
# is the sandbox's pid 1) before we stop waiting for it.
_KILL_WAIT = 5.0
# How long the exec server may take to make a batch of sockets for checks.
_SOCKETS_WAIT = 5.0


def check_ports_free(ports: Sequence[PortForward], default_ip: str) -> None:
    """Raise ``PortInUse`` when a host port is already bound by someone.

    Done before anything starts, so a taken port is a clear error instead of
    a container that comes up without its forward. (A port can still be
    taken in the instant between this check and slirp4netns binding it; the
    forward then fails and the start is rolled back.)
    """
    for port in ports:
        ip = port.host_ip or default_ip
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # Ignore TIME_WAIT leftovers, as the real listener will.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port.host))
            except OSError as exc:
                raise PortInUse(
                    f"host port {port.describe(default_ip)}: {exc.strerror or exc}"
                ) from exc


class _SandboxInfo:
    """bwrap's ``--info-fd``: the host pid of the sandbox's pid 1.

    bwrap's monitor writes it right after cloning the sandbox. For a container
    without network nothing needs it during start, so it is read only when
    first wanted: waking up while bwrap sets the sandbox up would steal a CPU
    from it (measured: ~1 ms of a ~5 ms start on two cores).

    Any task may ``poll()`` (every ``list()`` does) while another ``wait()``s
    for the fd to become readable. The fd is closed at end of file only when
    no task waits on it: closed under a waiter, it would never wake that
    waiter (a stop of a container started a moment ago would hang forever),
    and its number could be reused by the next pipe.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.data = b""
        self.complete = False
        self._open = True
        self._waiters = 0

    def poll(self) -> int | None:
        """Read what is there; the pid once bwrap has written all of it."""
        while not self.complete:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return None
            if chunk:
                self.data += chunk
            else:
                self.complete = True
        if self._waiters == 0:
            self.close()
        try:
            return int(json.loads(self.data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            return None  # nothing (yet), or bwrap died half-way through writing

    async def wait(self) -> int | None:
        """The pid; None when bwrap died before writing it."""
        while not self.complete:
            self._waiters += 1
            try:
                await anyio.wait_readable(self.fd)
            finally:
                self._waiters -= 1
            self.poll()
        return self.poll()

    def close(self) -> None:
        self.complete = True
        if self._open:
            os.close(self.fd)
            self._open = False


@dataclass(eq=False)
class _Live:
    """The runtime's own record of a container it started."""

    container: Container
    monitor: subprocess.Popen[bytes]
    monitor_pidfd: int
    info: _SandboxInfo
    run_dir: Path
    init_pidfd: int | None = None
    slirp: Slirp | None = None  # its own slirp4netns (no named networks)
    shared: NetworkHost | None = None  # the network host of its named networks
    forwards: dict[PortForward, int | subprocess.Popen[bytes]] = field(default_factory=dict)
    exited: anyio.Event = field(default_factory=anyio.Event)
    stop_requested: bool = False
    lost: str = ""  # why the runtime ended it by itself (its network helper died)
    probe_sockets: ProbeSockets | None = None  # made on its first http or tcp check


class BwrapRuntime:
    """Runs containers rootless with bwrap and slirp4netns.

    Use as an async context manager; leaving it stops every container::

        async with BwrapRuntime(run_dir=..., log_dir=...) as runtime:
            container = await runtime.start(spec)
    """

    def __init__(
        self,
        *,
        run_dir: Path,
        log_dir: Path,
        default_host_ip: str = DEFAULT_HOST_IP,
        bwrap: str = "bwrap",
        slirp4netns: str = "slirp4netns",
        log_max_bytes: int = DEFAULT_MAX_BYTES,
        log_keep: int = DEFAULT_KEEP,
        log_rate: int = DEFAULT_RATE,
        log_counter: LogCounter | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
        kernel: Kernel | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.default_host_ip = default_host_ip
        self.bwrap = bwrap
        self.slirp4netns = slirp4netns
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.log_rate = log_rate
        self.log_counter = log_counter
        self.stop_grace = stop_grace  # for the containers still running at exit
        # Every call into the kernel but spawning goes through it: a test
        # passes squish.runtime.fake_kernel.RecordingKernel.
        self._kernel: Kernel = kernel if kernel is not None else LinuxKernel()
        self._live: dict[str, _Live] = {}
        self._exits = Broadcast[ExitEvent]()
        self._exit_stack = contextlib.AsyncExitStack()
        self._tg: TaskGroup | None = None
        self._bwrap_path = bwrap
        self._slirp_path = slirp4netns
        self._net: NetworkHost | None = None
        self._nets_made = 0
        self._net_lock = anyio.Lock()
        self._execs = ExecServer(self._kernel, default_filter)
        self._probe_budget: SocketBudget | None = None  # read on the first check
        # bwrap's argv[0], which its sandbox keeps until it runs the command
        # (and then as its pid 1): how a later owner of run_dir finds them.
        self._mark = f"bwrap-{secrets.token_hex(8)}"

    async def __aenter__(self) -> BwrapRuntime:
        # Looked up once, on the daemon's PATH: what a container is started
        # with never depends on the environment it is given.
        found = {tool: shutil.which(tool) for tool in (self.bwrap, self.slirp4netns)}
        for tool, path in found.items():
            if path is None:
                raise RuntimeFailure(f"{tool} is not installed (run scripts/setup as root)")
        self._bwrap_path = found[self.bwrap] or self.bwrap
        self._slirp_path = found[self.slirp4netns] or self.slirp4netns
        try:
            default_filter()  # built once, here: the first start need not wait for it
        except OSError as exc:
            raise RuntimeFailure(f"cannot build the default seccomp filter: {exc}") from exc
        self._kernel.become_subreaper()
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Whatever a previous owner of this run directory left behind belongs
        # to containers that died with it, but for one case: a sandbox caught
        # setting up (building its mounts, waiting for its network) when its
        # owner was SIGKILLed is not taken along (bwrap asks for its death
        # signal only once set up) and goes on by itself. Every bwrap of that
        # owner carried its mark: they end here, before anything starts.
        mark_file = self.run_dir / MARK_FILE
        with contextlib.suppress(OSError):
            _kill_marked(self._kernel, mark_file.read_text().strip())
        for stale in self.run_dir.iterdir():
            if stale != mark_file:
                shutil.rmtree(stale, ignore_errors=True)
        mark_file.write_text(self._mark + "\n")
        self._tg = await self._exit_stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.stop_all(grace=self.stop_grace)
            if self._net is not None:
                await self._net.close()
                self._net = None
            self._execs.close()
        self._exits.close()
        return await self._exit_stack.__aexit__(exc_type, exc, tb)

    async def stop_all(self, *, grace: float = DEFAULT_STOP_GRACE) -> None:
        async with anyio.create_task_group() as tg:
            for container_id in list(self._live):
                tg.start_soon(self._stop_quietly, container_id, grace)

    async def _stop_quietly(self, container_id: str, grace: float) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self.stop(container_id, grace=grace)

    # -- queries ---------------------------------------------------------

    def _snapshot(self, live: _Live) -> Container:
        container = live.container
        if container.pid is None and not live.exited.is_set() and self._init(live) is not None:
            assert container.init_pid is not None
            found = self._kernel.children(container.init_pid)
            if found:
                container.pid = found[0]
        return replace(container)

    def _init(self, live: _Live) -> int | None:
        """A pidfd for the sandbox's pid 1, once bwrap has said which it is."""
        if live.init_pidfd is None and not live.exited.is_set():
            pid = live.info.poll()
            if pid is not None:
                live.container.init_pid = pid
                with contextlib.suppress(ProcessLookupError):
                    live.init_pidfd = self._kernel.pidfd_open(pid)
        return live.init_pidfd

    async def _wait_init(self, live: _Live) -> int | None:
        await live.info.wait()
        return self._init(live)

    def list(self) -> list[Container]:
        return [self._snapshot(live) for live in self._live.values()]

    def ids(self) -> Set[str]:
        return self._live.keys()

    def get(self, container_id: str) -> Container:
        return self._snapshot(self._get(container_id))

    def _get(self, container_id: str) -> _Live:
        try:
            return self._live[container_id]
        except KeyError:
            raise ContainerNotFound(f"no running container {container_id[:12]}") from None

    def subscribe(self) -> MemoryObjectReceiveStream[ExitEvent]:
        return self._exits.subscribe()

    def networks(self) -> tuple[NetworkInfo, ...]:
        """The named networks that have members now, with their members' addresses."""
        return self._net.book.networks() if self._net is not None else ()

    def network_sizes(self) -> Mapping[str, int]:
        net = self._net
        return net.book.sizes if net is not None else {}

    # -- named networks --------------------------------------------------

    async def _network_host(self) -> NetworkHost:
        """The network host, started by the first container on a named network."""
        async with self._net_lock:
            if self._net is not None and not self._net.alive():
                # Dead, and its watcher not yet woken: that one ends its containers.
                self._net = None
            if self._net is None:
                self._nets_made += 1
                net = NetworkHost(
                    # A directory each: an old one's clean-up must not touch a new one's.
                    run_dir=self.run_dir / f"networks-{self._nets_made}",
                    slirp4netns=self._slirp_path,
                    kernel=self._kernel,
                )
                await net.start()
                assert self._tg is not None
                self._tg.start_soon(self._watch_network_host, net)
                self._net = net
            return self._net

    async def _watch_network_host(self, net: NetworkHost) -> None:
        """When the network host dies, its containers have no network: end them."""
        said = await net.wait_lost()
        if self._net is net:
            self._net = None
        async with anyio.create_task_group() as tg:
            for live in list(self._live.values()):
                if live.shared is net and not live.stop_requested:
                    live.lost = f"{said}; it is restarted with a new one"
                    tg.start_soon(self._end_lost, live)
        with anyio.CancelScope(shield=True):
            await net.close()

    async def _end_lost(self, live: _Live) -> None:
        live.container.state = ContainerState.STOPPING
        await self._terminate_command(live)
        with anyio.move_on_after(self.stop_grace):
            await live.exited.wait()
        if not live.exited.is_set():
            self._kill(live)

    # -- start -----------------------------------------------------------

    async def start(self, spec: ContainerSpec) -> Container:
        if self._tg is None:
            raise RuntimeFailure("the runtime is not running (use it as 'async with')")
        if spec.ports and not spec.network:
            raise RuntimeFailure(f"{spec.name}: ports need a network, but network is 'none'")
        check_ports_free(spec.ports, self.default_host_ip)
        container_id = secrets.token_hex(32)
        run_dir = self.run_dir / container_id[:16]
        log = RotatingLog(
            self.log_dir / f"{spec.name}.log",
            max_bytes=self.log_max_bytes,
            keep=self.log_keep,
            rate=self.log_rate,
            counter=self.log_counter,
            name=spec.name,
        )
        fds: list[int] = []

        def pipe() -> tuple[int, int]:
            pair = os.pipe2(os.O_CLOEXEC)
            fds.extend(pair)
            return pair

        def close(fd: int) -> None:
            fds.remove(fd)
            os.close(fd)

        live: _Live | None = None
        shared: NetworkHost | None = None  # reserved addresses to give back on failure
        addresses: dict[str, str] = {}
        log_r = -1
        try:
            log_r, log_w = pipe()
            info_r, info_w = pipe()
            # The release fd is a socket, not a pipe: our end reads EOF once
            # every copy of bwrap's end is closed, i.e. once bwrap has read
            # it, after its mounts (step 5 of the module docstring).
            block, block_child = (sock.detach() for sock in socket.socketpair())
            fds += (block, block_child)
            child_fds = [info_w, block_child]
            mounted = spec
            if spec.networks:
                net = await self._network_host()
                run_dir.mkdir(mode=0o700)
                addresses, hosts = net.reserve(container_id, spec.name, spec.networks)
                shared = net
                userns = await net.userns_fd(spec.uid, spec.gid)
                fds.append(userns)
                child_fds.append(userns)
                # An /etc/hosts of every member of its networks, kept current.
                mounted = replace(spec, mounts=(*spec.mounts, Mount(hosts, "/etc/hosts", rw=False)))
                handshake = HandshakeFds(info_w, block=block_child, userns=userns)
            elif spec.network and (spec.uid, spec.gid) != (0, 0):
                # bwrap maps the namespaces itself, nesting the user's in one
                # mapping root; slirp4netns joins that one (see _connect).
                handshake = HandshakeFds(info_w, block=block_child)
            elif spec.network:
                # One fd for both blocks, a byte each: see squish.runtime.bwrap.
                handshake = HandshakeFds(info_w, block_child, block_child)
            else:
                handshake = HandshakeFds(info_w, block=block_child)
                if not spec.rlimits:
                    os.write(block, b"1")  # nothing to wait for: set up at full speed
            if spec.secrets:
                values = []
                for key, path in spec.secrets:
                    try:
                        value = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                    except OSError as exc:
                        raise RuntimeFailure(
                            f"{spec.name}: cannot read the secret for /run/secrets/{key}: "
                            f"{exc.strerror or exc}"
                        ) from None
                    fds.append(value)
                    child_fds.append(value)
                    values.append((key, value))
                handshake = replace(handshake, secrets=tuple(values))
            if spec.seccomp:
                # bwrap reads it, loads it before the command, and closes it.
                filter_fd = memfd("seccomp", default_filter())
                fds.append(filter_fd)
                child_fds.append(filter_fd)
                handshake = replace(handshake, seccomp=filter_fd)
            # Each source opened once, as checked, and bound from that fd.
            pinned = Pinned()
            try:
                pin([("/", spec.rootfs, "rootfs")], pinned)
                pin(
                    ((m.target, m.source, f"layer for {m.target}") for m in mounted.mounts),
                    pinned,
                )
            finally:
                fds.extend(pinned.fds.values())
            argv = bwrap_argv(mounted, handshake, bwrap=self.bwrap, pinned=pinned)
            for fd in set(pinned.fds.values()) - set(pinned.bound):
                close(fd)
            child_fds += pinned.bound
            # The options go through a file, out of sight of the container's
            # /proc/1/cmdline; bwrap takes only options there, the command
            # stays on its argv.
            end = argv.index("--")
            args_fd = _args_file(argv[1:end])
            fds.append(args_fd)
            child_fds.append(args_fd)
            started_at = time.time()
            try:
                # Spawned here, in the loop's thread, on purpose: see the
                # module docstring (--die-with-parent follows the thread).
                monitor = subprocess.Popen(  # noqa: ASYNC220
                    [self._mark, "--args", str(args_fd), *argv[end:]],
                    executable=self._bwrap_path,
                    stdin=subprocess.DEVNULL,
                    stdout=log_w,
                    stderr=log_w,
                    pass_fds=child_fds,
                    env=HELPER_ENV,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RuntimeFailure(f"cannot run {self.bwrap}: {exc}") from exc
            for fd in child_fds:
                close(fd)
            close(log_w)
            monitor_pidfd = self._kernel.pidfd_open(monitor.pid)
            fds.append(monitor_pidfd)
            if spec.network and not spec.networks:
                run_dir.mkdir(mode=0o700)
            container = Container(
                id=container_id,
                spec=spec,
                state=ContainerState.STARTING,
                started_at=started_at,
                log_path=log.path,
                addresses=addresses,
            )
            fds.remove(info_r)  # owned by _SandboxInfo from here on
            fds.remove(monitor_pidfd)  # closed by _abort or _watch from here on
            live = _Live(container, monitor, monitor_pidfd, _SandboxInfo(info_r), run_dir)
            live.shared = shared
            shared = None  # released by _abort or _watch from here on
            if live.shared is not None or spec.network or spec.rlimits:
                if await self._wait_init(live) is None:
                    await self._wait_gone(live)
                    raise RuntimeFailure(f"{spec.name}: bwrap failed: {_pending_complaint(log_r)}")
                # Before anything lets the command go: its processes inherit them.
                _set_limits(self._kernel, spec, container.init_pid)
            if live.shared is not None:
                await self._join_networks(live, live.shared, block)
            elif not spec.network:
                if spec.rlimits:
                    os.write(block, b"1")
            else:
                try:
                    await self._connect(live, block)
                except RuntimeFailure as exc:
                    # slirp4netns fails to join a sandbox that died under it:
                    # then bwrap's words say why.
                    complaint = _pending_complaint(log_r)
                    if monitor.poll() is None or complaint == _NO_MESSAGE:
                        raise
                    raise RuntimeFailure(f"{spec.name}: bwrap failed: {complaint}") from exc
            # Set up (or dead, which its exit reports): EOF either way.
            await anyio.wait_readable(block)
            close(block)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if live is not None:
                    await self._abort(live)
                    self._release(live)
                if shared is not None:
                    self._retire(shared, shared.release(container_id))
                # bwrap's own words, when it died under us (a broken pipe is
                # only how we noticed).
                complaint = _pending_complaint(log_r) if log_r in fds else ""
                for fd in fds:
                    os.close(fd)
                log.close()
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                reason = complaint if complaint != _NO_MESSAGE else str(exc)
                raise RuntimeFailure(f"{spec.name}: cannot start: {reason}") from exc
            raise
        return self._adopt(live, log_r, log)

    def _adopt(self, live: _Live, log_r: int, log: RotatingLog) -> Container:
        """Make a sandbox that is set up a running container, watched until it exits."""
        assert self._tg is not None
        container = live.container
        container.state = ContainerState.RUNNING
        container.ports = tuple(live.forwards)
        self._live[container.id] = live
        self._tg.start_soon(self._watch, live, log_r, log)
        return self._snapshot(live)

    async def _connect(self, live: _Live, release: int) -> None:
        """Map the user namespace, bring up slirp4netns and forwards, release.

        ``release`` lets bwrap go on twice, a byte each time: past the user
        namespace, then on to the command; the caller closes it.
        """
        init_pid = live.container.init_pid
        assert init_pid is not None
        spec = live.container.spec
        with contextlib.ExitStack() as held:
            namespaces: tuple[int, int] | None = None
            if (spec.uid, spec.gid) == (0, 0):
                release_userns(self._kernel, init_pid, release)
                await _wait_loopback(init_pid)
            else:
                await _wait_loopback(init_pid)
                namespaces = await self._root_namespaces(init_pid)
                for fd in namespaces:
                    held.callback(os.close, fd)
            live.slirp = await Slirp.start(
                pid=init_pid,
                api_socket=live.run_dir / "slirp.sock",
                log_path=live.run_dir / "slirp4netns.log",
                slirp4netns=self._slirp_path,
                kernel=self._kernel,
                namespaces=namespaces,
            )
        # Release the command: its network is up. The forwards are set up
        # on the host side while it starts; a client that comes before its
        # forward is refused just as one that comes before the server
        # listens. A forward that fails aborts the whole start.
        os.write(release, b"1")
        for port in live.container.spec.ports:
            await self._add_forward(live, port)

    async def _root_namespaces(self, init_pid: int) -> tuple[int, int]:
        """The user namespace that maps root in the sandbox of ``init_pid``, and its network's.

        For a container running as another user, bwrap maps root in the
        user namespace it makes first (which the network namespace belongs
        to), and only then the user in one inside; slirp4netns joins the
        first, once it is mapped.
        """
        netns = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            userns = self._kernel.owning_userns(netns)
        except OSError:
            os.close(netns)
            raise
        deadline = time.monotonic() + 1.0
        while not _mapped(init_pid):
            if time.monotonic() > deadline:
                os.close(netns)
                os.close(userns)
                raise RuntimeFailure("bwrap did not map the sandbox's user namespace within 1 s")
            await anyio.sleep(0.0002)
        return userns, netns

    async def _join_networks(self, live: _Live, net: NetworkHost, release: int) -> None:
        """Wire the sandbox into its networks and add its forwards, then release it."""
        init_pid = live.container.init_pid
        assert init_pid is not None
        await net.attach(live.container.id, init_pid)
        os.write(release, b"1")
        for port in live.container.spec.ports:
            await self._add_forward(live, port)

    async def _add_forward(self, live: _Live, port: PortForward) -> None:
        assert live.container.init_pid is not None
        ip = port.host_ip or self.default_host_ip
        if port.protocol == "tcp" and live.shared is not None:
            address = next(iter(live.container.addresses.values()))
            live.forwards[port] = await live.shared.add_forward(
                "tcp", ip, port.host, address, port.container
            )
        elif port.protocol == "tcp":
            assert live.slirp is not None
            live.forwards[port] = await live.slirp.add_forward("tcp", ip, port.host, port.container)
        else:
            live.forwards[port] = await _start_udp_relay(
                self._kernel, live.container.init_pid, ip, port
            )

    async def _remove_forward(self, live: _Live, port: PortForward) -> None:
        forward = live.forwards.pop(port)
        if isinstance(forward, int) and live.shared is not None:
            await live.shared.remove_forward(forward)
        elif isinstance(forward, int):
            assert live.slirp is not None
            await live.slirp.remove_forward(forward)
        else:
            forward.kill()
            forward.wait()

    async def _close_network(self, live: _Live) -> None:
        """End its forwards; give its addresses on named networks back."""
        for forward in live.forwards.values():
            if not isinstance(forward, int):
                forward.kill()
                forward.wait()
            elif live.shared is not None:
                # The shared slirp4netns outlives the container: its forwards go now.
                with contextlib.suppress(RuntimeFailure):
                    await live.shared.remove_forward(forward)
        live.forwards.clear()
        if live.shared is not None:
            self._retire(live.shared, live.shared.release(live.container.id))

    def _retire(self, net: NetworkHost, emptied: Sequence[Network]) -> None:
        """Take emptied networks' bridges down in the background (it takes ~50 ms)."""
        assert self._tg is not None
        for network in emptied:
            self._tg.start_soon(net.retire, network)

    async def _abort(self, live: _Live) -> None:
        """Undo a half-done start: kill the sandbox, stop slirp4netns."""
        self._kill(live)
        await self._wait_gone(live)
        await self._reap_init(live)
        await _reap_group(self._kernel, live.monitor.pid)
        await self._close_network(live)
        if live.slirp is not None:
            await live.slirp.close()

    def _kill(self, live: _Live) -> None:
        """SIGKILL the sandbox's pid 1, which takes its pid namespace, and bwrap.

        bwrap's whole process group, not only bwrap: a bwrap that is a
        wrapper script, or anything else it started before the sandbox's
        own session, goes too. The group is bwrap's pid (``start_new_session``),
        which cannot be reused before we reap bwrap.
        """
        init_pidfd = self._init(live)
        if init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                self._kernel.signal_pidfd(init_pidfd, signal.SIGKILL)
        if live.monitor.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self._kernel.kill_group(live.monitor.pid, signal.SIGKILL)

    async def _wait_gone(self, live: _Live) -> None:
        """Wait (a bounded time) until bwrap has exited, and reap it."""
        with anyio.move_on_after(_KILL_WAIT):
            await anyio.wait_readable(live.monitor_pidfd)
        live.monitor.poll()

    async def _reap_init(self, live: _Live) -> None:
        # pid 1 dies by PDEATHSIG once the monitor is gone, and exits only
        # after every other process of its pid namespace has; as a subreaper
        # we may have inherited it and must reap it ourselves.
        with anyio.move_on_after(_KILL_WAIT):
            await live.info.wait()
        init_pidfd = self._init(live)
        if init_pidfd is None:
            return  # it never existed, or is already gone and reaped
        with anyio.move_on_after(_KILL_WAIT):
            await anyio.wait_readable(init_pidfd)
        with contextlib.suppress(ChildProcessError):
            self._kernel.reap_pidfd(init_pidfd)

    def _release(self, live: _Live) -> None:
        """Close the fds a container held, once it is gone."""
        os.close(live.monitor_pidfd)
        if live.init_pidfd is not None:
            os.close(live.init_pidfd)
        live.info.close()

    # -- exit ------------------------------------------------------------

    async def _watch(self, live: _Live, log_r: int, log: RotatingLog) -> None:
        container = live.container
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, log_r, log)
            network = anyio.CancelScope()
            if live.slirp is not None:
                tg.start_soon(self._watch_network, live, live.slirp, network)
            await anyio.wait_readable(live.monitor_pidfd)
            network.cancel()
            if live.probe_sockets is not None:
                live.probe_sockets.close()  # they would keep its network namespace
            returncode = live.monitor.wait()
            await self._reap_init(live)
            await self._close_network(live)
            if live.slirp is not None:
                await live.slirp.close()
        self._release(live)
        shutil.rmtree(live.run_dir, ignore_errors=True)
        exit_code = returncode if returncode >= 0 else 128 - returncode
        container.state = ContainerState.EXITED
        container.exit_code = exit_code
        container.finished_at = time.time()
        self._live.pop(container.id, None)
        event = ExitEvent(
            container_id=container.id,
            name=container.name,
            exit_code=exit_code,
            at=container.finished_at,
            stopped=live.stop_requested,
            reason=live.lost or _bwrap_complaint(log.recent),
        )
        live.exited.set()
        self._exits.publish(event)

    async def _watch_network(self, live: _Live, slirp: Slirp, scope: anyio.CancelScope) -> None:
        """End a container whose slirp4netns died: without it, it has no network.

        Its forwards are gone and nothing can bring them back into the same
        namespace with their sockets, so the container is stopped as a user's
        stop would (SIGTERM, the grace, SIGKILL) and its exit says why; the
        reconciler restarts it, with a network, as any crashed container.
        ``scope`` is cancelled when the sandbox is gone.
        """
        with scope:
            await slirp.wait_exited()
            if live.stop_requested:
                return
            live.lost = f"its network helper slirp4netns {slirp.describe_exit()}"
            live.container.state = ContainerState.STOPPING
            await self._terminate_command(live)
            await anyio.sleep(self.stop_grace)
            self._kill(live)

    # -- stop ------------------------------------------------------------

    async def stop(self, container_id: str, *, grace: float = DEFAULT_STOP_GRACE) -> Container:
        live = self._get(container_id)
        container = live.container
        if container.state.can_stop:
            live.stop_requested = True
            container.state = ContainerState.STOPPING
            await self._terminate_command(live)
        # Also when another stop began first: it may have been cancelled
        # (the daemon shutting down) before it could kill, and a stop must
        # never wait on one that will not finish.
        with anyio.move_on_after(grace):
            await live.exited.wait()
        if not live.exited.is_set():
            self._kill(live)
        patience = 2 * _KILL_WAIT  # SIGKILLed; _watch's cleanup is bounded too
        with anyio.move_on_after(patience):
            await live.exited.wait()
        if not live.exited.is_set():
            raise RuntimeFailure(
                f"{container.name}: still not gone {patience:g} s after SIGKILL "
                "(a process stuck in the kernel?)"
            )
        return replace(container)

    async def _terminate_command(self, live: _Live) -> None:
        init_pidfd = None
        with anyio.move_on_after(_KILL_WAIT):
            init_pidfd = await self._wait_init(live)
        if init_pidfd is None:
            return
        init_pid = live.container.init_pid
        assert init_pid is not None
        deadline = time.monotonic() + _PID2_WAIT
        while not live.exited.is_set():
            found = self._kernel.children(init_pid)
            if found:
                for pid in found:
                    with contextlib.suppress(ProcessLookupError):
                        pidfd = self._kernel.pidfd_open(pid)
                        try:
                            self._kernel.signal_pidfd(pidfd, signal.SIGTERM)
                        finally:
                            os.close(pidfd)
                return
            if time.monotonic() > deadline:
                return
            await anyio.sleep(0.002)

    # -- exec ------------------------------------------------------------

    async def exec(
        self, container_id: str, argv: Sequence[str], *, timeout: float = DEFAULT_EXEC_TIMEOUT
    ) -> ExecResult:
        live = self._get(container_id)
        container = live.container
        if container.state is not ContainerState.RUNNING or container.init_pid is None:
            raise RuntimeFailure(f"{container.name}: cannot exec while {container.state}")
        if not argv:
            raise RuntimeFailure(f"{container.name}: exec needs a command")
        spec = container.spec
        return await self._execs.run(
            container.init_pid,
            argv,
            env=container_env(spec),
            cwd=spec.workdir,
            timeout=timeout,
            rlimits=[(rlimit, soft, hard) for _, rlimit, soft, hard in spec.rlimits],
            seccomp=spec.seccomp,
        )

    async def probe(self, container_id: str, probe: Probe, *, timeout: float) -> ExecResult:
        live = self._get(container_id)
        container = live.container
        if container.state is not ContainerState.RUNNING or container.init_pid is None:
            raise RuntimeFailure(f"{container.name}: cannot check while {container.state}")
        if live.probe_sockets is None:
            sandbox = container.init_pid

            async def make(count: int) -> list[socket.socket]:
                try:
                    return await self._execs.sockets(sandbox, count, timeout=_SOCKETS_WAIT)
                except RuntimeFailure as exc:
                    raise OSError(str(exc)) from exc

            if self._probe_budget is None:
                self._probe_budget = SocketBudget()
            live.probe_sockets = ProbeSockets(make, self._probe_budget)
        return await run_probe(live.probe_sockets, probe, timeout=timeout)

    # -- ports -----------------------------------------------------------

    async def update_ports(self, container_id: str, ports: Sequence[PortForward]) -> Container:
        live = self._get(container_id)
        container = live.container
        if not container.state.can_update_ports:
            raise RuntimeFailure(f"{container.name}: cannot change ports while {container.state}")
        wanted = list(dict.fromkeys(ports))
        if wanted and live.slirp is None and live.shared is None:
            raise RuntimeFailure(f"{container.name}: ports need a network, but network is 'none'")
        removed = [port for port in live.forwards if port not in wanted]
        added = [port for port in wanted if port not in live.forwards]
        for port in removed:
            await self._remove_forward(live, port)
        # Only ports nobody holds yet need the check; a port moved from one
        # forward of this container to another was freed just above.
        check_ports_free(added, self.default_host_ip)
        for port in added:
            await self._add_forward(live, port)
        container.ports = tuple(live.forwards)
        return self._snapshot(live)


def _args_file(args: Sequence[str]) -> int:
    """A memfd holding bwrap's arguments, for ``--args FD`` (bwrap reads and closes it).

    A file, not a pipe: a long command line would fill a pipe before bwrap
    reads it.
    """
    return memfd("bwrap-args", args_data(args))


def release_userns(
    kernel: Kernel, init_pid: int, release: int, user: tuple[int, int] = (0, 0)
) -> None:
    """Map ``user`` (root, unless the squishfile says) in the sandbox's user
    namespace to us, then let bwrap go on.

    Step 2 of the module docstring, in this order: once released, bwrap goes
    on as root of its user namespace, which it is only once the map exists.
    A failed mapping raises before the release, so bwrap never goes on
    unmapped; the start is aborted.
    """
    kernel.map_ids(init_pid, user, (os.getuid(), os.getgid()))
    os.write(release, b"1")


async def _reap_group(kernel: Kernel, pgid: int) -> None:
    """Reap what is left of a killed process group, for a bounded time.

    Its processes are orphans once their parents in it are dead, and come to
    us, the subreaper: as zombies nobody else would wait for. Done once none
    of our children is in the group.
    """
    with anyio.move_on_after(_KILL_WAIT):
        while True:
            try:
                pid = kernel.reap_group(pgid)  # never blocks
            except ChildProcessError:
                return
            if pid == 0:
                await anyio.sleep(0.01)


# In a networked container's run directory: bwrap's process group (its pid)
# and bwrap's start time, for a next owner to end what is left of it.
MARK_FILE = "sandboxes"


def _kill_marked(kernel: Kernel, mark: str) -> None:
    """SIGKILL every bwrap of ours whose argv[0] is ``mark`` (a runtime's, see ``_mark``).

    The mark is random per runtime, so nothing else has it: a later
    runtime's sandboxes and other programs' bwraps (flatpak's) are never
    touched. A sandbox is its pid namespace's pid 1: its command goes with it.
    """
    if not mark.startswith("bwrap-"):
        return
    wanted = os.fsencode(mark) + b"\0"
    for process in kernel.processes_of(os.getuid()):
        if process.comm != b"bwrap\n" or not process.cmdline.startswith(wanted):
            continue
        try:
            kernel.kill(process.pid, signal.SIGKILL)
        except OSError:
            continue  # gone meanwhile


_UDP_RELAY = Path(__file__).with_name("udp_relay.py")


async def _start_udp_relay(
    kernel: Kernel, init_pid: int, ip: str, port: PortForward
) -> subprocess.Popen[bytes]:
    """Bind the host side of a UDP forward and start its relay (see udp_relay)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    # The relay joins the container's namespaces through these; they are
    # opened for it and closed once it has them, not held per container.
    netns_fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.ExitStack() as fds, socket.socket(family, socket.SOCK_DGRAM) as host:
        fds.callback(os.close, netns_fd)
        userns_fd = kernel.owning_userns(netns_fd)
        fds.callback(os.close, userns_fd)
        try:
            host.bind((ip, port.host))
        except OSError as exc:
            raise PortInUse(f"host port {port.describe(ip)}: {exc.strerror or exc}") from exc
        argv = [sys.executable, "-S", str(_UDP_RELAY), str(os.getpid()), str(userns_fd)]
        argv += [str(netns_fd), str(host.fileno()), str(port.container)]
        # In the loop's thread: PDEATHSIG follows the spawning thread.
        relay = subprocess.Popen(  # noqa: ASYNC220
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            pass_fds=(userns_fd, netns_fd, host.fileno()),
            env=HELPER_ENV,
            start_new_session=True,
        )
    assert relay.stdout is not None
    ready = relay.stdout.fileno()
    try:
        with anyio.move_on_after(10):
            await anyio.wait_readable(ready)
    except BaseException:
        # Cancelled (the start's deadline): the relay is not ours to keep.
        relay.kill()
        relay.wait()
        relay.stdout.close()
        raise
    os.set_blocking(ready, False)
    try:
        said = os.read(ready, 64)
    except BlockingIOError:
        said = b""
    relay.stdout.close()
    if said != b"ready\n":
        relay.kill()
        relay.wait()
        raise RuntimeFailure(f"cannot forward {port.describe(ip)}: the UDP relay failed to start")
    return relay


def _set_limits(kernel: Kernel, spec: ContainerSpec, init_pid: int | None) -> None:
    """Set ``spec``'s rlimits on the sandbox's pid 1, which forks the command."""
    assert init_pid is not None
    for name, rlimit, soft, hard in spec.rlimits:
        try:
            kernel.set_rlimit(init_pid, rlimit, soft, hard)
        except (ValueError, PermissionError) as exc:
            ours = resource.getrlimit(rlimit)[1]
            shown = "unlimited" if ours == resource.RLIM_INFINITY else str(ours)
            raise RuntimeFailure(
                f"{spec.name}: cannot set limits.{name}: its hard limit is above the daemon's "
                f"({shown}); raise the daemon's (ulimit -H, or LimitNOFILE= and the like "
                f"in its unit) or lower it ({exc})"
            ) from None
        except ProcessLookupError:
            return  # the sandbox is gone; the start fails on its own


def _mapped(pid: int) -> bool:
    """Whether ``pid``'s user namespace (or the one it is nested in) has a uid map yet."""
    try:
        with open(f"/proc/{pid}/uid_map", "rb") as ids:
            return bool(ids.read().strip())
    except OSError:
        return True  # gone: the start fails on its own


async def _wait_loopback(init_pid: int) -> None:
    """Wait until bwrap has brought up the sandbox's loopback, briefly.

    bwrap adds 127.0.0.1 to ``lo`` and then sets it up, with netlink requests
    that fail if someone else got there first; slirp4netns --configure also
    sets ``lo`` up. Started at once, slirp4netns sometimes wins that race and
    bwrap dies ("loopback: Failed RTM_NEWADDR"; seen in 1-3 % of networked
    starts with eight at a time). bwrap does it right after we release the
    user namespace, so the wait is short; the routes of an up loopback show in
    the namespace's fib_trie.
    """
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{init_pid}/net/fib_trie", "rb") as trie:  # noqa: ASYNC230
                if b"127.0.0.1" in trie.read():
                    return
        except OSError:
            return  # the sandbox is gone; the start fails on its own
        await anyio.sleep(0.0002)


_NO_MESSAGE = "no message"


def _pending_complaint(log_r: int) -> str:
    """What bwrap wrote before dying, read from the not yet drained log pipe."""
    os.set_blocking(log_r, False)
    try:
        said = os.read(log_r, 4096)
    except BlockingIOError:
        said = b""
    return _bwrap_complaint(said) or _NO_MESSAGE


def _bwrap_complaint(recent: bytes | bytearray) -> str:
    """bwrap's own last error ("bwrap: execvp /app/x: No such file ..."), if any."""
    for line in reversed(recent.decode(errors="replace").splitlines()):
        if line.startswith("bwrap: "):
            return line
    return ""
