"""Tests of layer registries (``squish.layers.registry``) against a fake registry.

The registry is a real HTTP server on 127.0.0.1 (``tests.fake_http``) laid
out like the template ``{url}/{name}/{version}/{arch}.tar.gz``, serving
tarballs built here, with or without ``.sha256`` files next to them.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from squish.errors import LayerError
from squish.layers import LayerCache, LayerStore
from squish.layers.registry import RegistryResolver, check_template
from tests.fake_http import ARCH, Registry, digest, send
from tests.layer_ref import Ref


def sdk(marker: str, files: int = 3) -> bytes:
    """A small SDK tarball: bin/tool (executable) and some lib files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        entries = [("bin/tool", f"#!/bin/sh\necho {marker}\n".encode(), 0o755)]
        entries += [(f"lib/{i}.txt", f"{marker} {i}\n".encode(), 0o644) for i in range(files)]
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def resolver(tmp_path: Path, registry: Registry, **kwargs: object) -> RegistryResolver:
    return RegistryResolver(
        LayerCache(tmp_path / "layers"),
        registries={"default": registry.template},
        arch=ARCH,
        **kwargs,  # type: ignore[arg-type]
    )


def entries(tmp_path: Path) -> list[str]:
    return LayerCache(tmp_path / "layers").digests()


# --- resolving -----------------------------------------------------------------


def test_a_version_layer_is_downloaded_verified_and_unpacked(
    tmp_path: Path, registry: Registry
) -> None:
    registry.publish("python", "3.11", sdk("py311"))

    path = resolver(tmp_path, registry).resolve(Ref("python", "3.11"))

    assert (path / "bin" / "tool").read_text() == "#!/bin/sh\necho py311\n"
    assert (path / "bin" / "tool").stat().st_mode & 0o111
    assert registry.requests == [
        f"/layers/python/3.11/{ARCH}.tar.gz.sha256",
        f"/layers/python/3.11/{ARCH}.tar.gz",
    ]


def test_the_store_mounts_a_version_layer_at_sdk_name(tmp_path: Path, registry: Registry) -> None:
    registry.publish("python", "3.11", sdk("py311"))
    store = LayerStore(tmp_path / "state", registries={"default": registry.template})

    resolved = store.resolve(None, [Ref("python", "3.11", target="/sdk/python")])

    (mount,) = resolved.mounts
    assert mount.target == "/sdk/python" and not mount.rw
    assert (mount.source / "lib" / "0.txt").read_text() == "py311 0\n"


def test_a_per_name_template_wins_over_the_default(tmp_path: Path, registry: Registry) -> None:
    registry.routes[f"/layers/special/node/20/{ARCH}.tgz"] = send(tarball := sdk("node20"))
    registry.routes[f"/layers/special/node/20/{ARCH}.tgz.sha256"] = send(digest(tarball).encode())
    layers = RegistryResolver(
        LayerCache(tmp_path / "layers"),
        registries={
            "default": registry.template,
            "node": registry.url + "/special/{name}/{version}/{arch}.tgz",
        },
        arch=ARCH,
    )

    path = layers.resolve(Ref("node", "20"))

    assert (path / "lib" / "0.txt").read_text() == "node20 0\n"


def test_a_pinned_sha256_needs_no_sha256_file(tmp_path: Path, registry: Registry) -> None:
    tarball = sdk("pinned")
    registry.publish("python", "3.12", tarball, sha256=None)

    path = resolver(tmp_path, registry).resolve(Ref("python", "3.12", sha256=digest(tarball)))

    assert (path / "lib" / "1.txt").read_text() == "pinned 1\n"
    assert not any(request.endswith(".sha256") for request in registry.requests)


def test_a_layer_that_cannot_be_verified_is_refused(tmp_path: Path, registry: Registry) -> None:
    registry.publish("python", "3.11", sdk("unverified"), sha256=None)

    with pytest.raises(LayerError, match=r"publishes no .*\.sha256 and the squishfile pins no"):
        resolver(tmp_path, registry).resolve(Ref("python", "3.11"))
    assert entries(tmp_path) == []
    assert f"/layers/python/3.11/{ARCH}.tar.gz" not in registry.requests


