"""Named networks: containers that share one reach each other by name.

Used by ``BwrapRuntime`` for the containers whose spec names networks. The
design is podman's rootless one (its "rootless network namespace"):

- One helper process (``netns_helper.py``) holds a user namespace and a
  network namespace of its own, the host namespace of every network, with a
  bridge per network. A container on networks is made by bwrap *in that
  user namespace* (``--userns``), so its network namespace belongs to it and
  the helper can move a veth end into it and configure it.
- One slirp4netns joins the helper's namespaces: the way out for every
  network (to the host's resolvers through 10.0.2.3, and beyond), and the
  TCP forwards of every container on a network, each to the container's own
  address. The host's loopback stays out of reach (``--disable-host-loopback``).
- Names resolve through ``/etc/hosts``: each container gets a file of its
  own, bind-mounted read-only, listing every member of each of its
  networks; it is rewritten in place (the bind keeps the inode) whenever a
  member comes or goes, so a container that joins later is known at once
  to those already running, and a replaced container keeps its name. musl
  (Alpine) and static busybox both read it.

Addresses: each network gets a /24 of 10.89.0.0/16 while it has members
(``.1`` is its gateway, on the bridge), each member the lowest free address
of it. A network exists while some container names it; nothing of it is
stored, so a new runtime builds every network again.

Everything here lives as long as the runtime: the helper dies with the
runtime's thread (PDEATHSIG) or when its stdin closes, slirp4netns by its
``--exit-fd``; when either dies the runtime ends the containers on
networks (they have lost their network) and the next start makes a new
host namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from squish.errors import RuntimeFailure
from squish.runtime import HELPER_ENV, NetworkInfo
from squish.runtime.kernel import Kernel
from squish.runtime.slirp import Slirp

ADDRESS_SPACE = ipaddress.IPv4Network("10.89.0.0/16")
_PREFIX = 24
_HELPER = Path(__file__).with_name("netns_helper.py")
# How long one request to the helper may take; they take milliseconds.
_HELPER_TIMEOUT = 10.0
_HOSTS_HEADER = "127.0.0.1\tlocalhost\n::1\tlocalhost\n"


@dataclass
class _Member:
    container_id: str
    name: str
    addresses: dict[str, str]  # network -> address, in the spec's order
    hosts: Path | None  # its hosts file, rewritten when a peer comes or goes


@dataclass
class _Network:
    name: str
    index: int
    members: dict[str, str] = field(default_factory=dict)  # container id -> address
    bridged: bool = False

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return list(ADDRESS_SPACE.subnets(new_prefix=_PREFIX))[self.index]

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def bridge(self) -> str:
        return f"sqbr{self.index}"


class NetworkBook:
    """Who is on which network, with which address: the bookkeeping, no I/O.

    Shared by ``NetworkHost`` and the fake runtime, so that the addresses,
    hosts files and listings the reconciler's tests see are the real ones.
    """

    def __init__(self) -> None:
        self._networks: dict[str, _Network] = {}
        self._members: dict[str, _Member] = {}
        # How many containers are on each network: a new dict at each change,
        # so another thread (the metrics server's) may read it at any time.
        self.sizes: Mapping[str, int] = {}

    def clear(self) -> None:
        self._networks.clear()
        self._members.clear()
        self.sizes = {}

    def _resize(self) -> None:
        self.sizes = {name: len(network.members) for name, network in self._networks.items()}

    def network(self, name: str) -> _Network:
        return self._networks[name]

    def reserve(
        self, container_id: str, name: str, networks: Sequence[str], hosts: Path | None = None
    ) -> dict[str, str]:
        """An address on each network for the container (a network is made by its first)."""
        addresses: dict[str, str] = {}
        try:
            for network_name in networks:
                network = self._networks.get(network_name) or self._new_network(network_name)
                address = self._free_address(network)
                network.members[container_id] = address
                addresses[network_name] = address
        except RuntimeFailure:
            self._forget(container_id, list(addresses))
            raise
        self._members[container_id] = _Member(container_id, name, addresses, hosts)
        self._resize()
        return addresses

    def _new_network(self, name: str) -> _Network:
        taken = {network.index for network in self._networks.values()}
        count = 2 ** (_PREFIX - ADDRESS_SPACE.prefixlen)
        index = next((i for i in range(count) if i not in taken), None)
        if index is None:
            raise RuntimeFailure(f"network {name}: all {count} networks of {ADDRESS_SPACE} in use")
        network = self._networks[name] = _Network(name, index)
        return network

    def _free_address(self, network: _Network) -> str:
        taken = set(network.members.values()) | {network.gateway}
        for host in network.subnet.hosts():
            if str(host) not in taken:
                return str(host)
        raise RuntimeFailure(
            f"network {network.name}: no free address left in {network.subnet} "
            f"({len(network.members)} members)"
        )

    def release(self, container_id: str) -> tuple[dict[str, str], list[_Network]]:
        """Forget the container: its addresses, and the networks it was the last of."""
        member = self._members.pop(container_id, None)
        if member is None:
            return {}, []
        emptied = self._forget(container_id, list(member.addresses))
        self._resize()
        return member.addresses, emptied

    def _forget(self, container_id: str, networks: Sequence[str]) -> list[_Network]:
        emptied = []
        for network_name in networks:
            network = self._networks.get(network_name)
            if network is None:
                continue
            network.members.pop(container_id, None)
            if not network.members:
                del self._networks[network_name]
                emptied.append(network)
        return emptied

    def member(self, container_id: str) -> _Member:
        return self._members[container_id]

    def hosts_of(self, container_id: str) -> str:
        """The hosts file of one member: itself first, then each network's members."""
        member = self._members[container_id]
        lines = [_HOSTS_HEADER]
        seen: set[tuple[str, str]] = set()
        own = next(iter(member.addresses.values()))
        lines.append(f"{own}\t{member.name}\n")
        seen.add((own, member.name))
        for network_name in member.addresses:
            network = self._networks.get(network_name)
            if network is None:
                continue
            for peer_id, address in sorted(network.members.items(), key=lambda m: m[1]):
                peer = self._members.get(peer_id)
                if peer is None or (address, peer.name) in seen:
                    continue
                seen.add((address, peer.name))
                lines.append(f"{address}\t{peer.name}\n")
        return "".join(lines)

    def peers(self, networks: Mapping[str, str]) -> list[_Member]:
        """Every member of ``networks`` (by name), each once."""
        ids = {
            peer_id
            for network_name in networks
            if (network := self._networks.get(network_name)) is not None
            for peer_id in network.members
        }
        return [self._members[peer_id] for peer_id in sorted(ids) if peer_id in self._members]

    def addresses(self, container_id: str) -> dict[str, str]:
        member = self._members.get(container_id)
        return dict(member.addresses) if member is not None else {}

    def networks(self) -> tuple[NetworkInfo, ...]:
        infos = []
        for network in sorted(self._networks.values(), key=lambda n: n.name):
            members = {
                self._members[cid].name: address
                for cid, address in sorted(network.members.items(), key=lambda m: m[1])
                if cid in self._members
            }
            infos.append(NetworkInfo(network.name, str(network.subnet), network.gateway, members))
        return tuple(infos)


