"""Logs of deleted containers: kept for a grace period, then removed with every piece.

The reconciler on the fake runtime (tests/control_plane.py) with a grace of
a fraction of a second: a deleted container's log, its time index and its
rotated files are still there (and ``squish logs`` still finds them) right
after the delete, and gone after the grace. A container of that name that
comes back in time keeps its log; logs left by containers deleted while no
daemon ran go too.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from squish.errors import ContainerNotFound
from tests.control_plane import Plane, real_plane, running, squishfile, until

pytestmark = pytest.mark.anyio

GRACE = 0.5


def write_log(plane: Plane, name: str) -> list[Path]:
    """A log as the runtime leaves it: the file, a rotated one, both time indexes."""
    log = plane.log(name)
    files = [log, log.with_name(f"{name}.log.1")]
    files += [path.with_name(path.name + ".times") for path in files]
    for path in files:
        path.write_bytes(b"line\n")
    return files


async def test_a_deleted_containers_log_goes_after_the_grace(tmp_path: Path) -> None:
    async with real_plane(tmp_path, log_grace=GRACE) as plane:
        plane.write("web", squishfile())
        plane.write("db", squishfile())
        await running(plane, "web", "db")
        files = write_log(plane, "web")
        kept = write_log(plane, "db")

        await plane.control.delete("web")
        await until(lambda: plane.phase("web") is None)
        assert all(path.exists() for path in files)
        assert plane.control.log_path("web") == plane.log("web")

        await until(lambda: not any(path.exists() for path in files), timeout=GRACE + 5)
        assert all(path.exists() for path in kept)
        with pytest.raises(ContainerNotFound):
            plane.control.log_path("web")


async def test_a_container_back_within_the_grace_keeps_its_log(tmp_path: Path) -> None:
    async with real_plane(tmp_path, log_grace=GRACE) as plane:
        plane.write("web", squishfile())
        await running(plane, "web")
        files = write_log(plane, "web")
        (plane.manifests / "web.toml").unlink()
        await until(lambda: plane.phase("web") is None)
        plane.write("web", squishfile())
        await running(plane, "web")

        await anyio.sleep(GRACE * 3)
        assert all(path.exists() for path in files)


async def test_logs_of_containers_deleted_while_no_daemon_ran_go_too(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "web.toml").write_text(squishfile())
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("web.log", "web.log.times", "gone.log", "gone.log.times", "gone.log.1"):
        (logs / name).write_bytes(b"line\n")

    async with real_plane(tmp_path, log_grace=GRACE) as plane:
        await running(plane, "web")
        await until(lambda: not (logs / "gone.log").exists(), timeout=GRACE + 5)
        assert sorted(path.name for path in logs.iterdir()) == ["web.log", "web.log.times"]
