"""``squish layer pull|import|ls|rm|gc``, end to end but for the containers.

The real CLI and client talk over a real unix socket to the real API app,
whose layer routes are a real ``LayerAdmin`` on a real ``LayerStore`` in
``tmp_path``, downloading from a fake registry and Alpine mirror on
127.0.0.1. The container routes are the real reconciler's on the fake
runtime (tests/control_plane.py); ``users`` (what the reconciler would say
is in use) is set per test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from rich.filesize import decimal
from test_alpine import minirootfs
from test_registry import sdk

from squish.cli.client import Client
from squish.daemon.api import make_app, serve
from squish.daemon.layer_admin import LayerAdmin
from squish.layers import LayerStore
from squish.main import main
from squish.model.host import host_paths
from squish.model.squishfile import Squishfile, parse_squishfile
from tests.control_plane import real_plane
from tests.fake_http import ARCH, Mirror, Registry, digest
from tests.layer_ref import Ref


@dataclass
class Daemon:
    socket: Path
    store: LayerStore
    wanted: dict[str, Squishfile] = field(default_factory=dict)
    mounted: dict[str, list[Path]] = field(default_factory=dict)

    def squish(self, *argv: str) -> int:
        return main(["--socket", str(self.socket), *argv])

    def want(self, name: str, layers: str) -> None:
        text = f'[layers]\n{layers}\n[run]\ncommand = "/bin/true"\n'
        self.wanted[name] = parse_squishfile(
            text.encode(), file=f"{name}.toml", paths=host_paths(self.socket.parent), name=name
        )


@pytest.fixture
def daemon(tmp_path: Path, registry: Registry, mirror: Mirror) -> Iterator[Daemon]:
    store = LayerStore(
        tmp_path / "state", registries={"default": registry.template}, alpine_mirror=mirror.url
    )
    store.alpine.arch = store.registry.arch = ARCH
    daemon = Daemon(tmp_path / "squish.sock", store)
    layers = LayerAdmin(store, lambda: (daemon.wanted, daemon.mounted))
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(real_plane(tmp_path / "daemon")) as plane,
    ):
        app = make_app(plane.control, layers)
        future, _ = portal.start_task(serve, app, daemon.socket)
        try:
            yield daemon
        finally:
            future.cancel()


def ls(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert daemon.squish("layer", "ls", "--json") == 0
    layers: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return layers


def test_pull_downloads_and_ls_shows_it(
    daemon: Daemon, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = sdk("py311")
    registry.publish("python", "3.11", tarball)

    assert daemon.squish("layer", "pull", "python", "3.11") == 0

    out = capsys.readouterr().out
    assert out.startswith("pulled python 3.11 (") and digest(tarball)[:12] in out
    (layer,) = ls(daemon, capsys)
    assert (layer["name"], layer["version"], layer["kind"]) == ("python", "3.11", "registry")
    assert layer["sha256"] == digest(tarball)
    assert layer["used_by"] == []
    assert (Path(str(layer["path"])) / "lib" / "0.txt").read_text() == "py311 0\n"


def test_pull_reports_progress_then_the_layer(daemon: Daemon, registry: Registry) -> None:
    registry.publish("python", "3.11", tarball := sdk("progress", files=2000))

    with Client(daemon.socket) as client:
        items = list(client.pull_layer("python", "3.11"))

    progress = [item["progress"] for item in items if "progress" in item]
    assert progress, items
    assert progress[-1] == {"done": len(tarball), "total": len(tarball)}
    assert items[-1]["layer"]["sha256"] == digest(tarball)


def test_a_failing_pull_says_why_and_caches_nothing(
    daemon: Daemon, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.publish("python", "3.11", sdk("bad"), sha256="ab" * 32)

    assert daemon.squish("layer", "pull", "python", "3.11") == 1

    err = capsys.readouterr().err
    assert err.startswith("squish: http://127.0.0.1") and "refusing it" in err
    assert len(err.splitlines()) == 1
    assert ls(daemon, capsys) == []


def test_pulling_a_version_the_registry_lacks_names_the_url_asked(
    daemon: Daemon, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.publish("python", "3.11", sdk("py311"))

    assert daemon.squish("layer", "pull", "python", "3.99") == 1

    (line,) = capsys.readouterr().err.splitlines()
    url = f"{registry.url}/python/3.99/{ARCH}.tar.gz"
    assert (
        line
        == f"squish: python 3.99 ({ARCH}) was not found in the layer registry ({url} answered 404)"
    )
    assert ls(daemon, capsys) == []


def test_import_adds_a_layer_from_a_file(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "python-3.12.tar.gz"
    archive.write_bytes(sdk("imported"))

    assert daemon.squish("layer", "import", "python", "3.12", str(archive)) == 0

    assert capsys.readouterr().out.startswith("imported python 3.12 (")
    (layer,) = ls(daemon, capsys)
    assert layer["source"] == f"import:{archive}"
    assert daemon.store.registry.installed("python", "3.12") is not None


def test_import_refuses_a_wrong_sha256(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "python.tar.gz"
    archive.write_bytes(sdk("imported"))

    status = daemon.squish("layer", "import", "python", "3.12", str(archive), "--sha256", "0" * 64)

    assert status == 1
    assert "not the 000" in capsys.readouterr().err
    assert ls(daemon, capsys) == []


def test_alpine_is_pulled_and_imported_by_branch(
    daemon: Daemon, mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.publish("3.19", "3.19.4", minirootfs("3.19.4"))
    archive = tmp_path / "alpine-minirootfs-3.20.3.tar.gz"
    archive.write_bytes(minirootfs("3.20.3"))

    assert daemon.squish("layer", "pull", "alpine", "3.19") == 0
    assert daemon.squish("layer", "import", "alpine", "3.20", str(archive)) == 0
    assert daemon.squish("layer", "import", "alpine", "3.21", str(archive)) == 1

    assert "is not an Alpine 3.21 minirootfs (Alpine 3.20.3)" in capsys.readouterr().err
    found = {(layer["name"], layer["version"]) for layer in ls(daemon, capsys)}
    assert found == {("alpine", "3.19.4"), ("alpine", "3.20.3")}


def test_rm_refuses_a_layer_in_use_then_removes_it(
    daemon: Daemon, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.publish("python", "3.11", sdk("used"))
    assert daemon.squish("layer", "pull", "python", "3.11") == 0
    path = Path(str(ls(daemon, capsys)[0]["path"]))
    daemon.want("web", 'python = "3.11"')

    assert daemon.squish("layer", "rm", "python", "3.11") == 1
    assert "is used by web" in capsys.readouterr().err
    assert path.is_dir()

    daemon.wanted.clear()
    assert daemon.squish("layer", "rm", "python", "3.11") == 0
    assert capsys.readouterr().out.startswith("removed python 3.11")
    assert not path.exists()
    assert ls(daemon, capsys) == []
    assert daemon.squish("layer", "rm", "python", "3.11") == 1
    assert "no layer python 3.11 in the cache" in capsys.readouterr().err


def test_gc_keeps_what_squishfiles_and_containers_use(
    daemon: Daemon, registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in ("3.10", "3.11", "3.12"):
        registry.publish("python", version, sdk(version))
        assert daemon.squish("layer", "pull", "python", version) == 0
    archive = tmp_path / "app.tar.gz"
    archive.write_bytes(sdk("app"))
    app = daemon.store.resolve(None, [Ref("app", path=archive, target="/app")]).mounts[0].source
    daemon.want("web", 'python = "3.11"')
    # 3.12 is no longer wanted, but a container still runs with it mounted.
    running = daemon.store.registry.installed("python", "3.12")
    assert running is not None
    daemon.mounted["old"] = [running.path / "bin"]
    capsys.readouterr()

    assert daemon.squish("layer", "gc") == 0

    out = capsys.readouterr().out
    assert "removed python 3.10" in out and "2 layer(s) removed" in out
    assert not app.exists()  # the unpacked archive nobody names any more
    left = {(layer["name"], layer["version"]): layer["used_by"] for layer in ls(daemon, capsys)}
    assert left == {
        ("python", "3.11"): ["web"],
        ("python", "3.12"): ["old"],
        # Built for the archive's resolve above; the default base, so kept.
        ("busybox", "built-in"): ["(default base)", "web"],
    }


def test_gc_of_two_names_sharing_one_archive_removes_both_and_counts_it_once(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "sdk.tar.gz"
    archive.write_bytes(sdk("shared"))
    assert daemon.squish("layer", "import", "node", "20", str(archive)) == 0
    assert daemon.squish("layer", "import", "python", "3.11", str(archive)) == 0
    (size,) = {layer["size"] for layer in ls(daemon, capsys)}

    assert daemon.squish("layer", "gc") == 0

    out = capsys.readouterr().out
    assert "removed node 20" in out and "removed python 3.11" in out
    assert f"2 layer(s) removed, {decimal(int(str(size)))} freed" in out
    assert ls(daemon, capsys) == []


def test_rm_of_one_of_two_names_sharing_an_archive_keeps_the_other(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "sdk.tar.gz"
    archive.write_bytes(sdk("shared"))
    assert daemon.squish("layer", "import", "node", "20", str(archive)) == 0
    assert daemon.squish("layer", "import", "python", "3.11", str(archive)) == 0

    assert daemon.squish("layer", "rm", "node", "20") == 0

    (left,) = ls(daemon, capsys)
    assert (left["name"], left["version"]) == ("python", "3.11")
    assert Path(str(left["path"])).is_dir()


def test_rm_alpine_by_its_branch_forgets_the_branch(
    daemon: Daemon, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.publish("3.19", "3.19.4", minirootfs("3.19.4"))
    assert daemon.squish("layer", "pull", "alpine", "3.19") == 0

    assert daemon.squish("layer", "rm", "alpine", "3.19") == 0

    assert capsys.readouterr().out.splitlines()[-1].startswith("removed alpine 3.19.4 (")
    assert daemon.store.alpine.installed("3.19") is None
    assert not (daemon.store.cache.root / "alpine" / "3.19" / f"{ARCH}.json").exists()
    assert ls(daemon, capsys) == []
