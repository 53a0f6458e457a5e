"""The network host: one process holding every named network's bridge.

Started by ``squish.runtime.networks.NetworkHost`` (once per runtime, when
the first container on a named network starts) as a script, not a module of
the package: it imports nothing of squish and nothing beyond the standard
library, and speaks rtnetlink itself (``Netlink`` below): a handful of
message kinds, sent in batches, so that wiring a container is two round
trips to the kernel. (pyroute2 did it first, at 17 MB more in the helper and
3.5 ms per container, mostly an event loop run for each call.)

It makes a user namespace of its own (root inside = the runtime's user
outside) and a network namespace in it, the "host namespace" of the
networks, and then wires containers into it on request, as podman's
rootless network namespace does:

- a bridge per network (``sqbrN``, the network's gateway address on it);
- a veth pair per container and network, made in one request: one end up
  on the bridge, the other in the container's network namespace as
  ``eth0``, ``eth1``..., with the MAC address and MTU it is given; then, in
  one more, that end up with its IP address and a default route through
  the first network's gateway.
  The containers' network namespaces belong to this process's user
  namespace (bwrap is given it with ``--userns``), which is what lets it
  configure them.
- forwarding on, and no route from one network's bridge to another's
  subnets (a ``prohibit`` rule per bridge): networks cannot reach each
  other through the host namespace.
- one slirp4netns (started by the runtime, joining this process's
  namespaces) gives the host namespace ``tap0`` and the way out; with proxy
  ARP on ``tap0``, libslirp talks to the containers' addresses directly, so
  their traffic needs no NAT here, and the runtime's TCP forwards go
  straight to a container's address.

Requests are JSON lines on stdin, answered with one JSON line on stdout:
``{"ok": ...}`` or ``{"error": "..."}``. The process exits when stdin
closes, and by PDEATHSIG when the runtime's thread dies; its namespaces
go with it once the last container has left them.

Usage: netns_helper.py PARENT_PID
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import itertools
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PROHIBIT_PRIORITY = 100

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

# -- rtnetlink (linux/netlink.h, rtnetlink.h, if_link.h, veth.h, fib_rules.h) --

_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_NEWROUTE = 16, 17, 20, 24
_RTM_NEWRULE, _RTM_DELRULE = 32, 33
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_LINKINFO, _IFLA_NET_NS_FD = 18, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_GATEWAY = 5
_FRA_DST, _FRA_IIFNAME, _FRA_PRIORITY = 1, 3, 6
_NLA_F_NESTED = 0x8000
_IFF_UP = 0x1
_RT_TABLE_MAIN, _RTPROT_BOOT, _RTN_UNICAST = 254, 3, 1
_FR_ACT_PROHIBIT = 8


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("HH", size, kind) + payload + b"\0" * (-size % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(attrs))


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("I", value)


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    """struct ifinfomsg: family, type, index, flags, change (up, or left as it is)."""
    flags = _IFF_UP if up else 0
    return struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, flags, flags)


def _mac(value: str) -> bytes:
    return bytes(int(part, 16) for part in value.split(":"))


def _ip(value: str) -> bytes:
    return ipaddress.IPv4Address(value).packed


class Netlink:
    """An rtnetlink socket of the network namespace it was made in; requests in batches.

    Each message asks for an acknowledgement; a batch is one send, then the
    answers are read until every message has its own. The first refusal is
    raised as an ``OSError`` saying which request it was.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def batch(self, *requests: tuple[str, int, int, bytes]) -> None:
        """Send (what, type, extra flags, body) requests at once; raise on the first error."""
        wanted: dict[int, str] = {}
        data = b""
        for what, kind, flags, body in requests:
            seq = next(self._seq)
            wanted[seq] = what
            header = struct.pack(
                "IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, seq, 0
            )
            data += header + body
        self.sock.send(data)
        answers: dict[int, int] = {}  # seq -> errno, 0 for done
        while len(answers) < len(wanted):
            reply = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(reply):
                size, kind, _, seq, _ = struct.unpack_from("IHHII", reply, offset)
                if kind == _NLMSG_ERROR and seq in wanted:
                    (error,) = struct.unpack_from("i", reply, offset + 16)
                    answers[seq] = -error
                offset += (size + 3) & ~3
        for seq, code in sorted(answers.items()):
            if code:
                raise OSError(code, f"{wanted[seq]}: {os.strerror(code)}")


