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
- Names resolve through ``/etc/hosts``: the containers on the same networks
  share a file, bind-mounted read-only, listing every member of those
  networks; it is rewritten in place (the bind keeps the inode) whenever a
  member comes or goes, so a container that joins later is known at once
  to those already running, and a replaced container keeps its name. musl
  (Alpine) and static busybox both read it.
- A container's MAC address on a network is derived from its IP address:
  one that takes the address of a container that left is reached at once.
  Links have slirp4netns's MTU (65520), end to end.

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
import shutil
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
from squish.runtime.slirp import MTU, Slirp

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

    @property
    def hosts_key(self) -> tuple[str, ...]:
        """Its hosts file's: containers on the same networks share one."""
        return tuple(sorted(self.addresses))


@dataclass
class Network:
    """One named network's bookkeeping: its subnet (by index) and members."""

    name: str
    index: int
    members: dict[str, str] = field(default_factory=dict)  # container id -> address
    bridged: bool = False

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        start = ADDRESS_SPACE.network_address + self.index * 2 ** (32 - _PREFIX)
        return ipaddress.IPv4Network((start, _PREFIX))

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def bridge(self) -> str:
        return f"sqbr{self.index}"


def mac_of(address: str) -> str:
    """A container's MAC on a network: locally administered, its IPv4 address in the rest."""
    octets = ipaddress.IPv4Address(address).packed
    return ":".join(f"{byte:02x}" for byte in (0x02, 0x73, *octets))


def _by_address(member: tuple[str, str]) -> int:
    return int(ipaddress.IPv4Address(member[1]))


