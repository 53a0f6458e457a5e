"""Tests of the time index beside each log (squish.runtime.logs): writing, reading, damage.

Real files in ``tmp_path``, a clock the test sets; nothing needs privileges.
Times are written as milliseconds after ``T0``. A line's time is the time of
the chunk holding its first byte; a damaged index must degrade to the
nearest time known, never to an error.
"""

from __future__ import annotations

import os
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from squish.runtime.logs import (
    LogFile,
    RotatingLog,
    Stamper,
    format_ms,
    index_path,
    kept_files,
    parse_index,
)

T0 = 1_796_119_200_000  # ms: 2026-12-01T10:00:00Z
MS = 1_000_000  # ns


class Clock:
    """time.time_ns for RotatingLog, in milliseconds after T0 as the test says."""

    def __init__(self) -> None:
        self.ms = 0.0

    def __call__(self) -> int:
        return T0 * MS + round(self.ms * MS)


Writes = list[tuple[float, bytes]]


def write_log(path: Path, writes: Writes, **options: int) -> None:
    clock = Clock()
    log = RotatingLog(path, clock=clock, **options)
    for at, data in writes:
        clock.ms = at
        log.write(data)
    log.close()


def line_times(path: Path) -> list[tuple[bytes, int]]:
    """Each line of the log file ``path`` and its time, in ms after T0."""
    file = LogFile(path)
    try:
        data = b"".join(file.read(o, file.size) for o in range(0, file.size, 65536))
        result = []
        start = 0
        for line in data.splitlines(keepends=True):
            result.append((line.rstrip(b"\n"), file.time_at(start) - T0))
            start += len(line)
        return result
    finally:
        file.close()


def set_mtime(path: Path, ms: int) -> None:
    os.utime(path, ns=((T0 + ms) * MS, (T0 + ms) * MS))


# -- writing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        pytest.param([(0, b"a\n"), (5, b"b\n")], [(b"a", 0), (b"b", 5)], id="each chunk its time"),
        pytest.param(
            [(0, b"a\n"), (0.5, b"b\n"), (1, b"c\n")],
            [(b"a", 0), (b"b", 0), (b"c", 1)],
            id="chunks within a millisecond share a record",
        ),
        pytest.param(
            [(0, b"par"), (5, b"tial\n"), (10, b"next\n")],
            [(b"partial", 0), (b"next", 10)],
            id="a line has the time of its first byte",
        ),
        pytest.param(
            [(0, b"abc"), (5, b"d\nef\n"), (9, b"g\nh\n")],
            [(b"abcd", 0), (b"ef", 5), (b"g", 9), (b"h", 9)],
            id="lines starting inside a chunk",
        ),
        pytest.param([(0, b"a\n"), (3, b"b")], [(b"a", 0), (b"b", 3)], id="a partial last line"),
        pytest.param(
            [(10, b"a\n"), (2, b"b\n"), (12, b"c\n")],
            [(b"a", 10), (b"b", 10), (b"c", 12)],
            id="a clock stepping back is flattened",
        ),
        pytest.param([], [], id="nothing written"),
    ],
)
def test_line_times(tmp_path: Path, writes: Writes, expected: list[tuple[bytes, int]]) -> None:
    path = tmp_path / "c.log"
    write_log(path, writes)

    assert line_times(path) == expected
    assert path.read_bytes() == b"".join(data for _, data in writes)  # the log stays raw


@pytest.mark.parametrize(
    ("writes", "records"),
    [
        pytest.param([(0, b"x\n")] * 1000, 1, id="a burst within one millisecond"),
        pytest.param([(i, b"x") for i in range(100)], 1, id="one long line over 100 ms"),
        pytest.param([(i, b"x\n") for i in range(100)], 100, id="a line every millisecond"),
        pytest.param([(i / 4, b"x\n") for i in range(400)], 100, id="four lines a millisecond"),
    ],
)
def test_records_stay_few(tmp_path: Path, writes: Writes, records: int) -> None:
    path = tmp_path / "c.log"
    write_log(path, writes)

    assert index_path(path).stat().st_size == 16 + 16 * records


def test_the_index_rotates_with_its_log(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writes = [(i * 10, b"line %d\n" % i) for i in range(6)]  # 7 bytes each
    write_log(path, writes, max_bytes=14, keep=2)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.log",
        "c.log.1",
        "c.log.1.times",
        "c.log.times",
    ]
    assert line_times(tmp_path / "c.log.1") == [(b"line 2", 20), (b"line 3", 30)]
    assert line_times(path) == [(b"line 4", 40), (b"line 5", 50)]


