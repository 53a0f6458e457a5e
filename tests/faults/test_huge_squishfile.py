"""Fault: a huge squishfile, and one with a huge [env], dropped in.

A squishfile of 20 MB (600,000 env variables) used to take seconds and
hundreds of megabytes to validate, block the daemon's API while it did, and
then fail at start with "Argument list too long" from bwrap. Now a file over
1 MiB is refused before it is parsed, and an [env] over 1000 variables or
128 KiB is refused as the field ``env``: at once, in a real daemon's
``ps -a`` while the API stays quick, and in ``squish validate``, which still
lists every other error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.client import Client
from squish.errors import ManifestError
from squish.model.host import host_paths
from squish.model.squishfile import (
    MAX_ARGS,
    MAX_ARGS_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_KEYS,
    MAX_SQUISHFILE_BYTES,
    parse_squishfile,
)
from tests.conftest import eventually
from tests.test_daemon import REPO, daemon, wait_for_socket

RUN = '[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'


def with_env(count: int, value: str = "1") -> str:
    lines = "".join(f"K{index} = {value!r}\n" for index in range(count))
    return f'network = "none"\n{RUN}[env]\n{lines}'


def drop(directory: Path, name: str, text: str) -> Path:
    """Write ``name`` whole and rename it into place, as a deploy does."""
    temporary = directory / f".{name}.tmp"
    temporary.write_text(text)
    return temporary.rename(directory / name)


def parse(text: str) -> None:
    parse_squishfile(text.encode(), file="x.toml", paths=host_paths(Path("/")), name="x")


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse(text)
    return [problem.describe("x.toml") for problem in caught.value.errors]


def test_the_caps_and_their_errors() -> None:
    parse(with_env(MAX_ENV_KEYS))
    assert problems(with_env(MAX_ENV_KEYS + 1)) == [
        f"x.toml:5: env: has {MAX_ENV_KEYS + 1} variables; at most {MAX_ENV_KEYS} are allowed "
        "(put bulk configuration in a file layer)"
    ]
    # 8 variables of 16 KiB each: over 128 KiB of names and values.
    big = with_env(8, "v" * (16 << 10))
    (message,) = problems(big)
    assert message.startswith("x.toml:5: env: holds 131")
    assert f"at most {MAX_ENV_BYTES} (128 KiB)" in message
    # Every other error is still listed.
    assert problems(with_env(MAX_ENV_KEYS + 1).replace('"none"', '"nope"'))[0].startswith(
        "x.toml:1: network: must be"
    )

    huge = "#" * MAX_SQUISHFILE_BYTES + "\n"
    assert problems(huge) == [
        f"x.toml: the file is {MAX_SQUISHFILE_BYTES + 1} bytes; a squishfile may be at most "
        f"{MAX_SQUISHFILE_BYTES} bytes (1 MiB): keep data in layers, not in the squishfile"
    ]


def with_args(count: int, value: str = "x") -> str:
    args = ", ".join(repr(value) for _ in range(count))
    return f'network = "none"\n[run]\ncommand = "/bin/echo"\nargs = [{args}]\n'


def test_the_caps_on_args() -> None:
    # bwrap gets the command's arguments on its command line too: 250,000
    # of them would fail every start with "Argument list too long".
    parse(with_args(MAX_ARGS))
    assert problems(with_args(MAX_ARGS + 1)) == [
        f"x.toml:4: run.args: has {MAX_ARGS + 1} arguments; at most {MAX_ARGS} are allowed"
    ]
    (message,) = problems(with_args(9, "a" * (16 << 10)))
    assert message.startswith("x.toml:4: run.args: holds 147")
    assert f"at most {MAX_ARGS_BYTES} (128 KiB)" in message


def test_validate_names_args_over_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "echo.toml"
    path.write_text(with_args(MAX_ARGS + 1))

    done = subprocess.run(
        [sys.executable, "-m", "squish", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"{path}:4: run.args: has {MAX_ARGS + 1} arguments; at most {MAX_ARGS} are allowed"
    ), done.stdout + done.stderr


def test_create_refuses_a_huge_file_as_the_daemon_does(tmp_path: Path) -> None:
    # squish create reads the file before it talks to the daemon: a file of
    # 64 MiB (sparse) is refused with the daemon's words, having read 1 MiB
    # and a byte of it (squish.model.host.read_squishfile).
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as out:
        out.truncate(64 << 20)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "squish",
            "--socket",
            str(tmp_path / "none.sock"),
            "create",
            str(huge),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"squish: {huge}: the file is {64 << 20} bytes; a squishfile may be at most "
        f"{MAX_SQUISHFILE_BYTES} bytes (1 MiB): keep data in layers, not in the squishfile"
    )


@pytest.fixture
def running(tmp_path: Path, rootless: None) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "manifests").mkdir()
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    wait_for_socket(tmp_path / "d.sock", process)
    yield process
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def test_a_huge_squishfile_is_refused_at_once_and_the_daemon_stays_quick(
    tmp_path: Path, running: subprocess.Popen[bytes]
) -> None:
    manifests = tmp_path / "manifests"
    sock = tmp_path / "d.sock"
    drop(manifests, "web.toml", f'network = "none"\n{RUN}')

    def phases() -> dict[str, str]:
        with Client(sock) as client:
            return {row["name"]: str(row["phase"]) for row in client.containers()}

    eventually(lambda: phases().get("web") == "running" or None)

    huge = drop(manifests, "huge.toml", with_env(600_000, "v" * 20))
    many = drop(manifests, "many.toml", with_env(2000))
    assert huge.stat().st_size > 18 * MAX_SQUISHFILE_BYTES

    slowest = 0.0
    deadline = time.monotonic() + 5
    while True:
        started = time.monotonic()
        with Client(sock) as client:
            rows = {row["name"]: row for row in client.containers()}
        slowest = max(slowest, time.monotonic() - started)
        if all(rows.get(name, {}).get("phase") == "invalid" for name in ("huge", "many")):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert slowest < 1.0, slowest
    assert rows["web"]["phase"] == "running"
    assert f"{huge}: the file is {huge.stat().st_size} bytes" in str(rows["huge"]["reason"])
    assert f"{many}:5: env: has 2000 variables" in str(rows["many"]["reason"])

    ps = subprocess.run(
        [sys.executable, "-m", "squish", "--socket", str(sock), "ps", "-a", "--no-trunc"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = {line.split()[1]: line for line in ps.stdout.splitlines()[1:]}
    assert "invalid" in lines["huge"]
    assert "a squishfile may be at most 1048576 bytes" in lines["huge"]
    assert "env: has 2000 variables" in lines["many"]

    started = time.monotonic()
    validate = subprocess.run(
        [sys.executable, "-m", "squish", "validate", str(huge), str(many)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert time.monotonic() - started < 5
    assert validate.returncode == 1
    output = validate.stdout + validate.stderr
    assert f"{huge}: the file is {huge.stat().st_size} bytes; a squishfile may be" in output
    assert f"{many}:5: env: has 2000 variables; at most 1000 are allowed" in output
