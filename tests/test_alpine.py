"""Tests of the Alpine base (``squish.layers.alpine``), grouped by behaviour.

The mirror is a real HTTP server on 127.0.0.1 in a background thread, laid
out like an Alpine mirror and serving minirootfs tarballs built here; each
test decides per path what it answers. No other network is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from squish.errors import LayerError
from squish.layers import AlpineResolver, LayerCache, LayerStore
from squish.layers.unpack import unpack
from tests.fake_http import ARCH, Mirror, send
from tests.layer_ref import Ref


def minirootfs(version: str) -> bytes:
    """A tiny minirootfs: alpine-release, a busybox and the absolute sh link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, mode in (
            ("etc/alpine-release", f"{version}\n".encode(), 0o644),
            ("bin/busybox", b"\x7fELF not really busybox", 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
        archive.addfile(link)
    return buffer.getvalue()


def resolver(
    tmp_path: Path, mirror: Mirror, *, timeout: float = 30.0, refresh: bool = False
) -> AlpineResolver:
    return AlpineResolver(
        LayerCache(tmp_path / "state" / "layers"),
        mirror=mirror.url,
        arch=ARCH,
        timeout=timeout,
        refresh=refresh,
    )


def cache_entries(tmp_path: Path) -> list[str]:
    entries = tmp_path / "state" / "layers" / "sha256"
    return sorted(os.listdir(entries)) if entries.exists() else []


# --- resolving -------------------------------------------------------------------


def test_two_branches_resolve_side_by_side(tmp_path: Path, mirror: Mirror) -> None:
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))
    mirror.publish("3.15", "3.15.4", minirootfs("3.15.4"))
    alpine = resolver(tmp_path, mirror)

    old = alpine.resolve(Ref("alpine", "3.14"))
    new = alpine.resolve(Ref("alpine", "3.15"))

    assert old != new
    assert (old / "etc/alpine-release").read_text() == "3.14.10\n"
    assert (new / "etc/alpine-release").read_text() == "3.15.4\n"
    installed = alpine.installed("3.14")
    assert installed is not None
    assert (installed.version, installed.path) == ("3.14.10", old)
    index = tmp_path / "state/layers/alpine/3.14" / f"{ARCH}.json"
    assert '"3.14.10"' in index.read_text()


def test_the_absolute_busybox_link_is_unpacked_as_a_symlink(tmp_path: Path, mirror: Mirror) -> None:
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))

    root = resolver(tmp_path, mirror).resolve(Ref("alpine", "3.14"))

    assert (root / "bin/sh").is_symlink()
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert (root / "bin/busybox").read_bytes().startswith(b"\x7fELF")


def test_the_store_resolves_alpine_from_its_mirror(tmp_path: Path, mirror: Mirror) -> None:
    host_arch = AlpineResolver(LayerCache(tmp_path / "probe")).arch
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"), arch=host_arch)
    store = LayerStore(tmp_path / "state", alpine_mirror=mirror.url)

    root = store.resolve_base(Ref("alpine", "3.14"))

    assert (root / "etc/alpine-release").read_text() == "3.14.10\n"


@pytest.mark.parametrize("version", ["edge", "3", "3.14.1", "v3.14", "../3.14", "3.x"])
def test_only_major_minor_branches_are_accepted(
    tmp_path: Path, mirror: Mirror, version: str
) -> None:
    with pytest.raises(LayerError, match="is not an Alpine release branch"):
        resolver(tmp_path, mirror).resolve(Ref("alpine", version))
    assert mirror.requests == []


# --- the cache and concurrency -----------------------------------------------------


def test_a_cached_branch_is_used_offline(tmp_path: Path, mirror: Mirror) -> None:
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))
    first = resolver(tmp_path, mirror).resolve(Ref("alpine", "3.14"))
    asked = len(mirror.requests)
    mirror.stop()

    # A new resolver (as after a restart), by default and when refreshing.
    again = resolver(tmp_path, mirror).resolve(Ref("alpine", "3.14"))
    refreshed = resolver(tmp_path, mirror, refresh=True).resolve(Ref("alpine", "3.14"))

    assert again == refreshed == first
    assert len(mirror.requests) == asked


def test_many_waiters_share_one_download(tmp_path: Path, mirror: Mirror) -> None:
    file = mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))
    tarball = mirror.routes[file]

    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(0.2)  # so that every waiter arrives while it downloads
        tarball(handler)

    mirror.routes[file] = slow
    alpine = resolver(tmp_path, mirror)
    start = threading.Barrier(8)
    results: list[Path] = []

    def resolve() -> None:
        start.wait()
        results.append(alpine.resolve(Ref("alpine", "3.14")))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 8
    assert len(set(results)) == 1
    assert mirror.requests.count(file) == 1


# --- refusals ------------------------------------------------------------------------


