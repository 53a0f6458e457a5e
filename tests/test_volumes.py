"""Named volumes: ``[volumes]``, the node's store of them, and ``squish volume ...``.

The squishfile's rules as tables; the store on a real directory; the
control plane on the real reconciler (fake runtime) for who uses which;
and real containers through bwrap, rootless, for what they see and keep.
The e2e suite runs ``squish volume`` against a real daemon.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from squish.errors import LayerError, ManifestError, RuntimeFailure, VolumeNotFound
from squish.layers.volumes import Volumes
from squish.model.host import load_squishfile
from squish.model.squishfile import VolumeMount
from squish.runtime import ContainerSpec, Mount
from squish.runtime.bwrap_runtime import BwrapRuntime
from tests.control_plane import real_plane, running, squishfile, until
from tests.test_runtime import run_to_exit

pytestmark = pytest.mark.anyio


def load(tmp_path: Path, text: str) -> tuple[VolumeMount, ...]:
    path = tmp_path / "web.toml"
    path.write_text('[run]\ncommand = "/bin/app"\n' + text)
    return load_squishfile(path).volumes


def test_volumes_short_and_long_forms(tmp_path: Path) -> None:
    assert load(
        tmp_path, '[volumes]\npgdata = "/var/lib/pg"\ncache = { target = "/cache", ro = true }\n'
    ) == (VolumeMount("pgdata", "/var/lib/pg"), VolumeMount("cache", "/cache", ro=True))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[volumes]\n"a/b" = "/x"\n', 'volumes."a/b": volume names may contain only'),
        ("[volumes]\nv = 3\n", "volumes.v: must be a target path such as"),
        ('[volumes]\nv = "data"\n', "volumes.v.target: must be an absolute container path"),
        ('[volumes]\nv = "/proc/x"\n', "must not be inside /proc"),
        ('[volumes]\nv = { target = "/x", rw = true }\n', "unknown key 'rw' (allowed: target, ro)"),
        (
            '[layers]\napp = { path = "/tmp", target = "/app" }\n[volumes]\nv = "/app"\n',
            "volumes.v: target /app is already used by layers.app",
        ),
        ('[volumes]\na = "/d"\nb = "/d"\n', "volumes.b: target /d is already used by volumes.a"),
    ],
)
def test_volume_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, text)
    assert error in str(caught.value)


def test_the_store_makes_lists_sizes_and_removes(tmp_path: Path) -> None:
    volumes = Volumes(tmp_path / "volumes")
    assert volumes.list() == []
    data = volumes.ensure("pgdata")
    assert data.is_dir() and not list(data.iterdir())
    (data / "table").write_bytes(b"x" * 1000)
    assert volumes.ensure("pgdata") == data  # the same, with what it holds
    assert (data / "table").exists()
    # As a daemon started again finds it.
    assert Volumes(tmp_path / "volumes").ensure("pgdata") == data and (data / "table").exists()
    (tmp_path / "volumes" / "stray").write_text("not a volume\n")
    (tmp_path / "volumes" / "half").mkdir()  # no data directory in it
    assert [volume.name for volume in volumes.list()] == ["pgdata"]  # the others are skipped
    assert volumes.size("pgdata") == 1000
    assert data.stat().st_uid == os.getuid()
    volumes.remove("pgdata")
    assert volumes.list() == [] and not data.exists()
    with pytest.raises(VolumeNotFound, match="no volume 'pgdata'"):
        volumes.get("pgdata")
    with pytest.raises(LayerError, match=r"volume '\.\.': volume names may contain only"):
        volumes.ensure("..")


VOLUMED = squishfile() + '[volumes]\nshared = "/data"\n'


async def test_the_control_plane_knows_who_uses_each_volume(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("a", VOLUMED)
        plane.write("b", VOLUMED)
        plane.write("c", squishfile() + '[volumes]\nown = "/data"\n')
        await running(plane, "a", "b", "c")
        listed = {row["name"]: row for row in await plane.control.volumes()}
        assert listed["shared"]["containers"] == ["a", "b"]
        assert listed["own"]["containers"] == ["c"]
        assert listed["shared"]["size"] is None  # a listing does not walk them
        # The runtime was given the volume's directory, rw, at its target.
        spec = plane.reconciler.spec_of("a")
        assert spec is not None
        assert Mount(Path(listed["shared"]["path"]), "/data", rw=True) in spec.mounts
        with pytest.raises(RuntimeFailure, match="volume shared is used by a, b; remove it"):
            await plane.control.remove_volume("shared")
        assert (await plane.control.prune_volumes())["removed"] == []
        (plane.manifests / "c.toml").unlink()
        await until(lambda: "c" not in plane.ids())
        pruned = await plane.control.prune_volumes()
        assert [row["name"] for row in pruned["removed"]] == ["own"]
        assert [row["name"] for row in await plane.control.volumes()] == ["shared"]
        with pytest.raises(VolumeNotFound):
            await plane.control.volume("own")


async def test_a_volume_keeps_its_data_across_containers_and_is_shared(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    data = Volumes(tmp_path / "volumes").ensure("v")

    def spec(name: str, script: str, *, ro: bool = False) -> ContainerSpec:
        return ContainerSpec(
            name=name,
            rootfs=base_rootfs,
            command="/bin/sh",
            args=("-c", script),
            mounts=(Mount(data, "/data", rw=not ro),),
            network=False,
            uid=1000 if name == "other-user" else 0,
        )

    event, log = await run_to_exit(runtime, spec("first", "echo kept > /data/file && ls -ln /data"))
    assert event.exit_code == 0, log
    # A later container (a replacement) finds it; another user inside can write too.
    event, log = await run_to_exit(
        runtime, spec("other-user", "cat /data/file && echo more >> /data/file")
    )
    assert event.exit_code == 0 and log == "kept\n", log
    event, log = await run_to_exit(
        runtime, spec("reader", "cat /data/file; echo x > /data/new", ro=True)
    )
    assert "kept\nmore\n" in log and "Read-only file system" in log
    assert event.exit_code != 0
    assert (data / "file").read_text() == "kept\nmore\n"
    assert (data / "file").stat().st_uid == os.getuid()  # the daemon's user's, outside


def test_export_and_import_round_trip_and_a_refused_archive_changes_nothing(
    tmp_path: Path,
) -> None:
    volumes = Volumes(tmp_path / "volumes")
    data = volumes.ensure("src")
    (data / "dir").mkdir()
    (data / "dir" / "file").write_text("hello\n")
    (data / "link").symlink_to("dir/file")
    archive = tmp_path / "src.tar"
    with archive.open("wb") as sink:
        volumes.export("src", sink)
    with tarfile.open(archive) as listing:
        assert sorted(listing.getnames()) == ["dir", "dir/file", "link"]
    target = volumes.ensure("dst")
    (target / "old").write_text("replaced\n")
    volumes.import_archive("dst", archive)
    assert sorted(p.name for p in target.iterdir()) == ["dir", "link"]  # exactly the archive
    assert (target / "link").readlink() == Path("dir/file")
    assert (target / "dir" / "file").read_text() == "hello\n"
    # Made if need be.
    volumes.import_archive("fresh", archive)
    assert (volumes.get("fresh").path / "dir" / "file").exists()
    # An archive that writes outside is refused whole: the volume is as it was.
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as out:
        member = tarfile.TarInfo("../escaped")
        member.size = 1
        out.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(LayerError, match=r"\.\./escaped"):
        volumes.import_archive("dst", evil)
    assert sorted(p.name for p in target.iterdir()) == ["dir", "link"]
    assert not (tmp_path / "volumes" / "escaped").exists()
    assert [p.name for p in (tmp_path / "volumes").iterdir() if p.name.startswith(".")] == []


async def test_import_is_refused_while_a_running_container_mounts_the_volume(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "one.tar"
    with tarfile.open(archive, "w") as out:
        member = tarfile.TarInfo("restored")
        member.size = 5
        out.addfile(member, io.BytesIO(b"data\n"))

    async def chunks() -> AsyncIterator[bytes]:
        yield archive.read_bytes()

    async with real_plane(tmp_path) as plane:
        plane.write("a", VOLUMED)
        await running(plane, "a")
        with pytest.raises(RuntimeFailure, match="volume shared is mounted by a; stop them"):
            await plane.control.import_volume("shared", chunks())
        await plane.control.stop("a")
        imported = await plane.control.import_volume("shared", chunks())
        assert imported["containers"] == ["a"] and imported["size"] == 5
        with pytest.raises(LayerError, match=r"^the archive for volume shared is not an archive"):
            await plane.control.import_volume("shared", not_an_archive())


async def not_an_archive() -> AsyncIterator[bytes]:
    yield b"plain text, not a tar\n"


def test_an_import_whose_swap_fails_keeps_what_the_volume_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volumes = Volumes(tmp_path / "volumes")
    source = volumes.ensure("src")
    (source / "new").write_text("new\n")
    archive = tmp_path / "src.tar"
    with archive.open("wb") as sink:
        volumes.export("src", sink)
    target = volumes.ensure("dst")
    (target / "kept").write_text("kept\n")
    real_rename = Path.rename

    def rename(self: Path, to: Path) -> Path:
        if ".import." in self.name:  # the unpacked archive, into place
            raise OSError(28, "No space left on device")
        return real_rename(self, to)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(LayerError, match="cannot import into volume dst"):
        volumes.import_archive("dst", archive)
    assert (target / "kept").read_text() == "kept\n"
    assert not (target / "new").exists()
