"""Tests of squish.cli.timespec: the moments ``squish logs --since/--until`` take. Pure, tables."""

from __future__ import annotations

from datetime import datetime

import pytest

from squish.cli.timespec import parse_moment
from squish.errors import SquishError

NOW = 1_796_119_200.0  # 2026-12-01T10:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-12-01T10:00:00Z", NOW, id="RFC 3339 UTC"),
        pytest.param("2026-12-01T10:00:00.250Z", NOW + 0.25, id="fractions"),
        pytest.param("2026-12-01T10:00:00.123456789Z", NOW + 0.123456, id="nanoseconds"),
        pytest.param("2026-12-01T11:00:00+01:00", NOW, id="with an offset"),
        pytest.param("2026-12-01T05:00:00-05:00", NOW, id="a negative offset"),
        pytest.param("2026-12-01 10:00:00Z", NOW, id="a space for T"),
        pytest.param("2026-12-01", datetime(2026, 12, 1).timestamp(), id="a date: local midnight"),
        pytest.param(
            "2026-12-01T10:00:00", datetime(2026, 12, 1, 10).timestamp(), id="no offset: local"
        ),
        pytest.param("1796119200", NOW, id="Unix time"),
        pytest.param("1796119200.5", NOW + 0.5, id="Unix time with fractions"),
        pytest.param("20261201", 20261201.0, id="digits alone are a Unix time"),
        pytest.param("0", 0.0, id="the epoch"),
        pytest.param("10m", NOW - 600, id="minutes ago"),
        pytest.param("1h30m", NOW - 5400, id="hours and minutes"),
        pytest.param("45s", NOW - 45, id="seconds"),
        pytest.param("500ms", NOW - 0.5, id="milliseconds"),
        pytest.param("1.5h", NOW - 5400, id="a fraction of an hour"),
        pytest.param("2d", NOW - 172800, id="days"),
        pytest.param("0s", NOW, id="now"),
        pytest.param(" 10m ", NOW - 600, id="spaces around"),
    ],
)
def test_moments(text: str, expected: float) -> None:
    assert parse_moment(text, now=NOW) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x", id="a word"),
        pytest.param("", id="empty"),
        pytest.param("10x", id="an unknown unit"),
        pytest.param("-10m", id="a negative duration"),
        pytest.param("m", id="a unit alone"),
        pytest.param("1h 30m", id="a space inside"),
        pytest.param("2026-13-01", id="no 13th month"),
        pytest.param("2026-12-01T25:00:00Z", id="no 25th hour"),
        pytest.param("yesterday", id="words"),
        pytest.param("1e9", id="exponents"),
        pytest.param("9" * 400, id="not finite"),
    ],
)
def test_bad_moments_say_what_is_expected(text: str) -> None:
    with pytest.raises(SquishError) as caught:
        parse_moment(text, now=NOW, what="--since")

    assert str(caught.value) == (
        "--since: expected a time (2026-12-01T10:00:00Z), a Unix time or a duration (10m), "
        f"got {text!r}"
    )
