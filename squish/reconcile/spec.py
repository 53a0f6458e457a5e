"""From a squishfile to what the runtime runs: resolve layers, build the spec.

Called by the CLI (``squish run``) and the daemon. Sits above the three
layers it joins: the manifest model, the layer store and the runtime types.
"""

from __future__ import annotations

from squish.layers import LayerStore, Mount
from squish.model.limits import LIMITS
from squish.model.squishfile import Squishfile
from squish.runtime import ContainerSpec, PortForward


def volume_mounts(squishfile: Squishfile, store: LayerStore) -> tuple[Mount, ...]:
    """The squishfile's volumes, each made (empty) if the node has none of that name yet."""
    return tuple(
        Mount(store.volumes.ensure(volume.name), volume.target, rw=not volume.ro)
        for volume in squishfile.volumes
    )


def container_spec(squishfile: Squishfile, store: LayerStore) -> ContainerSpec:
    """Resolve the squishfile's layers (may build or fetch them) into a spec."""
    resolved = store.resolve(squishfile.base, squishfile.layers)
    volumes = volume_mounts(squishfile, store)
    return ContainerSpec(
        name=squishfile.name,
        rootfs=resolved.rootfs,
        command=squishfile.command,
        args=squishfile.args,
        mounts=(*resolved.mounts, *volumes),
        env=dict(squishfile.env),
        ports=tuple(
            PortForward(port.host, port.container, port.protocol, port.host_ip)
            for port in squishfile.ports
        ),
        network=squishfile.network != "none",
        networks=squishfile.networks,
        workdir=squishfile.workdir,
        uid=squishfile.uid,
        gid=squishfile.gid,
        rlimits=tuple(
            (name, LIMITS[name][0], soft, hard) for name, soft, hard in squishfile.limits
        ),
        seccomp=squishfile.seccomp == "default",
        secrets=tuple((key, store.secrets.get(secret).path) for key, secret in squishfile.secrets),
    )