def test_keep_1_keeps_one_index(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_log(path, [(0, b"aaaa\n"), (5, b"bbbb\n"), (9, b"cccc\n")], max_bytes=5, keep=1)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.log", "c.log.times"]
    assert line_times(path) == [(b"cccc", 9)]


def test_reopening_appends_to_the_index(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_log(path, [(0, b"a\n")])
    write_log(path, [(7, b"b\n")])

    assert line_times(path) == [(b"a", 0), (b"b", 7)]


def test_a_log_truncated_in_place_keeps_dating_what_follows(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    clock = Clock()
    log = RotatingLog(path, clock=clock)
    log.write(b"before truncation\n")
    os.truncate(path, 0)  # : > c.log
    clock.ms = 20
    log.write(b"z\n")
    log.close()

    assert line_times(path) == [(b"z", 20)]


@pytest.mark.parametrize("blocker", ["directory", "read-only file"])
def test_an_index_that_cannot_be_written_never_fails_the_log(tmp_path: Path, blocker: str) -> None:
    path = tmp_path / "c.log"
    if blocker == "directory":
        index_path(path).mkdir()
    else:
        index_path(path).write_bytes(b"")
        index_path(path).chmod(0o400)
    write_log(path, [(0, b"a\n"), (5, b"b\n")])
    set_mtime(path, 42)

    assert path.read_bytes() == b"a\nb\n"
    assert line_times(path) == [(b"a", 42), (b"b", 42)]  # unknown: the file's mtime


# -- a damaged index ------------------------------------------------------------


def damage(index: Path, how: str, other: Path) -> None:
    data = index.read_bytes()
    if how == "missing":
        index.unlink()
    elif how == "empty":
        index.write_bytes(b"")
    elif how == "header garbled":
        index.write_bytes(b"X" + data[1:])
    elif how == "another file's index":
        shutil.copy(index_path(other), index)
    elif how == "last record cut short":
        index.write_bytes(data[:-5])
    elif how == "garbage appended":
        index.write_bytes(data + random.Random(7).randbytes(100))  # noqa: S311 (test data)
    elif how == "records past the end":
        index.write_bytes(
            data + (10**6).to_bytes(8, "little") + ((T0 + 3) * MS).to_bytes(8, "little")
        )
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        pytest.param("missing", [99, 99, 99], id="missing: the file's mtime"),
        pytest.param("empty", [99, 99, 99], id="empty"),
        pytest.param("header garbled", [99, 99, 99], id="header garbled"),
        pytest.param("another file's index", [99, 99, 99], id="another file's index"),
        pytest.param("last record cut short", [0, 5, 5], id="cut short: the time before"),
        pytest.param("garbage appended", [0, 5, 10], id="garbage appended is ignored"),
        pytest.param("records past the end", [0, 5, 10], id="records past the end ignored"),
    ],
)
def test_a_damaged_index_degrades_to_known_times(
    tmp_path: Path, how: str, expected: list[int]
) -> None:
    path = tmp_path / "c.log"
    write_log(path, [(0, b"a\n"), (5, b"b\n"), (10, b"c\n")])
    write_log(tmp_path / "other.log", [(50, b"other\n")])
    set_mtime(path, 99)
    damage(index_path(path), how, tmp_path / "other.log")

    assert line_times(path) == list(zip([b"a", b"b", b"c"], expected, strict=True))


def test_an_index_from_before_a_log_existed_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_log(tmp_path / "other.log", [(50, b"other\n")])
    shutil.copy(index_path(tmp_path / "other.log"), index_path(path))
    write_log(path, [(3, b"a\n")])

    assert line_times(path) == [(b"a", 3)]


def test_a_log_older_than_its_index_dates_its_old_lines_by_the_first_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(b"written before squish kept times\n")
    write_log(path, [(8, b"new\n")])

    assert line_times(path) == [(b"written before squish kept times", 8), (b"new", 8)]


def record(offset: int, ms: int) -> bytes:
    return offset.to_bytes(8, "little") + ((T0 + ms) * MS).to_bytes(8, "little")


HEADER = b"squish.t" + (77).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(HEADER + record(0, 1) + record(4, 2), ([0, 4], [1, 2]), id="good"),
        pytest.param(HEADER[:10], ([], []), id="header cut short"),
        pytest.param(b"squish.t" + (78).to_bytes(8, "little") + record(0, 1), ([], []), id="inode"),
        pytest.param(HEADER + record(0, 1) + record(4, 2)[:9], ([0], [1]), id="record cut short"),
        pytest.param(HEADER + record(0, 5) + record(4, 2), ([0, 4], [5, 5]), id="time going back"),
        pytest.param(
            HEADER + record(6, 1) + record(8, 2) + record(2, 9),
            ([2], [9]),
            id="offsets going back: truncated in place",
        ),
        pytest.param(HEADER + record(11, 1), ([], []), id="offset past the end"),
        pytest.param(HEADER + (4).to_bytes(8, "little") * 2, ([], []), id="impossible time"),
    ],
)
def test_parse_index(data: bytes, expected: tuple[list[int], list[int]]) -> None:
    offsets, stamps = parse_index(data, inode=77, size=10)

    assert (offsets, [stamp - T0 for stamp in stamps]) == expected


