"""MultiSource: the union of several sources' snapshots, run as one service."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from squish.errors import ManifestError
from squish.model.manifest import Manifest
from squish.model.squishfile import Squishfile
from squish.sources.directory import DirectorySource
from squish.sources.fake import FakeSource
from squish.sources.multi import MultiSource
from tests.source_changes import watching


def manifest(name: str, file: str, command: str = "/app/server") -> Manifest:
    return Manifest(name, file, Squishfile(name=name, command=command))


def test_the_snapshot_is_the_union_of_the_sources() -> None:
    web, db = manifest("web", "/etc/squish/web.toml"), manifest("db", "apps/db.toml@1a2b3c4d5e6f")
    multi = MultiSource([FakeSource(web), FakeSource(db), FakeSource()])

    assert dict(multi.snapshot()) == {"web": web, "db": db}


def test_a_name_defined_twice_is_an_error_naming_both_files() -> None:
    here = manifest("web", "/etc/squish/web.toml")
    there = manifest("web", "apps/web.toml@1a2b3c4d5e6f", command="/other")
    db = manifest("db", "apps/db.toml@1a2b3c4d5e6f")
    multi = MultiSource([FakeSource(here), FakeSource(there, db)])

    snapshot = multi.snapshot()

    assert snapshot["db"] is db
    web = snapshot["web"]
    assert web.squishfile is None and isinstance(web.error, ManifestError)
    assert web.file == "/etc/squish/web.toml"
    message = str(web.error)
    assert "/etc/squish/web.toml" in message and "apps/web.toml@1a2b3c4d5e6f" in message
    assert "\n" not in message
    # The same answer every time: no flapping between the two definitions.
    assert str(multi.snapshot()["web"].error) == message


def test_an_invalid_duplicate_still_conflicts() -> None:
    broken = Manifest("web", "apps/web.toml@1a2b3c4d5e6f", None, ManifestError("x", "bad"))
    multi = MultiSource([FakeSource(manifest("web", "/etc/web.toml")), FakeSource(broken)])

    assert multi.snapshot()["web"].squishfile is None


def test_a_directory_source_takes_part(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text('[run]\ncommand = "/app/server"\n')
    other = manifest("db", "apps/db.toml@1a2b3c4d5e6f")
    multi = MultiSource([DirectorySource(tmp_path), FakeSource(other)])

    assert set(multi.snapshot()) == {"web", "db"}


@pytest.mark.anyio
async def test_run_passes_on_every_sources_changes() -> None:
    one, two = FakeSource(), FakeSource()

    async with watching(MultiSource([one, two])) as changes:
        assert (one.running, two.running) == (1, 1)  # started once both are
        for source in (one, two, one):
            source.touch()
            await changes.next()


@pytest.mark.anyio
async def test_run_ends_when_every_source_has_ended() -> None:
    one, two = FakeSource(), FakeSource()

    async with watching(MultiSource([one, two])) as changes:
        one.finish()
        two.touch()
        await changes.next()
        assert not changes.ended.is_set()
        two.finish()
        with anyio.fail_after(5):
            await changes.ended.wait()
