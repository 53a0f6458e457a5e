"""DirectorySource: which names it reports when, and what its snapshots see.

Real files and real inotify. A file renamed into place or closed after
writing is reported at once; a removal, a write still open and a chmod wait
for a quiet period of their name. Where a test needs that period to be
longer than the test can take, the source is given a long one
(``quiet=LONG``), so what is asserted is an order, never a speed: a report
arriving while an earlier event is still settling. The code between two
``await``\\ s runs without the watcher reading in between, so a save-dance
written there reaches the watcher as one batch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from squish.errors import SourceError
from squish.sources.directory import DirectorySource
from tests.source_changes import watching

LONG = 60.0


def squishfile(version: str) -> str:
    return f'network = "none"\n[run]\ncommand = "/bin/sleep"\n[env]\nVERSION = "{version}"\n'


def write(path: Path, version: str) -> None:
    path.write_text(squishfile(version))


def save(path: Path, version: str) -> None:
    """As deploy tools and editors save: a temporary file renamed into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary, version)
    os.rename(temporary, path)


def age(path: Path) -> None:
    """Make ``path`` a minute old: read once, it is not read again unless it changes."""
    old = path.stat().st_mtime_ns - 60 * 10**9
    os.utime(path, ns=(old, old))


def version(source: DirectorySource, name: str = "web", *, rescan: bool = False) -> str | None:
    """``name``'s VERSION in a snapshot; None if the snapshot has no ``name``."""
    manifest = source.snapshot(rescan=rescan).get(name)
    if manifest is None:
        return None
    assert manifest.squishfile is not None, manifest.error
    return manifest.squishfile.env["VERSION"]


# -- reported at once: the file is complete ---------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", [save, write], ids=["renamed into place", "closed after writing"])
async def test_a_complete_file_is_reported_while_a_removal_still_settles(
    tmp_path: Path, how: Callable[[Path, str], None]
) -> None:
    write(tmp_path / "old.toml", "1")
    source = DirectorySource(tmp_path, quiet=LONG)
    async with watching(source) as changes:
        assert set(source.snapshot()) == {"old"}
        (tmp_path / "old.toml").unlink()
        how(tmp_path / "web.toml", "1")

        assert await changes.next() == {"web"}
        # The removal waits for its quiet period: both are in the snapshot.
        assert set(source.snapshot(rescan=False)) == {"old", "web"}
        assert set(source.snapshot(rescan=True)) == {"old", "web"}


@pytest.mark.anyio
async def test_a_removal_is_reported_after_the_quiet_period(tmp_path: Path) -> None:
    write(tmp_path / "web.toml", "1")
    write(tmp_path / "db.toml", "1")
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        assert set(source.snapshot()) == {"web", "db"}
        (tmp_path / "web.toml").unlink()
        os.rename(tmp_path / "db.toml", tmp_path / "db.toml.disabled")

        reported: set[str] = set()
        while reported != {"web", "db"}:
            names = await changes.next()
            assert names is not None
            reported |= names
        assert dict(source.snapshot(rescan=False)) == {}


@pytest.mark.anyio
async def test_debris_is_never_reported(tmp_path: Path) -> None:
    async with watching(DirectorySource(tmp_path)) as changes:
        for name in (".web.toml.swp", "web.toml~", "#web.toml#", ".#web.toml", "web.txt", ".toml"):
            write(tmp_path / name, "1")
        os.rename(tmp_path / "web.txt", tmp_path / "web.toml.orig")
        write(tmp_path / "web.toml", "1")

        assert await changes.next() == {"web"}


# -- editors' saves ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_save_dance_never_yields_a_snapshot_without_the_name(tmp_path: Path) -> None:
    web = tmp_path / "web.toml"
    write(web, "1")
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        assert version(source, rescan=True) == "1"
        # vim with backupcopy=no: the original becomes the backup, a new file is written.
        os.rename(web, tmp_path / "web.toml~")
        write(web, "2")

        assert await changes.next() == {"web"}
        assert version(source) == "2"
        assert version(source, rescan=True) == "2"
        # Nothing more is reported: not the removal the dance began with.
        with pytest.raises(TimeoutError):
            await changes.next(timeout=0.5)
        assert version(source) == "2"