def _link(ifname: str, kind: str, *, mtu: int) -> bytes:
    """The attributes of a new link of ``kind``."""
    return (
        _attr(_IFLA_IFNAME, _name(ifname))
        + _attr(_IFLA_MTU, _u32(mtu))
        + _nested(_IFLA_LINKINFO, _attr(_IFLA_INFO_KIND, _name(kind)))
    )


def _write(path: str, data: str) -> None:
    with open(path, "w") as file:
        file.write(data)


def become_root_of_own_namespaces() -> None:
    """A new user namespace (root inside = us outside) and a network namespace in it."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


_NEW = _NLM_F_CREATE | _NLM_F_EXCL


class Host:
    """The host namespace's links, and the containers' ends while wiring them."""

    def __init__(self) -> None:
        self.nl = Netlink()
        self.own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        lo = socket.if_nametoindex("lo")
        self.nl.batch(("lo up", _RTM_NEWLINK, 0, _ifinfo(lo, up=True)))
        _write("/proc/sys/net/ipv4/ip_forward", "1")

    def userns(self, uid: int, gid: int) -> int:
        """A user namespace in this one, ``uid``/``gid`` in it being root here: its fd.

        For a container that runs as that user (bwrap joins it with
        ``--userns``): its own namespaces then belong to it, which this
        process, root of the parent, still configures. A child makes it and
        maps itself (an unprivileged process may map its own ids), and is
        held until its namespace is open here; the runtime opens this
        process's fd of it. Kept open: the namespace lives as long as it is.
        """
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, which only ever _exits
            code = 1
            try:
                os.close(ready_r)
                os.close(hold_w)
                _check(_libc.unshare(_CLONE_NEWUSER), "unshare")
                _write("/proc/self/uid_map", f"{uid} 0 1")
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/gid_map", f"{gid} 0 1")
                os.write(ready_w, b"1")
                os.read(hold_r, 1)
                code = 0
            except OSError as exc:
                sys.stderr.write(f"user namespace for {uid}:{gid}: {exc}\n")
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(hold_r)
        try:
            if os.read(ready_r, 1) != b"1":
                raise OSError(f"cannot make a user namespace for uid {uid}, gid {gid}")
            return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(ready_r)
            os.close(hold_w)
            os.waitpid(pid, 0)

    def uplink(self, ifname: str) -> None:
        """slirp4netns's tap is up: answer ARP on it for the containers' addresses.

        At once: by default proxy ARP answers after up to 0.8 s, which a
        container's first connection out (or a forward's first) would wait.
        """
        _write(f"/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay", "0")
        _write(f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp", "1")

    def bridge(self, bridge: str, gateway: str, prefix: int, isolate: str, mtu: int) -> None:
        """The bridge of one network, made once; no route from it into ``isolate``."""
        try:
            socket.if_nametoindex(bridge)
            return
        except OSError:
            pass
        self.nl.batch(
            ("bridge", _RTM_NEWLINK, _NEW, _ifinfo(up=True) + _link(bridge, "bridge", mtu=mtu))
        )
        index = socket.if_nametoindex(bridge)
        network, _, bits = isolate.partition("/")
        self.nl.batch(
            (
                "gateway address",
                _RTM_NEWADDR,
                _NEW,
                struct.pack("BBBBI", socket.AF_INET, prefix, 0, 0, index)
                + _attr(_IFA_LOCAL, _ip(gateway))
                + _attr(_IFA_ADDRESS, _ip(gateway)),
            ),
            ("isolation rule", _RTM_NEWRULE, _NEW, _rule(bridge, network, int(bits))),
        )

    def unbridge(self, bridge: str, isolate: str) -> None:
        try:
            index = socket.if_nametoindex(bridge)
        except OSError:
            return
        network, _, bits = isolate.partition("/")
        self.nl.batch(
            ("isolation rule", _RTM_DELRULE, 0, _rule(bridge, network, int(bits))),
            ("bridge", _RTM_DELLINK, 0, _ifinfo(index)),
        )

    def attach(self, pid: int, links: list[dict[str, Any]], gateway: str | None) -> None:
        """Wire the container whose sandbox is ``pid`` into each link's bridge."""
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            veths = []
            for link in links:
                # Brought up inside, below: up at creation, the kernel says ENOTCONN.
                peer = _ifinfo() + (
                    _attr(_IFLA_IFNAME, _name(link["ifname"]))
                    + _attr(_IFLA_ADDRESS, _mac(link["mac"]))
                    + _attr(_IFLA_MTU, _u32(link["mtu"]))
                    + _attr(_IFLA_NET_NS_FD, _u32(netns))
                )
                master = _attr(_IFLA_MASTER, _u32(socket.if_nametoindex(link["bridge"])))
                attrs = (
                    _attr(_IFLA_IFNAME, _name(link["host_ifname"]))
                    + _attr(_IFLA_MTU, _u32(link["mtu"]))
                    + master
                    + _nested(
                        _IFLA_LINKINFO,
                        _attr(_IFLA_INFO_KIND, _name("veth")),
                        _nested(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer)),
                    )
                )
                veths.append(
                    (f"veth {link['host_ifname']}", _RTM_NEWLINK, _NEW, _ifinfo(up=True) + attrs)
                )
            self.nl.batch(*veths)
            # A netlink socket made inside the container's namespace stays there.
            _check(_libc.setns(netns, _CLONE_NEWNET), "setns to the container")
            try:
                inner = Netlink()
                indexes = [socket.if_nametoindex(link["ifname"]) for link in links]
            finally:
                _check(_libc.setns(self.own_netns, _CLONE_NEWNET), "setns back")
            try:
                requests = []
                for link, index in zip(links, indexes, strict=True):
                    requests.append(
                        (f"{link['ifname']} up", _RTM_NEWLINK, 0, _ifinfo(index, up=True))
                    )
                    requests.append(
                        (
                            f"address of {link['ifname']}",
                            _RTM_NEWADDR,
                            _NEW,
                            struct.pack("BBBBI", socket.AF_INET, link["prefix"], 0, 0, index)
                            + _attr(_IFA_LOCAL, _ip(link["address"]))
                            + _attr(_IFA_ADDRESS, _ip(link["address"])),
                        )
                    )
                if gateway is not None:
                    requests.append(
                        (
                            "default route",
                            _RTM_NEWROUTE,
                            _NEW,
                            struct.pack(
                                "BBBBBBBBI",
                                socket.AF_INET,
                                0,
                                0,
                                0,
                                _RT_TABLE_MAIN,
                                _RTPROT_BOOT,
                                0,
                                _RTN_UNICAST,
                                0,
                            )
                            + _attr(_RTA_GATEWAY, _ip(gateway)),
                        )
                    )
                inner.batch(*requests)
            finally:
                inner.close()
        finally:
            os.close(netns)