class NetworkBook:
    """Who is on which network, with which address: the bookkeeping, no I/O.

    Shared by ``NetworkHost`` and the fake runtime, so that the addresses,
    hosts files and listings the reconciler's tests see are the real ones.
    """

    def __init__(self) -> None:
        self._networks: dict[str, Network] = {}
        self._members: dict[str, _Member] = {}
        # Subnets whose bridge is being taken down: not given out meanwhile.
        self.retiring: set[int] = set()
        # How many containers are on each network: a new dict at each change,
        # so another thread (the metrics server's) may read it at any time.
        self.sizes: Mapping[str, int] = {}

    def clear(self) -> None:
        self._networks.clear()
        self._members.clear()
        self.retiring.clear()
        self.sizes = {}

    def _resize(self) -> None:
        self.sizes = {name: len(network.members) for name, network in self._networks.items()}

    def network(self, name: str) -> Network:
        return self._networks[name]

    def reserve(self, container_id: str, name: str, networks: Sequence[str]) -> dict[str, str]:
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
        self._members[container_id] = _Member(container_id, name, addresses)
        self._resize()
        return addresses

    def _new_network(self, name: str) -> Network:
        taken = {network.index for network in self._networks.values()} | self.retiring
        count = 2 ** (_PREFIX - ADDRESS_SPACE.prefixlen)
        index = next((i for i in range(count) if i not in taken), None)
        if index is None:
            raise RuntimeFailure(f"network {name}: all {count} networks of {ADDRESS_SPACE} in use")
        network = self._networks[name] = Network(name, index)
        return network

    def _free_address(self, network: Network) -> str:
        taken = set(network.members.values())
        subnet = network.subnet
        # .1 is the gateway; the broadcast address is no host's.
        for offset in range(2, subnet.num_addresses - 1):
            address = str(subnet.network_address + offset)
            if address not in taken:
                return address
        raise RuntimeFailure(
            f"network {network.name}: no free address left in {network.subnet} "
            f"({len(network.members)} members)"
        )

    def release(self, container_id: str) -> tuple[dict[str, str], list[Network]]:
        """Forget the container: its addresses, and the networks it was the last of."""
        member = self._members.pop(container_id, None)
        if member is None:
            return {}, []
        emptied = self._forget(container_id, list(member.addresses))
        self._resize()
        return member.addresses, emptied

    def _forget(self, container_id: str, networks: Sequence[str]) -> list[Network]:
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

    def has(self, container_id: str) -> bool:
        return container_id in self._members

    def hosts(self, key: Sequence[str]) -> str:
        """The hosts file of the containers on exactly the networks ``key``: every member."""
        lines = [_HOSTS_HEADER]
        seen: set[tuple[str, str]] = set()
        for network_name in key:
            network = self._networks.get(network_name)
            if network is None:
                continue
            for peer_id, address in sorted(network.members.items(), key=_by_address):
                peer = self._members.get(peer_id)
                if peer is None or (address, peer.name) in seen:
                    continue
                seen.add((address, peer.name))
                lines.append(f"{address}\t{peer.name}\n")
        return "".join(lines)

    def networks(self) -> tuple[NetworkInfo, ...]:
        infos = []
        for network in sorted(self._networks.values(), key=lambda n: n.name):
            members = {
                self._members[cid].name: address
                for cid, address in sorted(network.members.items(), key=_by_address)
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
        # The shared hosts files, by the networks of the containers that mount them.
        self._hosts: dict[tuple[str, ...], Path] = {}
        self._hosts_users: dict[tuple[str, ...], int] = {}
        self._hosts_count = 0
        # The user namespaces of containers running as another user than
        # root, by (uid, gid): see userns_fd.
        self._user_namespaces: dict[tuple[int, int], int] = {}

    # -- life ------------------------------------------------------------

    async def start(self) -> None:
        """Start the helper and slirp4netns; on failure nothing is left."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # In the loop's thread: PDEATHSIG follows the spawning thread. -S:
            # it needs nothing beyond the standard library. What it says on
            # stderr (a traceback, if it ever crashes) goes to a file there.
            with (self.run_dir / "helper.log").open("ab") as log:
                self.helper = subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-S", str(_HELPER), str(os.getpid())],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
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
        for held in self._user_namespaces.values():
            os.close(held)
        self._user_namespaces.clear()
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
            # A request in flight has read the helper's EOF by now; then it is ours.
            async with self._lock:
                if self.helper.stdout is not None:
                    self.helper.stdout.close()
                self.helper = None
        if self.helper_pidfd >= 0:
            os.close(self.helper_pidfd)
            self.helper_pidfd = -1
        self.book.clear()
        self._hosts.clear()
        self._hosts_users.clear()
        # Its slirp4netns log, the hosts files: nobody mounts them any more.
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- the helper's requests -------------------------------------------

    async def _request(self, request: dict[str, Any]) -> object:
        """Send ``request``; its answer's ``ok``."""
        async with self._lock:
            helper = self.helper
            if helper is None or helper.stdin is None:
                raise RuntimeFailure("the network helper is gone (the runtime is stopping)")
            try:
                helper.stdin.write(json.dumps(request).encode() + b"\n")
                helper.stdin.flush()
            except (OSError, ValueError) as exc:  # ValueError: closed by close()
                raise RuntimeFailure(f"the network helper is gone: {exc}") from exc
            return await self._reply(str(request["op"]))

    async def _reply(self, what: str) -> object:
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
                        raise RuntimeFailure(f"the network helper died ({what}){self._said()}")
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
        return reply.get("ok")

    def _said(self) -> str:
        """The last line the helper wrote on stderr, as ": ..." (or nothing)."""
        try:
            lines = (self.run_dir / "helper.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1]}" if lines else ""

    # -- members ---------------------------------------------------------

    async def userns_fd(self, uid: int = 0, gid: int = 0) -> int:
        """An fd of the user namespace for bwrap's ``--userns`` (the caller closes it).

        The helper's own for root; for another user, one inside it where
        that user is the helper's root, made by the helper once per user.
        """
        helper = self.helper
        if helper is None:
            raise RuntimeFailure("the network helper is gone (the runtime is stopping)")
        if (uid, gid) == (0, 0):
            return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        held = self._user_namespaces.get((uid, gid))
        if held is None:
            number = await self._request({"op": "userns", "uid": uid, "gid": gid})
            held = os.open(f"/proc/{helper.pid}/fd/{number}", os.O_RDONLY | os.O_CLOEXEC)
            self._user_namespaces[(uid, gid)] = held
        return os.dup(held)

    def reserve(
        self, container_id: str, name: str, networks: Sequence[str]
    ) -> tuple[dict[str, str], Path]:
        """An address on each network for the container, and the hosts file to mount.

        Containers on the same networks share one hosts file: a member that
        comes or goes rewrites one file per set of networks, not one per peer.
        """
        addresses = self.book.reserve(container_id, name, networks)
        key = self.book.member(container_id).hosts_key
        hosts = self._hosts.get(key)
        if hosts is None:
            self._hosts_count += 1
            hosts = self.run_dir / "hosts" / str(self._hosts_count)
            hosts.parent.mkdir(exist_ok=True, mode=0o700)
            hosts.write_text(self.book.hosts(key))
            self._hosts[key] = hosts
        self._hosts_users[key] = self._hosts_users.get(key, 0) + 1
        return addresses, hosts

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
                        "mtu": MTU,
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
                    # Derived from the address: a container that gets the
                    # address of one that left is reached at once, without
                    # waiting for its peers' neighbour caches to forget.
                    "mac": mac_of(address),
                    "mtu": MTU,
                }
            )
        first = self.book.network(next(iter(member.addresses)))
        await self._request({"op": "attach", "pid": pid, "links": links, "gateway": first.gateway})
        self._rewrite(member.addresses)

    def release(self, container_id: str) -> list[Network]:
        """The container is gone: its addresses are free, its peers told.

        Returns the networks it was the last member of whose bridge is up:
        the caller takes them down with ``retire``, off the container's path.
        """
        key = self.book.member(container_id).hosts_key if self.book.has(container_id) else None
        addresses, emptied = self.book.release(container_id)
        self._rewrite(addresses)
        if key is not None:
            self._hosts_users[key] -= 1
            if not self._hosts_users[key]:
                del self._hosts_users[key]
                with contextlib.suppress(OSError):
                    self._hosts.pop(key).unlink()
        bridged = [network for network in emptied if network.bridged]
        self.book.retiring.update(network.index for network in bridged)
        return bridged

    async def retire(self, network: Network) -> None:
        """Take an emptied network's bridge down; its subnet is free again after."""
        try:
            if self.helper is not None and self.helper.poll() is None:
                # The veths went with the containers' namespaces.
                with contextlib.suppress(RuntimeFailure):
                    await self._request(
                        {"op": "unbridge", "bridge": network.bridge, "isolate": str(ADDRESS_SPACE)}
                    )
        finally:
            self.book.retiring.discard(network.index)

    def _rewrite(self, networks: Mapping[str, str]) -> None:
        """Rewrite, in place, every hosts file that lists a member of ``networks``."""
        for key, hosts in self._hosts.items():
            if not any(name in networks for name in key):
                continue
            data = self.book.hosts(key).encode()
            # In place: the containers' bind mounts hold this inode.
            with contextlib.suppress(OSError), open(hosts, "r+b") as file:
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