# -- reading ------------------------------------------------------------------------

WINDOW_WRITES: Writes = [(0, b"abc"), (5, b"d\nef\n"), (10, b"g\n"), (15, b"h")]


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        pytest.param(None, None, b"abcd\nef\ng\nh", id="everything"),
        pytest.param(5, None, b"ef\ng\nh", id="since a chunk's time"),
        pytest.param(6, None, b"g\nh", id="since between chunks"),
        pytest.param(16, None, b"", id="since after the last"),
        pytest.param(-5, None, b"abcd\nef\ng\nh", id="since before the first"),
        pytest.param(None, 10, b"abcd\nef\ng\n", id="until a chunk's time"),
        pytest.param(None, 4, b"abcd\n", id="until between chunks"),
        pytest.param(None, -1, b"", id="until before the first"),
        pytest.param(5, 10, b"ef\ng\n", id="since and until"),
        pytest.param(10, 5, b"", id="until before since"),
    ],
)
def test_window(tmp_path: Path, since: int | None, until: int | None, expected: bytes) -> None:
    path = tmp_path / "c.log"
    write_log(path, WINDOW_WRITES)
    file = LogFile(path)
    try:
        start, end = file.window(
            None if since is None else T0 + since, None if until is None else T0 + until
        )
        assert file.read(start, end) == expected
    finally:
        file.close()


@pytest.mark.parametrize(
    ("content", "window", "count", "expected"),
    [
        pytest.param(b"1\n2\n3\n", (0, 6), 2, (b"2\n3\n", 2), id="last two"),
        pytest.param(b"1\n2\n3\n", (0, 6), 5, (b"1\n2\n3\n", 3), id="fewer than asked"),
        pytest.param(b"1\n2\n3", (0, 5), 2, (b"2\n3", 2), id="partial last line"),
        pytest.param(b"1\n2\n3\n", (0, 6), 0, (b"", 0), id="none"),
        pytest.param(b"1\n2\n3\n", (2, 4), 5, (b"2\n", 1), id="within a window"),
        pytest.param(b"a\rb\n", (0, 4), 1, (b"a\rb\n", 1), id="only newlines end lines"),
        pytest.param(
            b"".join(b"%05d\n" % i for i in range(30000)),
            (0, 180000),
            20000,
            (b"".join(b"%05d\n" % i for i in range(10000, 30000)), 20000),
            id="across read blocks",
        ),
    ],
)
def test_lines_back(
    tmp_path: Path,
    content: bytes,
    window: tuple[int, int],
    count: int,
    expected: tuple[bytes, int],
) -> None:
    start, end = window
    path = tmp_path / "c.log"
    path.write_bytes(content)
    file = LogFile(path)
    try:
        first, found = file.lines_back(start, end, count)
        data = b"".join(file.read(o, end) for o in range(first, end, 65536))
        assert (data, found) == expected
    finally:
        file.close()


def test_stamper_puts_the_time_before_each_line_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_log(path, [(0, b"a\nb"), (5, b"c\n"), (1007, b"d\n")])
    file = LogFile(path)
    stamper = Stamper()
    try:
        out = stamper.stamp(file.read(0, 3), 0, file) + stamper.stamp(file.read(3, 8), 3, file)
    finally:
        file.close()

    assert out == (
        b"2026-12-01T10:00:00.000Z a\n2026-12-01T10:00:00.000Z bc\n2026-12-01T10:00:01.007Z d\n"
    )


def test_refresh_takes_in_what_was_written_since(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    clock = Clock()
    log = RotatingLog(path, clock=clock)
    log.write(b"a\n")
    file = LogFile(path)
    try:
        clock.ms = 30
        log.write(b"b\n")
        assert file.size == 2
        assert file.refresh() == 4
        assert [file.time_at(0) - T0, file.time_at(2) - T0] == [0, 30]
    finally:
        file.close()
        log.close()


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        pytest.param(T0, "2026-12-01T10:00:00.000Z", id="whole second"),
        pytest.param(T0 + 1, "2026-12-01T10:00:00.001Z", id="one millisecond"),
        pytest.param(0, "1970-01-01T00:00:00.000Z", id="the epoch"),
    ],
)
def test_format_ms(ms: int, expected: str) -> None:
    assert format_ms(ms) == expected
    assert datetime.fromisoformat(expected) == datetime.fromtimestamp(ms / 1000, UTC)


def test_kept_files_oldest_first(tmp_path: Path) -> None:
    for name in ("c.log", "c.log.1", "c.log.2", "c.log.10", "c.log.1.times", "c.logx", "d.log"):
        (tmp_path / name).write_bytes(b"")

    assert [p.name for p in kept_files(tmp_path / "c.log")] == [
        "c.log.10",
        "c.log.2",
        "c.log.1",
        "c.log",
    ]
