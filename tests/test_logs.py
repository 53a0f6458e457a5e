"""Tests of container logs (squish.runtime.logs): rotation by size, draining a pipe.

Real files in ``tmp_path`` and real pipes; nothing needs privileges. Rotation
is checked twice: exact file contents for small tables, and invariants (file
count, file size, order, nothing split or lost but the oldest) over seeded
random write sequences. The time index beside each log has its own tests in
tests/test_log_times.py.
"""

from __future__ import annotations

import os
import random
import stat
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from squish.runtime.logs import INDEX_SUFFIX, RotatingLog, drain

pytestmark = pytest.mark.anyio

RECENT = 4096


def noise(seed: int, size: int) -> bytes:
    """Deterministic bytes, different for every seed."""
    return random.Random(seed).randbytes(size)  # noqa: S311 (test data, not a secret)


def chunk(index: int, size: int) -> bytes:
    """``size`` bytes of one letter, a different letter for each write."""
    return bytes([ord("a") + index % 26]) * size


def write_all(log: RotatingLog, writes: list[bytes]) -> None:
    for data in writes:
        log.write(data)


def log_files(directory: Path) -> dict[str, bytes]:
    """The log files (not their time indexes) and their contents."""
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if not path.name.endswith(INDEX_SUFFIX)
    }


def oldest_first(path: Path, keep: int) -> list[bytes]:
    names = [f"{path.name}.{index}" for index in range(keep - 1, 0, -1)] + [path.name]
    return [(path.parent / name).read_bytes() for name in names if (path.parent / name).exists()]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- rotation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_bytes", "keep", "sizes", "expected"),
    [
        pytest.param(10, 3, [4, 4], {"c.log": b"aaaabbbb"}, id="fits: one file"),
        pytest.param(
            10, 3, [4, 4, 4], {"c.log": b"cccc", "c.log.1": b"aaaabbbb"}, id="would pass max"
        ),
        pytest.param(10, 3, [10, 1], {"c.log": b"b", "c.log.1": b"a" * 10}, id="exactly max stays"),
        pytest.param(10, 3, [25], {"c.log": b"a" * 25}, id="oversized first write"),
        pytest.param(
            10,
            3,
            [3, 25, 2],
            {"c.log": b"cc", "c.log.1": b"b" * 25, "c.log.2": b"aaa"},
            id="oversized write goes alone into a fresh file",
        ),
        pytest.param(
            10,
            3,
            [6, 6, 6, 6, 6],
            {"c.log": b"e" * 6, "c.log.1": b"d" * 6, "c.log.2": b"c" * 6},
            id="oldest dropped",
        ),
        pytest.param(10, 2, [6, 6, 6], {"c.log": b"c" * 6, "c.log.1": b"b" * 6}, id="keep 2"),
        pytest.param(10, 1, [6, 6, 6], {"c.log": b"c" * 6}, id="keep 1: no history"),
        pytest.param(10, 3, [], {"c.log": b""}, id="no writes: an empty file"),
    ],
)
def test_rotation_by_size(
    tmp_path: Path, max_bytes: int, keep: int, sizes: list[int], expected: dict[str, bytes]
) -> None:
    log = RotatingLog(tmp_path / "c.log", max_bytes=max_bytes, keep=keep)
    write_all(log, [chunk(index, size) for index, size in enumerate(sizes)])
    log.close()

    assert log_files(tmp_path) == expected


@pytest.mark.parametrize("seed", range(30))
def test_rotation_invariants(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 (test data, not a secret)
    max_bytes = rng.randint(1, 64)
    keep = rng.randint(1, 4)
    writes = [rng.randbytes(rng.randint(1, 2 * max_bytes)) for _ in range(rng.randint(0, 40))]
    path = tmp_path / "c.log"

    log = RotatingLog(path, max_bytes=max_bytes, keep=keep)
    write_all(log, writes)
    log.close()

    everything = b"".join(writes)
    boundaries = {0}
    for data in writes:
        boundaries.add(max(boundaries) + len(data))
    files = oldest_first(path, keep)
    kept = b"".join(files)
    # Only the expected names, at most `keep` of them.
    assert set(log_files(tmp_path)) <= {path.name} | {f"{path.name}.{i}" for i in range(1, keep)}
    assert 1 <= len(files) <= keep
    # What is kept is everything minus whole writes from the start, in order.
    assert everything.endswith(kept)
    start = len(everything) - len(kept)
    assert start in boundaries
    for index, content in enumerate(files):
        end = start + len(content)
        assert end in boundaries, "a write was split across files"
        if len(content) > max_bytes:
            # Only a single oversized write may exceed the limit, alone.
            assert len(content) in {len(data) for data in writes}
            assert not {b for b in boundaries if start < b < end}
        if index + 1 < len(files):
            # It rotated only because the next write would not fit.
            next_write = min(b for b in boundaries if b > end) - end
            assert len(content) + next_write > max_bytes
        start = end


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        pytest.param(b"one\n", b"two\n", {"c.log": b"one\ntwo\n"}, id="appends"),
        pytest.param(
            b"12345678",
            b"abcd",
            {"c.log": b"abcd", "c.log.1": b"12345678"},
            id="counts the existing size",
        ),
    ],
)
def test_reopening_appends(
    tmp_path: Path, first: bytes, second: bytes, expected: dict[str, bytes]
) -> None:
    for data in (first, second):
        log = RotatingLog(tmp_path / "c.log", max_bytes=10, keep=3)
        log.write(data)
        log.close()

    assert log_files(tmp_path) == expected