def test_a_sha256_mismatch_is_refused_and_nothing_cached(
    tmp_path: Path, registry: Registry
) -> None:
    tarball = sdk("tampered")
    registry.publish("python", "3.11", tarball, sha256="ab" * 32)

    with pytest.raises(LayerError) as caught:
        resolver(tmp_path, registry).resolve(Ref("python", "3.11"))

    message = str(caught.value)
    assert f"has sha256 {digest(tarball)}" in message and "ab" * 32 in message
    assert "refusing it" in message and "\n" not in message
    assert entries(tmp_path) == []
    assert not (tmp_path / "layers" / "registry" / "python").exists()


def test_a_pinned_sha256_that_does_not_match_is_refused(tmp_path: Path, registry: Registry) -> None:
    registry.publish("python", "3.11", sdk("other"))

    with pytest.raises(LayerError, match=r"but the squishfile says cd+"):
        resolver(tmp_path, registry).resolve(Ref("python", "3.11", sha256="cd" * 32))
    assert entries(tmp_path) == []


@pytest.mark.parametrize("sha256", [None, "ab" * 32], ids=["unpinned", "pinned"])
def test_a_version_the_registry_does_not_have_is_not_found_at_its_url(
    tmp_path: Path, registry: Registry, sha256: str | None
) -> None:
    registry.publish("python", "3.11", sdk("other version"))
    url = f"{registry.url}/python/9.9/{ARCH}.tar.gz"

    with pytest.raises(LayerError) as raised:
        resolver(tmp_path, registry).resolve(Ref("python", "9.9", sha256=sha256))

    assert str(raised.value) == (
        f"python 9.9 ({ARCH}) was not found in the layer registry ({url} answered 404)"
    )
    assert entries(tmp_path) == []


def test_failing_registries_say_so(tmp_path: Path, registry: Registry) -> None:
    registry.routes[f"/layers/go/1.22/{ARCH}.tar.gz.sha256"] = send(b"oops", status=500)
    with pytest.raises(LayerError, match=r"answered 500 .*the layer registry is failing"):
        resolver(tmp_path, registry).resolve(Ref("go", "1.22"))


def test_an_unreachable_registry_says_so(tmp_path: Path) -> None:
    layers = RegistryResolver(
        LayerCache(tmp_path / "layers"),
        registries={"default": "http://127.0.0.1:1/{name}/{version}.tar.gz"},
        arch=ARCH,
    )

    with pytest.raises(LayerError, match=r"^the layer registry is unreachable .*--registry"):
        layers.resolve(Ref("python", "3.11"))


def test_a_cached_layer_is_used_offline(tmp_path: Path, registry: Registry) -> None:
    registry.publish("python", "3.11", sdk("offline"))
    first = resolver(tmp_path, registry).resolve(Ref("python", "3.11"))
    registry.stop()

    again = resolver(tmp_path, registry).resolve(Ref("python", "3.11"))

    assert again == first
    assert (again / "lib" / "2.txt").read_text() == "offline 2\n"


def test_many_waiters_share_one_download(tmp_path: Path, registry: Registry) -> None:
    tarball = sdk("shared", files=200)
    path = registry.publish("python", "3.11", tarball)
    layers = resolver(tmp_path, registry)
    results: list[Path] = []

    def want() -> None:
        results.append(layers.resolve(Ref("python", "3.11")))

    threads = [threading.Thread(target=want) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 10 and len(set(results)) == 1
    assert registry.requests.count(path) == 1
    assert len(entries(tmp_path)) == 1


def test_a_trickling_download_meets_the_deadline(tmp_path: Path, registry: Registry) -> None:
    tarball = sdk("slow")
    registry.publish("python", "3.11", tarball)

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(tarball)))
        handler.end_headers()
        for byte in tarball:
            if registry.release.wait(0.05):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    registry.routes[f"/layers/python/3.11/{ARCH}.tar.gz"] = trickle
    started = time.monotonic()

    with pytest.raises(LayerError, match=r"took longer than 0\.5s; gave up"):
        resolver(tmp_path, registry, timeout=5.0, deadline=0.5).resolve(Ref("python", "3.11"))
    assert time.monotonic() - started < 4
    assert entries(tmp_path) == []


