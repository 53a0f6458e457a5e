"""``[limits]``: rlimits of a container's processes, parsed and applied for real.

The parsing as tables; then real containers through bwrap, rootless, in
each way a container can be networked (each releases its sandbox
differently), and ``exec`` into them: ``ulimit`` inside says what was set.
"""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from squish.errors import ManifestError, RuntimeFailure
from squish.model.host import load_squishfile
from squish.model.limits import UNLIMITED
from squish.reconcile.spec import container_spec
from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime
from tests.test_runtime import run_to_exit

pytestmark = pytest.mark.anyio

NETWORKS = {"none": {"network": False}, "slirp4netns": {}, "named": {"networks": ("n",)}}
M = 1 << 20


def load(tmp_path: Path, limits: str) -> tuple[tuple[str, int, int], ...]:
    path = tmp_path / "web.toml"
    path.write_text(f'[run]\ncommand = "/bin/app"\n[limits]\n{limits}\n')
    return load_squishfile(path).limits


@pytest.mark.parametrize(
    ("written", "limits"),
    [
        ("nofile = 4096", (("nofile", 4096, 4096),)),
        ('as = "512M"\ncore = 0', (("as", 512 * M, 512 * M), ("core", 0, 0))),
        ('stack = { soft = "8M", hard = "unlimited" }', (("stack", 8 * M, UNLIMITED),)),
        ('data = "2g"', (("data", 2 << 30, 2 << 30),)),
        ("memlock = { hard = 65536 }", (("memlock", 65536, 65536),)),
        ('cpu = "unlimited"\nnproc = 100', (("cpu", UNLIMITED, UNLIMITED), ("nproc", 100, 100))),
    ],
)
def test_limits_spellings(tmp_path: Path, written: str, limits: object) -> None:
    assert load(tmp_path, written) == limits


@pytest.mark.parametrize(
    ("written", "error"),
    [
        ('nofile = "4k"', "limits.nofile: must be an integer or \"unlimited\", got '4k'"),
        ('as = "lots"', 'limits.as: must be bytes (such as 4096 or "512M") or "unlimited"'),
        ("core = -1", 'limits.core: must be bytes (such as 4096 or "512M") or "unlimited"'),
        ('stack = { soft = "8M", hard = "1M" }', "limits.stack: soft limit 8388608 is above"),
        ("stack = { low = 1 }", 'limits.stack: must be a value or a table of "soft" and "hard"'),
        ("files = 3", "limits.files: unknown limit 'files' (allowed: nofile, nproc, core,"),
        ('memory = "512M"', "limits.memory: memory limits are not supported yet (they need "),
        ("cpus = 1.5", "limits.cpus: CPU limits are not supported yet"),
    ],
)
def test_limits_errors(tmp_path: Path, written: str, error: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, written)
    assert f"{tmp_path / 'web.toml'}:4: {error}" in str(caught.value)


def test_limits_are_part_of_what_the_container_is(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text('[run]\ncommand = "/bin/app"\n')
    plain = load_squishfile(path).spec_hash()
    assert load_squishfile(path).limits == ()
    path.write_text('[run]\ncommand = "/bin/app"\n[limits]\nnofile = 1024\n')
    assert load_squishfile(path).spec_hash() != plain


SCRIPT = "ulimit -n; ulimit -Hn; ulimit -c; ulimit -v; ulimit -s"


@pytest.mark.parametrize("where", list(NETWORKS))
async def test_the_containers_processes_and_execs_have_its_limits(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path, where: str
) -> None:
    path = tmp_path / "web.toml"
    path.write_text(
        '[run]\ncommand = "sleep"\nargs = ["1000"]\n'
        '[limits]\nnofile = { soft = 512, hard = 1024 }\ncore = 0\nas = "1G"\nstack = "4M"\n'
    )
    spec = ContainerSpec(
        name="box",
        rootfs=base_rootfs,
        command="/bin/sh",
        args=("-c", SCRIPT),
        rlimits=container_spec_rlimits(path),
        **NETWORKS[where],  # type: ignore[arg-type]
    )
    event, log = await run_to_exit(runtime, spec)
    assert event.exit_code == 0, log
    # ulimit -v and -s are in KiB.
    assert log.split() == ["512", "1024", "0", str(1 << 20), "4096"]
    running = await runtime.start(
        ContainerSpec(
            name="box",
            rootfs=base_rootfs,
            command="sleep",
            args=("1000",),
            rlimits=spec.rlimits,
            **NETWORKS[where],  # type: ignore[arg-type]
        )
    )
    result = await runtime.exec(running.id, ["/bin/sh", "-c", SCRIPT])
    assert result.output.split() == ["512", "1024", "0", str(1 << 20), "4096"], result.output
    await runtime.stop(running.id, grace=0)


def container_spec_rlimits(path: Path) -> tuple[tuple[str, int, int, int], ...]:
    """The spec's rlimits as the reconciler makes them from the squishfile."""

    class NoLayers:
        def resolve(self, base: object, layers: object) -> object:
            class Resolved:
                rootfs = Path("/")
                mounts = ()

            return Resolved()

    return container_spec(load_squishfile(path), NoLayers()).rlimits  # type: ignore[arg-type]


async def test_a_limit_above_the_daemons_hard_one_is_a_clear_start_error(
    runtime: BwrapRuntime, base_rootfs: Path
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.fail("the test needs a finite hard limit of open files")
    spec = ContainerSpec(
        name="box",
        rootfs=base_rootfs,
        command="true",
        network=False,
        rlimits=(("nofile", resource.RLIMIT_NOFILE, hard + 1, hard + 1),),
    )
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.start(spec)
    assert str(caught.value).startswith(
        f"box: cannot set limits.nofile: its hard limit is above the daemon's ({hard});"
    )
    assert runtime.list() == []
