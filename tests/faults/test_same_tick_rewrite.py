"""A squishfile rewritten within one tick of the file system's clock.

The directory source caches parses by (inode, size, mtime). In a save storm
a new version can have all three of the old one: the same size, a recycled
inode, and an mtime of the same coarse clock tick (file times advance in
jiffies, several milliseconds). Such a rewrite is made here for real, in
place with the same size, its mtime set back to the old one's; the next
snapshot must read the new version, not keep the cached one forever.
"""

from __future__ import annotations

import os
from pathlib import Path

from squish.sources.directory import DirectorySource


def squishfile(value: str) -> str:
    return f'network = "none"\n[run]\ncommand = "/bin/sleep"\n[env]\nVERSION = "{value}"\n'


def version(source: DirectorySource) -> str:
    manifest = source.snapshot()["web"]
    assert manifest.squishfile is not None, manifest.error
    return manifest.squishfile.env["VERSION"]


def test_a_rewrite_in_the_same_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(squishfile("A"))
    source = DirectorySource(tmp_path)
    assert version(source) == "A"

    before = path.stat()
    with path.open("r+") as file:  # the same inode and size
        file.write(squishfile("B"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert version(source) == "B"


def test_an_old_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(squishfile("A"))
    old = path.stat().st_mtime_ns - 60 * 10**9
    os.utime(path, ns=(old, old))
    source = DirectorySource(tmp_path)
    assert version(source) == "A"
    path.chmod(0)  # reading it again would now fail
    try:
        assert version(source) == "A"
    finally:
        path.chmod(0o644)