@pytest.mark.anyio
async def test_a_rescan_in_the_middle_of_a_save_keeps_the_name(tmp_path: Path) -> None:
    web = tmp_path / "web.toml"
    write(web, "1")
    source = DirectorySource(tmp_path, quiet=LONG)
    async with watching(source) as changes:
        assert version(source, rescan=True) == "1"
        os.rename(web, tmp_path / "web.toml~")  # the new file is not written yet
        write(tmp_path / "db.toml", "1")
        assert await changes.next() == {"db"}  # the watcher has seen the rename before it

        assert version(source, rescan=True) == "1"
        assert version(source) == "1"
        write(web, "2")
        assert await changes.next() == {"web"}
        assert version(source) == "2"
        assert set(source.snapshot(rescan=True)) == {"web", "db"}


@pytest.mark.anyio
async def test_a_half_written_file_is_reported_at_its_close(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path, quiet=LONG)
    async with watching(source) as changes:
        assert dict(source.snapshot()) == {}
        text = squishfile("1").encode()
        with (tmp_path / "web.toml").open("wb") as file:
            file.write(text[:10])
            file.flush()
            write(tmp_path / "db.toml", "1")
            assert await changes.next() == {"db"}  # web's write came first, unreported
            assert set(source.snapshot(rescan=False)) == {"db"}
            file.write(text[10:])

        assert await changes.next() == {"web"}
        assert version(source) == "1"


@pytest.mark.anyio
async def test_a_writer_that_keeps_the_file_open_is_reported_after_the_quiet_period(
    tmp_path: Path,
) -> None:
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        assert dict(source.snapshot()) == {}
        with (tmp_path / "web.toml").open("w") as file:
            file.write(squishfile("1"))
            file.flush()
            assert await changes.next() == {"web"}
            assert version(source) == "1"
        assert await changes.next() == {"web"}  # and at its close


@pytest.mark.anyio
async def test_a_chmod_is_reported_and_a_change_of_nothing_keeps_the_mapping(
    tmp_path: Path,
) -> None:
    web = tmp_path / "web.toml"
    write(web, "1")
    age(web)
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        before = source.snapshot()
        web.chmod(0o600)
        assert await changes.next() == {"web"}
        assert source.snapshot(rescan=False) is before


# -- snapshots between resyncs ----------------------------------------------


@pytest.mark.anyio
async def test_with_nothing_reported_the_snapshot_is_the_same_without_reading(
    tmp_path: Path,
) -> None:
    write(tmp_path / "web.toml", "1")
    age(tmp_path / "web.toml")
    source = DirectorySource(tmp_path)
    async with watching(source):
        before = source.snapshot()
        assert source.snapshot(rescan=False) is before
        # Not even the directory is read: it could not be now. (The watcher
        # reads the chmod's event only at the next await.)
        tmp_path.chmod(0)
        try:
            assert source.snapshot(rescan=False) is before
            with pytest.raises(SourceError, match="cannot read the directory"):
                source.snapshot(rescan=True)
        finally:
            tmp_path.chmod(0o755)
        assert version(source, rescan=True) == "1"


@pytest.mark.anyio
async def test_a_reported_name_is_read_again_and_the_others_are_kept(tmp_path: Path) -> None:
    for name in ("web", "db"):
        write(tmp_path / f"{name}.toml", "1")
        age(tmp_path / f"{name}.toml")
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        before = source.snapshot()
        save(tmp_path / "web.toml", "2")
        assert await changes.next() == {"web"}

        after = source.snapshot(rescan=False)
        assert after is not before
        assert after["db"] is before["db"]
        assert version(source) == "2"
        assert source.snapshot(rescan=False) is after


