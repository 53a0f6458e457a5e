"""Where squish keeps things (squish.paths): the runtime directory's choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from squish import paths
from squish.errors import SquishError


def test_the_runtime_dir_is_under_xdg_runtime_dir_when_it_is_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == tmp_path / "squish"
    assert (tmp_path / "squish").stat().st_mode & 0o777 == 0o700


def test_another_users_xdg_runtime_dir_is_passed_over(
    monkeypatch: pytest.MonkeyPatch, rootless: None
) -> None:
    # What `runuser -u someone` passes on from root: a directory not ours (root's "/").
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/")
    assert paths.runtime_dir() == Path(f"/tmp/squish-{os.getuid()}")


def test_a_runtime_dir_that_cannot_be_made_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(locked))
    try:
        with pytest.raises(SquishError, match=r"cannot make .*locked/squish: Permission denied"):
            paths.runtime_dir()
    finally:
        locked.chmod(0o700)
