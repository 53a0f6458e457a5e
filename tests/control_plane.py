"""The real control plane for the API and CLI tests: the daemon's, on the fake runtime.

The API (squish.daemon.api) and the commands that talk to it are tested against
this, the reconciler the daemon runs, with a real directory source on a
temp dir; only the runtime is the in-package fake (squish.runtime.fake),
and layers are not resolved (``resolve`` below). So every answer a test
sees has the shape and the behaviour of the daemon's, and the end-to-end
suite in test/ covers the same verbs against a real daemon and bwrap.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from squish.daemon.control import DaemonControl
from squish.daemon.metrics import Metrics
from squish.layers import LayerStore
from squish.model.squishfile import Squishfile
from squish.reconcile.plan import Backoff
from squish.reconcile.reconciler import Reconciler
from squish.reconcile.spec import volume_mounts
from squish.reconcile.status import Phase
from squish.runtime import ContainerSpec, PortForward
from squish.runtime.fake import FakeRuntime
from squish.sources.directory import DirectorySource


def resolve(squishfile: Squishfile, store: LayerStore) -> ContainerSpec:
    """The container spec without touching any layer (the fake runtime mounts nothing);
    its volumes are made, as the daemon makes them."""
    return ContainerSpec(
        name=squishfile.name,
        rootfs=Path("/rootfs"),
        command=squishfile.command,
        args=squishfile.args,
        mounts=volume_mounts(squishfile, store),
        env=dict(squishfile.env),
        ports=tuple(
            PortForward(p.host, p.container, p.protocol, p.host_ip) for p in squishfile.ports
        ),
        network=squishfile.network != "none",
        networks=squishfile.networks,
    )


def squishfile(command: str = "/bin/app", *, port: int | None = None, env: str = "") -> str:
    text = f'[run]\ncommand = "{command}"\n'
    if env:
        text += f'[env]\nX = "{env}"\n'
    if port is not None:
        text += f"[[ports]]\ncontainer = 80\nhost = {port}\n"
    return text


@dataclass
class Plane:
    root: Path
    manifests: Path
    logs: Path
    runtime: FakeRuntime
    reconciler: Reconciler
    metrics: Metrics
    control: DaemonControl

    def write(self, name: str, text: str) -> None:
        """Drop a squishfile into the watched directory, by rename as an editor would."""
        temporary = self.manifests / f".{name}.tmp"
        temporary.write_text(text)
        temporary.rename(self.manifests / f"{name}.toml")

    def ids(self) -> dict[str, str]:
        return {c.name: c.id for c in self.runtime.list()}

    @property
    def dir(self) -> Path:
        return self.manifests

    def phase(self, name: str) -> Phase | None:
        """``name``'s phase in ``ps -a`` (a StrEnum: it equals its string too)."""
        return next(
            (Phase(s["phase"]) for s in self.control.containers() if s["name"] == name), None
        )

    def starts(self) -> int:
        return sum(1 for call, _ in self.runtime.calls if call == "start")

    def log(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


def wait_sync(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.01)


@contextlib.asynccontextmanager
async def real_plane(root: Path, **options: Any) -> AsyncIterator[Plane]:
    """The reconciler running on ``root`` (manifests/, logs/, state/) until the block ends."""
    manifests = root / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    metrics = Metrics(version="test")
    async with FakeRuntime() as runtime:
        metrics.count_networks(runtime.network_sizes)  # as the daemon does
        reconciler = Reconciler(
            source=DirectorySource(manifests),
            runtime=runtime,
            store=LayerStore(root / "state"),
            manifests_dir=manifests,
            log_dir=root / "logs",
            metrics=metrics,
            backoff=options.pop("backoff", Backoff(initial=0.3, maximum=1.0, reset_after=600)),
            resync=options.pop("resync", 3600.0),
            resolve=options.pop("resolve", resolve),
            state_dir=root / "state",
            **options,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(reconciler.run)
            try:
                yield Plane(
                    root,
                    manifests,
                    root / "logs",
                    runtime,
                    reconciler,
                    metrics,
                    DaemonControl(reconciler),
                )
            finally:
                reconciler.close()
                tg.cancel_scope.cancel()


async def running(plane: Plane, *names: str) -> None:
    """Wait until every one of ``names`` runs."""
    await until(lambda: all(plane.phase(name) == Phase.RUNNING.value for name in names))
