"""The network host: one process holding every named network's bridge.

Started by ``squish.runtime.networks.NetworkHost`` (once per runtime, when
the first container on a named network starts) as a script, not a module of
the package: it imports pyroute2 and nothing of squish. It makes a user
namespace of its own (root inside = the runtime's user outside) and a
network namespace in it, the "host namespace" of the networks, and then
wires containers into it on request, as podman's rootless network
namespace does:

- a bridge per network (``sqbrN``, the network's gateway address on it);
- a veth pair per container and network: one end on the bridge, the other
  moved into the container's network namespace as ``eth0``, ``eth1``...,
  with its address, and a default route through the first network's
  gateway. The containers' network namespaces belong to this process's user
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
import json
import os
import signal
import sys
from contextlib import suppress
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PROHIBIT_PRIORITY = 100

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


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


class Host:
    """The host namespace's links, and the containers' ends while wiring them."""

    def __init__(self) -> None:
        self.ipr = IPRoute()
        self.own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.ipr.link("set", index=self._index("lo"), state="up")
        _write("/proc/sys/net/ipv4/ip_forward", "1")

    def _index(self, ifname: str, ipr: IPRoute | None = None) -> int:
        found = (ipr or self.ipr).link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no link {ifname}")
        return int(found[0])

    def uplink(self, ifname: str) -> None:
        """slirp4netns's tap is up: answer ARP on it for the containers' addresses.

        At once: by default proxy ARP answers after up to 0.8 s, which a
        container's first connection out (or a forward's first) would wait.
        """
        _write(f"/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay", "0")
        _write(f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp", "1")

    def bridge(self, bridge: str, gateway: str, prefix: int, isolate: str, mtu: int) -> None:
        """The bridge of one network, made once; no route from it into ``isolate``."""
        if self.ipr.link_lookup(ifname=bridge):
            return
        self.ipr.link("add", ifname=bridge, kind="bridge", mtu=mtu)
        index = self._index(bridge)
        self.ipr.addr("add", index=index, address=gateway, prefixlen=prefix)
        self.ipr.link("set", index=index, state="up")
        network, _, bits = isolate.partition("/")
        self.ipr.rule(
            "add",
            iifname=bridge,
            dst=network,
            dst_len=int(bits),
            action="FR_ACT_PROHIBIT",
            priority=_PROHIBIT_PRIORITY,
        )

    def unbridge(self, bridge: str) -> None:
        found = self.ipr.link_lookup(ifname=bridge)
        if not found:
            return
        with suppress(NetlinkError):
            for rule in self.ipr.get_rules(iifname=bridge):
                self.ipr.rule("del", **_rule_key(rule))
        self.ipr.link("del", index=found[0])

    def attach(self, pid: int, links: list[dict[str, Any]], gateway: str | None) -> None:
        """Wire the container whose sandbox is ``pid`` into each link's bridge."""
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for link in links:
                self.ipr.link(
                    "add",
                    ifname=link["host_ifname"],
                    kind="veth",
                    mtu=link["mtu"],
                    peer={
                        "ifname": link["ifname"],
                        "net_ns_fd": netns,
                        "address": link["mac"],
                        "mtu": link["mtu"],
                    },
                )
                self.ipr.link(
                    "set",
                    index=self._index(link["host_ifname"]),
                    master=self._index(link["bridge"]),
                    state="up",
                )
            # A netlink socket made inside the container's namespace stays there.
            _check(_libc.setns(netns, _CLONE_NEWNET), "setns to the container")
            try:
                inner = IPRoute()
            finally:
                _check(_libc.setns(self.own_netns, _CLONE_NEWNET), "setns back")
            with inner:
                for link in links:
                    index = self._index(link["ifname"], inner)
                    inner.addr(
                        "add", index=index, address=link["address"], prefixlen=link["prefix"]
                    )
                    inner.link("set", index=index, state="up")
                if gateway is not None:
                    inner.route("add", dst="0.0.0.0/0", gateway=gateway)
        finally:
            os.close(netns)


def _rule_key(rule: Any) -> dict[str, Any]:
    return {
        "iifname": rule.get_attr("FRA_IIFNAME"),
        "dst": rule.get_attr("FRA_DST"),
        "dst_len": rule["dst_len"],
        "priority": rule.get_attr("FRA_PRIORITY"),
        "action": rule["action"],
    }


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
            else:
                raise ValueError(f"unknown request {op!r}")
            reply: dict[str, Any] = {"ok": True}
        except (OSError, NetlinkError, LookupError, ValueError, TypeError, KeyError) as exc:
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
    except (OSError, NetlinkError, LookupError) as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps({"ok": True}) + "\n")
    sys.stdout.flush()
    serve(host)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
