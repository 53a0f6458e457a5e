"""The git tree exporter (squish.layers.git_tree) on a recording stand-in for a clone.

The git source's tests export from real repositories; here the exporter's
own rules are checked without git: what it refuses, what it writes, and that
a tree already in the cache is not read again.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import IO

import pytest

from squish.layers.cache import LayerCache
from squish.layers.git_tree import (
    GitTreeExporter,
    LayerRefused,
    LayerTooBig,
    TreeEntry,
    parse_ls_tree,
)

TREE = TreeEntry("040000", "tree", "t" * 40, 0)


class Objects:
    """A repository of one tree: ``files`` (path -> bytes), recording each read."""

    def __init__(self, files: dict[str, bytes], *, submodule: str | None = None) -> None:
        self.files = files
        self.submodule = submodule
        self.calls: list[str] = []

    def list_tree(self, oid: str, what: str) -> list[tuple[str, TreeEntry]]:
        self.calls.append(f"list {oid}")
        found = [
            (path, TreeEntry("100644", "blob", f"{i:040x}", len(data)))
            for i, (path, data) in enumerate(self.files.items())
        ]
        if self.submodule is not None:
            found.append((self.submodule, TreeEntry("160000", "commit", "c" * 40, 0)))
        return found

    def write_blob(self, oid: str, out: IO[bytes], size: int, what: str) -> None:
        self.calls.append(f"blob {oid}")
        out.write(b"#!/bin/sh\necho hi\n"[:size])

    def write_archive(self, oid: str, out: IO[bytes], max_bytes: int, what: str) -> None:
        self.calls.append(f"archive {oid}")
        with tarfile.open(fileobj=out, mode="w") as tar:
            for path, data in self.files.items():
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        out.seek(0)


def exporter(tmp_path: Path, *, max_bytes: int = 1 << 20) -> GitTreeExporter:
    return GitTreeExporter(
        LayerCache(tmp_path / "layers"), max_bytes=max_bytes, max_files=100, work_dir=tmp_path
    )


def test_a_tree_is_exported_once_then_found_in_the_cache(tmp_path: Path) -> None:
    objects = Objects({"index.html": b"hello\n", "css/site.css": b"body {}\n"})
    export = exporter(tmp_path)

    first = export.export("www", TREE, objects)
    again = export.export("www", TREE, objects)

    assert first == again
    assert (first / "index.html").read_bytes() == b"hello\n"
    assert (first / "css" / "site.css").read_bytes() == b"body {}\n"
    assert objects.calls == [f"list {TREE.oid}", f"archive {TREE.oid}"]  # not read again


def test_a_file_is_one_file_of_an_entry_with_gits_one_mode_bit(tmp_path: Path) -> None:
    script = TreeEntry("100755", "blob", "b" * 40, 18)

    path = exporter(tmp_path).export("bin/hello", script, Objects({}))

    assert path.name == "hello"
    assert path.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert path.stat().st_mode & 0o777 == 0o755


def test_a_submodule_is_refused_naming_it(tmp_path: Path) -> None:
    objects = Objects({"a": b"x"}, submodule="vendor/lib")

    with pytest.raises(LayerRefused, match="submodule 'www/vendor/lib'"):
        exporter(tmp_path).export("www", TREE, objects)
    assert objects.calls == [f"list {TREE.oid}"]  # nothing exported


@pytest.mark.parametrize(
    ("entry", "files", "words"),
    [
        (TreeEntry("100644", "blob", "b" * 40, 2048), {}, "'big.bin' is 2048 bytes"),
        (TREE, {"a": b"x" * 700, "b": b"y" * 700}, "'big.bin' holds 1400 bytes"),
    ],
)
def test_a_layer_over_the_limit_is_too_big_and_nothing_is_read(
    tmp_path: Path, entry: TreeEntry, files: dict[str, bytes], words: str
) -> None:
    objects = Objects(files)

    with pytest.raises(LayerTooBig, match=words):
        exporter(tmp_path, max_bytes=1024).export("big.bin", entry, objects)
    assert not any(call.startswith(("archive", "blob")) for call in objects.calls)


def test_ls_tree_output_is_read_with_odd_names_and_sizes() -> None:
    raw = (
        b"100644 blob " + b"a" * 40 + b"      12\tREADME\0"
        b"040000 tree " + b"b" * 40 + b"       -\tsrc\0"
        b"120000 blob " + b"c" * 40 + b"       4\tcaf\xc3\xa9 link\0"
    )

    found = dict(parse_ls_tree(raw))

    assert found["README"] == TreeEntry("100644", "blob", "a" * 40, 12)
    assert found["src"].size == 0 and found["src"].kind == "tree"
    assert found["café link"].is_symlink