def _rule(bridge: str, network: str, bits: int) -> bytes:
    """struct fib_rule_hdr and attributes: from ``bridge`` to ``network/bits``, prohibit."""
    header = struct.pack("BBBBBBBBI", socket.AF_INET, bits, 0, 0, 0, 0, 0, _FR_ACT_PROHIBIT, 0)
    return (
        header
        + _attr(_FRA_IIFNAME, _name(bridge))
        + _attr(_FRA_DST, _ip(network))
        + _attr(_FRA_PRIORITY, _u32(_PROHIBIT_PRIORITY))
    )


def serve(host: Host) -> None:
    for line in sys.stdin:
        try:
            request = json.loads(line)
            op = request.pop("op")
            if op == "bridge":
                host.bridge(**request)
            elif op == "unbridge":
                host.unbridge(**request)
            elif op == "attach":
                host.attach(**request)
            elif op == "uplink":
                host.uplink(**request)
            elif op == "userns":
                reply: dict[str, Any] = {"ok": host.userns(**request)}
            else:
                raise ValueError(f"unknown request {op!r}")
            if op != "userns":
                reply = {"ok": True}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            reply = {"error": str(exc) or type(exc).__name__}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    try:
        become_root_of_own_namespaces()
        # After the unshare: a change of credentials clears PDEATHSIG.
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        if os.getppid() != parent:
            return 1  # the runtime died before PDEATHSIG was armed
        host = Host()
    except OSError as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps({"ok": True}) + "\n")
    sys.stdout.flush()
    serve(host)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