def test_no_registry_configured_points_at_import(tmp_path: Path) -> None:
    layers = RegistryResolver(LayerCache(tmp_path / "layers"), registries={}, arch=ARCH)

    with pytest.raises(LayerError) as raised:
        layers.resolve(Ref("python", "3.11"))

    message = str(raised.value)
    assert message.startswith("no layer registry is configured for 'python'")
    # The config key it names is the one the config file reads.
    assert "[layers.registries] in the config" in message
    assert "squish layer import python 3.11 FILE" in message


# --- import, list, forget ----------------------------------------------------------


def test_an_imported_layer_resolves_with_no_registry(tmp_path: Path) -> None:
    tarball = tmp_path / "python.tar.gz"
    tarball.write_bytes(sdk("imported"))
    layers = RegistryResolver(LayerCache(tmp_path / "layers"), registries={}, arch=ARCH)

    with tarball.open("rb") as file:
        imported = layers.import_file("python", "3.11", file, source=str(tarball))

    assert imported.sha256 == digest(tarball.read_bytes())
    assert layers.resolve(Ref("python", "3.11")) == imported.path
    assert [(layer.name, layer.version) for layer in layers.layers()] == [("python", "3.11")]
    assert layers.layers()[0].source == f"import:{tarball}"


def test_an_import_with_the_wrong_sha256_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "python.tar.gz"
    tarball.write_bytes(sdk("imported"))
    layers = RegistryResolver(LayerCache(tmp_path / "layers"), registries={}, arch=ARCH)

    with tarball.open("rb") as file, pytest.raises(LayerError, match=r"not the e+ given"):
        layers.import_file("python", "3.11", file, source=str(tarball), sha256="e" * 64)
    assert layers.layers() == []


def test_the_same_archive_as_a_path_layer_shares_the_entry(tmp_path: Path) -> None:
    tarball = tmp_path / "python.tar.gz"
    tarball.write_bytes(sdk("both"))
    store = LayerStore(tmp_path / "state", registries={})
    with tarball.open("rb") as file:
        imported = store.registry.import_file("python", "3.11", file, source=str(tarball))

    resolved = store.resolve(None, [Ref("app", path=tarball, target="/app")])

    assert resolved.mounts[0].source == imported.path


def test_forget_drops_the_index_record(tmp_path: Path, registry: Registry) -> None:
    registry.publish("python", "3.11", sdk("gone"))
    layers = resolver(tmp_path, registry)
    layers.resolve(Ref("python", "3.11"))

    forgotten = layers.forget("python", "3.11")

    assert forgotten is not None and forgotten.version == "3.11"
    assert layers.installed("python", "3.11") is None
    assert layers.layers() == []


def test_cached_entries_finds_what_a_squishfile_uses_without_fetching(
    tmp_path: Path, registry: Registry
) -> None:
    registry.publish("python", "3.11", sdk("used"))
    store = LayerStore(tmp_path / "state", registries={"default": registry.template})
    path = store.registry.resolve(Ref("python", "3.11"))
    asked = len(registry.requests)

    found = store.cached_entries(None, [Ref("python", "3.11"), Ref("go", "1.22")])

    assert path in found
    assert len(registry.requests) == asked  # nothing fetched for the uncached go


# --- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("ftp://x/{name}/{version}", "must be an http:// or https:// URL template"),
        ("https://x/{name}/{version}/{os}", r"uses \{os\}"),
        ("https://x/{name}/latest.tar.gz", r"must contain \{version\}"),
        ("https://x/{name/{version}", "is not a valid template"),
    ],
)
def test_bad_templates_are_refused(template: str, why: str) -> None:
    with pytest.raises(LayerError, match=why):
        check_template(template, "registry for 'default'")