def test_log_files_are_private_and_directories_created(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "nested" / "c.log"
    log = RotatingLog(path, max_bytes=4, keep=2)
    write_all(log, [b"1234", b"5678"])
    log.close()

    for name in ("c.log", "c.log.1", "c.log.times", "c.log.1.times"):
        assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600


def test_a_deleted_log_file_is_started_afresh_at_rotation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    log = RotatingLog(path, max_bytes=10, keep=3)
    log.write(b"12345678")
    path.unlink()

    log.write(b"abcd")
    log.close()

    assert path.read_bytes() == b"abcd"


# -- recent output ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([3], id="short"),
        pytest.param([RECENT], id="exactly 4 KiB"),
        pytest.param([RECENT + 904], id="one long write"),
        pytest.param([4000, 200], id="spans two writes"),
        pytest.param([100] * 100, id="many small writes across rotations"),
        pytest.param([10_000, 1], id="a long write then a short one"),
    ],
)
def test_recent_holds_the_last_4_kib(tmp_path: Path, sizes: list[int]) -> None:
    writes = [noise(index, size) for index, size in enumerate(sizes)]
    log = RotatingLog(tmp_path / "c.log", max_bytes=1000, keep=2)
    write_all(log, writes)
    log.close()

    assert bytes(log.recent) == b"".join(writes)[-RECENT:]


# -- draining a pipe ---------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello\n", b"x" * 60_000])
async def test_drain_copies_a_closed_pipe_and_closes_everything(
    tmp_path: Path, data: bytes
) -> None:
    before = open_fds()
    read_fd, write_fd = os.pipe()
    log = RotatingLog(tmp_path / "c.log")
    os.write(write_fd, data)  # fits in the pipe buffer
    os.close(write_fd)

    with anyio.fail_after(5):
        await drain(read_fd, log)

    assert (tmp_path / "c.log").read_bytes() == data
    assert open_fds() == before  # the pipe's read end and the log file


async def test_drain_follows_a_writer_until_eof_across_rotations(tmp_path: Path) -> None:
    pieces = [noise(index, 7919) for index in range(128)]  # ~1 MiB, odd sizes
    path = tmp_path / "c.log"
    before = open_fds()
    read_fd, write_fd = os.pipe()
    log = RotatingLog(path, max_bytes=256 * 1024, keep=10)

    def writer() -> None:
        try:
            for piece in pieces:
                os.write(write_fd, piece)  # blocks whenever the pipe is full
        finally:
            os.close(write_fd)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, read_fd, log)
            await anyio.to_thread.run_sync(writer)

    assert b"".join(oldest_first(path, keep=10)) == b"".join(pieces)
    assert len(log_files(tmp_path)) > 1
    assert open_fds() == before


async def test_drain_waits_for_every_writer(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    second_writer = os.dup(write_fd)
    log = RotatingLog(tmp_path / "c.log")
    done = threading.Event()

    async def run_drain() -> None:
        await drain(read_fd, log)
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_drain)
            os.write(write_fd, b"first\n")
            os.close(write_fd)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()  # the second writer still holds the pipe open

            os.write(second_writer, b"second\n")
            os.close(second_writer)
    assert done.is_set()
    assert (tmp_path / "c.log").read_bytes() == b"first\nsecond\n"


def _open_here(*paths: Path) -> set[Path]:
    """Which of ``paths`` this process has open now."""
    wanted = {path.resolve() for path in paths}
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # the listing's own fd, closed since
        if target in wanted:
            found.add(target)
    return found


def test_a_quiet_log_holds_no_file_open_until_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "web.log"
    index = tmp_path / f"web.log{INDEX_SUFFIX}"
    log = RotatingLog(path)
    try:
        assert path.exists() and index.exists()  # made at once, for readers and tail -F
        assert _open_here(path, index) == set()
        log.write(b"hello\n")
        assert _open_here(path, index) == {path.resolve(), index.resolve()}
        assert path.read_bytes() == b"hello\n"
    finally:
        log.close()