@pytest.mark.anyio
@pytest.mark.parametrize("relist", [0.0, 1.0])
async def test_a_change_whose_event_was_missed_is_seen_at_the_relist(
    tmp_path: Path, relist: float
) -> None:
    watched, elsewhere = tmp_path / "manifests", tmp_path / "elsewhere"
    watched.mkdir()
    elsewhere.mkdir()
    write(watched / "web.toml", "1")
    age(watched / "web.toml")
    # A write through a hard link in another directory: no event of the watched one.
    os.link(watched / "web.toml", elsewhere / "web.toml")
    source = DirectorySource(watched, relist=relist)
    async with watching(source) as changes:
        before = source.snapshot()
        with (elsewhere / "web.toml").open("r+") as file:
            file.write(squishfile("2"))
        with pytest.raises(TimeoutError):
            await changes.next(timeout=0.5)

        assert source.snapshot(rescan=False) is before
        assert version(source) == "1"
        if relist:
            # A rescan trusts what inotify tells of a regular file until the relist.
            assert version(source, rescan=True) == "1"
            await anyio.sleep(relist)
        assert version(source, rescan=True) == "2"  # the level-triggered safety net


@pytest.mark.anyio
async def test_a_rescan_between_relists_sees_a_symlinks_new_target(tmp_path: Path) -> None:
    watched, releases = tmp_path / "manifests", tmp_path / "releases"
    watched.mkdir()
    releases.mkdir()
    for release in ("1", "2"):
        write(releases / f"{release}.toml", release)
        age(releases / f"{release}.toml")
    (watched / "web.toml").symlink_to(releases / "1.toml")
    source = DirectorySource(watched, relist=LONG)
    async with watching(source):
        assert version(source, rescan=True) == "1"
        # The release the link points to is edited: no event of the watched directory.
        write(releases / "1.toml", "1.1")
        assert version(source, rescan=True) == "1.1"
        assert version(source, rescan=False) == "1.1"


@pytest.mark.anyio
async def test_a_queue_overflow_reports_any_name_and_rescans(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for name in ("a", "b"):
        write(tmp_path / f"{name}.toml", "1")
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        before = source.snapshot()
        # More events than the kernel queues, while the watcher cannot read:
        # two names in turn, since the kernel merges an event with the one
        # before it if they are the same.
        for n in range(limit + 16):
            os.utime(tmp_path / ("a.toml" if n % 2 else "b.toml"))
        write(tmp_path / "web.toml", "1")  # its events are dropped

        assert await changes.next() is None
        after = source.snapshot(rescan=False)
        assert after is not before
        assert set(after) == {"a", "b", "web"}


# -- the directory itself ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["removed", "moved away"])
async def test_a_directory_removed_or_moved_is_watched_again(tmp_path: Path, how: str) -> None:
    watched = tmp_path / "manifests"
    watched.mkdir()
    write(watched / "web.toml", "1")
    source = DirectorySource(watched)
    async with watching(source) as changes:
        assert version(source) == "1"
        if how == "removed":
            shutil.rmtree(watched)
        else:
            os.rename(watched, tmp_path / "old")

        assert await changes.next() is None
        assert source.warning is not None and "watched again" in source.warning
        # Meanwhile every snapshot reads the directory.
        assert dict(source.snapshot(rescan=False)) == {}
        watched.mkdir()
        write(watched / "web.toml", "2")
        assert version(source) == "2"

        assert await changes.next() is None  # watched again
        assert source.warning is None
        if how == "moved away":
            write(tmp_path / "old" / "db.toml", "1")  # no longer the watched directory
        save(watched / "web.toml", "3")
        assert await changes.next() == {"web"}
        assert version(source) == "3"
        assert set(source.snapshot(rescan=True)) == {"web"}


@pytest.mark.anyio
@pytest.mark.parametrize("rescan", [True, False])
async def test_a_file_removed_between_its_stat_and_its_read_is_gone_not_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rescan: bool
) -> None:
    web = tmp_path / "web.toml"
    source = DirectorySource(tmp_path)
    async with watching(source) as changes:
        save(web, "1")
        assert await changes.next() == frozenset({"web"})
        real = Path.read_bytes

        def removed_first(path: Path) -> bytes:
            if path == web:
                path.unlink()  # a deploy removing it just after the source's stat
            return real(path)

        monkeypatch.setattr(Path, "read_bytes", removed_first)
        assert source.snapshot(rescan=rescan) == {}
