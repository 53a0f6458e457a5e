"""``[run] user``: the command's uid and gid inside, for real, rootless, through bwrap.

In each way a container can be networked (none, its own slirp4netns, a
named network), since each makes its user namespace differently: bwrap
alone, the runtime writing the map, the network helper's namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from squish.errors import ManifestError
from squish.model.host import load_squishfile
from squish.runtime import ContainerSpec, Mount
from squish.runtime.bwrap_runtime import BwrapRuntime
from tests.test_runtime import run_to_exit

pytestmark = pytest.mark.anyio

NETWORKS = {"none": {"network": False}, "slirp4netns": {}, "named": {"networks": ("n",)}}


@pytest.mark.parametrize("where", list(NETWORKS))
async def test_the_command_runs_as_its_user_and_writes_as_ours_outside(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path, where: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = ContainerSpec(
        name="box",
        rootfs=base_rootfs,
        command="/bin/sh",
        args=(
            "-c",
            "id -u; id -g; grep CapEff /proc/self/status; "
            "echo hi > /data/file; stat -c '%u:%g' /data/file; "
            "ip addr add 10.1.2.3/24 dev lo 2>/dev/null && echo allowed || echo refused",
        ),
        mounts=(Mount(data, "/data", rw=True),),
        uid=1000,
        gid=100,
        **NETWORKS[where],  # type: ignore[arg-type]
    )
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code == 0, log
    assert log.splitlines() == ["1000", "100", "CapEff:\t0000000000000000", "1000:100", "refused"]
    # Outside, what it wrote is ours, as with root inside.
    written = (data / "file").stat()
    assert (written.st_uid, written.st_gid) == (os.getuid(), os.getgid())


async def test_exec_runs_as_the_containers_user(runtime: BwrapRuntime, base_rootfs: Path) -> None:
    for where, network in NETWORKS.items():
        spec = ContainerSpec(
            name="box",
            rootfs=base_rootfs,
            command="sleep",
            args=("1000",),
            uid=1234,
            gid=1234,
            **network,  # type: ignore[arg-type]
        )
        container = await runtime.start(spec)
        result = await runtime.exec(container.id, ["id"], timeout=10)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("uid=1234 gid=1234"), (where, result.output)
        await runtime.stop(container.id, grace=0)


async def test_containers_of_two_users_on_one_network_reach_each_other(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("served by 1000\n")
    server = ContainerSpec(
        name="server",
        rootfs=base_rootfs,
        command="httpd",
        args=("-f", "-p", "8080", "-h", "/site"),
        mounts=(Mount(site, "/site", rw=False),),
        networks=("shared",),
        uid=1000,
        gid=1000,
    )
    client = ContainerSpec(
        name="client",
        rootfs=base_rootfs,
        command="/bin/sh",
        args=(
            "-c",
            "for i in $(seq 50); do timeout 2 wget -q -O - http://server:8080/ && exit 0; "
            "sleep 0.1; done; exit 1",
        ),
        networks=("shared",),
        uid=2000,
        gid=2000,
    )
    serving = await runtime.start(server)
    event, log = await run_to_exit(runtime, client)
    assert event.exit_code == 0, log
    assert log == "served by 1000\n"
    await runtime.stop(serving.id, grace=0)
    with anyio.fail_after(5):
        while runtime.list():
            await anyio.sleep(0.05)


# -- the squishfile ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "ids"),
    [('"1000:1000"', (1000, 1000)), ('"1000"', (1000, 0)), ("33", (33, 0)), ('"0:5"', (0, 5))],
)
def test_user_spellings(tmp_path: Path, written: str, ids: tuple[int, int]) -> None:
    path = tmp_path / "web.toml"
    path.write_text(f'[run]\ncommand = "/bin/app"\nuser = {written}\n')
    loaded = load_squishfile(path)
    assert (loaded.uid, loaded.gid) == ids
    # Who it runs as is what it is: another user replaces it.
    path.write_text('[run]\ncommand = "/bin/app"\n')
    assert (load_squishfile(path).spec_hash() == loaded.spec_hash()) == (ids == (0, 0))


@pytest.mark.parametrize(
    ("written", "error"),
    [
        ('"www-data"', 'run.user: must be "UID" or "UID:GID" with numbers'),
        ('"1000:"', 'run.user: must be "UID" or "UID:GID"'),
        ('"1:2:3"', 'run.user: must be "UID" or "UID:GID"'),
        ('"-1"', 'run.user: must be "UID" or "UID:GID"'),
        ('"4294967295"', "run.user: ids must be between 0 and 4294967294"),
        ("true", 'run.user: must be "UID" or "UID:GID"'),
    ],
)
def test_user_errors(tmp_path: Path, written: str, error: str) -> None:
    path = tmp_path / "web.toml"
    path.write_text(f'[run]\ncommand = "/bin/app"\nuser = {written}\n')
    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)
    assert f"{path}:3: {error}" in str(caught.value)