class NetworkHost:
    """The helper, its slirp4netns, and who is on which network."""

    def __init__(self, *, run_dir: Path, slirp4netns: str, kernel: Kernel) -> None:
        self.run_dir = run_dir
        self.slirp4netns = slirp4netns
        self.kernel = kernel
        self.helper: subprocess.Popen[bytes] | None = None
        self.helper_pidfd = -1
        self.slirp: Slirp | None = None
        self.book = NetworkBook()
        self._lock = anyio.Lock()
        self._close_lock = anyio.Lock()
        self._buffer = b""
        self._veths = 0

    # -- life ------------------------------------------------------------

    async def start(self) -> None:
        """Start the helper and slirp4netns; on failure nothing is left."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # In the loop's thread: PDEATHSIG follows the spawning thread.
            self.helper = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, str(_HELPER), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=HELPER_ENV,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start the network helper: {exc}") from exc
        try:
            self.helper_pidfd = self.kernel.pidfd_open(self.helper.pid)
            await self._reply("starting")
            self.slirp = await Slirp.start(
                pid=self.helper.pid,
                api_socket=self.run_dir / "slirp.sock",
                log_path=self.run_dir / "slirp4netns.log",
                slirp4netns=self.slirp4netns,
                kernel=self.kernel,
            )
            await self._request({"op": "uplink", "ifname": "tap0"})
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    def alive(self) -> bool:
        """Whether the helper and slirp4netns both still run (reaping them if not)."""
        helper, slirp = self.helper, self.slirp
        return (
            helper is not None
            and helper.poll() is None
            and slirp is not None
            and slirp.process.poll() is None
        )

    async def wait_lost(self) -> str:
        """Return, saying what happened, once the helper or slirp4netns has died."""
        assert self.helper is not None and self.slirp is not None
        slirp = self.slirp
        said = ""
        async with anyio.create_task_group() as tg:

            async def helper_died() -> None:
                nonlocal said
                pidfd = os.dup(self.helper_pidfd)
                try:
                    await anyio.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
                said = said or "the network helper died"
                tg.cancel_scope.cancel()

            async def slirp_died() -> None:
                nonlocal said
                await slirp.wait_exited()
                said = said or f"the networks' slirp4netns {slirp.describe_exit()}"
                tg.cancel_scope.cancel()

            tg.start_soon(helper_died)
            tg.start_soon(slirp_died)
        return said

    async def close(self) -> None:
        """Stop slirp4netns and the helper, bounded; forget every network."""
        async with self._close_lock:
            await self._close()

    async def _close(self) -> None:
        if self.slirp is not None:
            await self.slirp.close()
            self.slirp = None
        if self.helper is not None:
            if self.helper.stdin is not None:
                with contextlib.suppress(OSError):
                    self.helper.stdin.close()
            if self.helper_pidfd >= 0:
                # On a copy: wait_lost may be waiting on the pidfd too.
                pidfd = os.dup(self.helper_pidfd)
                try:
                    with anyio.move_on_after(2):
                        await anyio.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
            if self.helper.poll() is None:
                self.helper.kill()
                self.helper.wait()
            if self.helper.stdout is not None:
                self.helper.stdout.close()
            self.helper = None
        if self.helper_pidfd >= 0:
            os.close(self.helper_pidfd)
            self.helper_pidfd = -1
        self.book.clear()

    # -- the helper's requests -------------------------------------------

    async def _request(self, request: dict[str, Any]) -> None:
        assert self.helper is not None and self.helper.stdin is not None
        async with self._lock:
            try:
                self.helper.stdin.write(json.dumps(request).encode() + b"\n")
                self.helper.stdin.flush()
            except OSError as exc:
                raise RuntimeFailure(f"the network helper is gone: {exc}") from exc
            await self._reply(str(request["op"]))

    async def _reply(self, what: str) -> None:
        assert self.helper is not None and self.helper.stdout is not None
        fd = self.helper.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            with anyio.fail_after(_HELPER_TIMEOUT):
                while b"\n" not in self._buffer:
                    await anyio.wait_readable(fd)
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise RuntimeFailure(f"the network helper died ({what})")
                    self._buffer += chunk
        except TimeoutError:
            raise RuntimeFailure(
                f"the network helper did not answer ({what}) within {_HELPER_TIMEOUT:g} s"
            ) from None
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            raise RuntimeFailure(f"the network helper said {line[:80]!r} ({what})") from None
        if "error" in reply:
            raise RuntimeFailure(f"network set-up failed ({what}): {reply['error']}")

    # -- members ---------------------------------------------------------

    def userns_fd(self) -> int:
        """An fd of the helper's user namespace, for bwrap's ``--userns`` (caller closes)."""
        assert self.helper is not None
        return os.open(f"/proc/{self.helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)

    def reserve(
        self, container_id: str, name: str, networks: Sequence[str], hosts: Path
    ) -> dict[str, str]:
        """An address on each network for the container, and its hosts file written."""
        addresses = self.book.reserve(container_id, name, networks, hosts)
        hosts.write_text(self.book.hosts_of(container_id))
        return addresses

    async def attach(self, container_id: str, pid: int) -> None:
        """Wire the reserved container (sandbox pid 1 ``pid``) in; tell its peers."""
        member = self.book.member(container_id)
        links = []
        for position, (network_name, address) in enumerate(member.addresses.items()):
            network = self.book.network(network_name)
            if not network.bridged:
                await self._request(
                    {
                        "op": "bridge",
                        "bridge": network.bridge,
                        "gateway": network.gateway,
                        "prefix": _PREFIX,
                        "isolate": str(ADDRESS_SPACE),
                    }
                )
                network.bridged = True
            self._veths += 1
            links.append(
                {
                    "bridge": network.bridge,
                    "host_ifname": f"sqv{self._veths}",
                    "ifname": f"eth{position}",
                    "address": address,
                    "prefix": _PREFIX,
                }
            )
        first = self.book.network(next(iter(member.addresses)))
        await self._request({"op": "attach", "pid": pid, "links": links, "gateway": first.gateway})
        self._rewrite_peers(member.addresses)

    async def release(self, container_id: str) -> None:
        """The container is gone: its addresses are free, its peers told."""
        addresses, emptied = self.book.release(container_id)
        self._rewrite_peers(addresses)
        for network in emptied:
            if network.bridged and self.helper is not None and self.helper.poll() is None:
                # The veths went with the container's namespace; the bridge goes now.
                with contextlib.suppress(RuntimeFailure):
                    await self._request({"op": "unbridge", "bridge": network.bridge})

    def _rewrite_peers(self, networks: Mapping[str, str]) -> None:
        """Rewrite, in place, the hosts file of every member of ``networks``."""
        for member in self.book.peers(networks):
            if member.hosts is None:
                continue
            data = self.book.hosts_of(member.container_id).encode()
            # In place: the container's bind mount holds this inode.
            with contextlib.suppress(OSError), open(member.hosts, "r+b") as file:
                file.write(data)
                file.truncate(len(data))

    # -- forwards --------------------------------------------------------

    async def add_forward(
        self, protocol: str, host_ip: str, host_port: int, address: str, guest_port: int
    ) -> int:
        if self.slirp is None:
            raise RuntimeFailure("the networks' slirp4netns is not running")
        return await self.slirp.add_forward(
            protocol, host_ip, host_port, guest_port, guest_addr=address
        )

    async def remove_forward(self, forward_id: int) -> None:
        if self.slirp is not None:
            await self.slirp.remove_forward(forward_id)