def test_a_sha256_mismatch_is_refused_and_nothing_cached(tmp_path: Path, mirror: Mirror) -> None:
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"), sha256="ab" * 32)
    actual = hashlib.sha256(minirootfs("3.14.10")).hexdigest()

    with pytest.raises(LayerError) as caught:
        resolver(tmp_path, mirror).resolve(Ref("alpine", "3.14"))

    message = str(caught.value)
    assert f"{mirror.url}/v3.14/releases/{ARCH}/alpine-minirootfs-3.14.10" in message
    assert "ab" * 32 in message
    assert actual in message
    assert "\n" not in message
    assert cache_entries(tmp_path) == []
    assert not (tmp_path / "state/layers/alpine").exists()
    assert [p for p in os.listdir(tmp_path / "state/layers") if p.startswith(".")] == []


def test_a_truncated_download_is_refused(tmp_path: Path, mirror: Mirror) -> None:
    file = mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))
    tarball = minirootfs("3.14.10")
    mirror.routes[file] = send(tarball[:100], length=len(tarball))

    with pytest.raises(LayerError, match=r"download of http://127\.0\.0\.1.* was cut short"):
        resolver(tmp_path, mirror).resolve(Ref("alpine", "3.14"))
    assert cache_entries(tmp_path) == []


def test_a_missing_branch_says_so(tmp_path: Path, mirror: Mirror) -> None:
    with pytest.raises(
        LayerError,
        match=rf"^no Alpine 3\.99 for {ARCH} on {mirror.url} \(http://.*latest-releases\.yaml",
    ):
        resolver(tmp_path, mirror).resolve(Ref("alpine", "3.99"))


def test_a_failing_mirror_says_so(tmp_path: Path, mirror: Mirror) -> None:
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))
    yaml_path = f"/alpine/v3.14/releases/{ARCH}/latest-releases.yaml"
    mirror.routes[yaml_path] = send(b"oops", status=500)

    with pytest.raises(LayerError, match=r"latest-releases\.yaml answered 500 .*mirror is failing"):
        resolver(tmp_path, mirror).resolve(Ref("alpine", "3.14"))


def test_a_stalled_mirror_times_out(tmp_path: Path, mirror: Mirror) -> None:
    mirror.publish("3.14", "3.14.10", minirootfs("3.14.10"))
    yaml_path = f"/alpine/v3.14/releases/{ARCH}/latest-releases.yaml"
    mirror.routes[yaml_path] = lambda handler: mirror.release.wait(30) and None

    began = time.monotonic()
    with pytest.raises(LayerError, match=r"latest-releases\.yaml stopped answering for 1s"):
        resolver(tmp_path, mirror, timeout=1.0).resolve(Ref("alpine", "3.14"))

    assert time.monotonic() - began < 3


def test_an_unreachable_mirror_with_nothing_cached_says_so(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alpine = AlpineResolver(
        LayerCache(tmp_path / "layers"), mirror=f"http://127.0.0.1:{port}", arch=ARCH
    )

    with pytest.raises(LayerError, match=r"^the Alpine mirror is unreachable .*nothing is cached"):
        alpine.resolve(Ref("alpine", "3.14"))


# --- the unpack option -----------------------------------------------------------------


def tar_of(*members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member in members:
            if isinstance(member, tuple):
                archive.addfile(member[0], io.BytesIO(member[1]))
            else:
                archive.addfile(member)
    return buffer.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize(
    ("members", "why"),
    [
        # Absolute targets are fine for a base, but nothing is written through them.
        ((symlink("etc", "/etc"), regular("etc/passwd", b"x")), "written through the symlink"),
        ((symlink("up", "../sentinel"),), "outside the layer"),
        ((regular("/etc/evil", b"x"),), "is an absolute path"),
    ],
)
def test_a_base_unpack_still_refuses_escapes(
    tmp_path: Path, members: tuple[tarfile.TarInfo, ...], why: str
) -> None:
    archive = tmp_path / "base.tar"
    archive.write_bytes(tar_of(*members))
    into = tmp_path / "into"
    into.mkdir()

    with pytest.raises(LayerError, match=why):
        unpack(archive, into, allow_absolute_symlinks=True)


def test_absolute_symlinks_are_refused_unless_allowed(tmp_path: Path) -> None:
    archive = tmp_path / "base.tar"
    archive.write_bytes(tar_of(symlink("bin/sh", "/bin/busybox")))
    (tmp_path / "plain").mkdir()
    (tmp_path / "base").mkdir()

    with pytest.raises(LayerError, match="outside the layer"):
        unpack(archive, tmp_path / "plain")
    unpack(archive, tmp_path / "base", allow_absolute_symlinks=True)

    assert os.readlink(tmp_path / "base/bin/sh") == "/bin/busybox"
