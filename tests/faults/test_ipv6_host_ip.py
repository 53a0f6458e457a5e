"""An IPv6 ``host_ip``: refused when the squishfile is validated, never a start failing forever.

slirp4netns forwards only IPv4 host addresses (``add_hostfwd: bad
arguments.host_addr`` for ``::1``), so a port bound to an IPv6 address could
never start. It is an error of the squishfile, with the field and the fix,
in ``squish validate`` and in a real daemon's ``ps -a``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from squish.cli.client import Client
from tests.conftest import eventually, free_port
from tests.test_daemon import daemon, wait_for_socket

REPO = Path(__file__).resolve().parents[2]


def squishfile(host_ip: str) -> str:
    return (
        '[run]\ncommand = "/bin/busybox"\nargs = ["httpd", "-f", "-p", "2000"]\n'
        f'[[ports]]\ncontainer = 2000\nhost = {free_port()}\nhost_ip = "{host_ip}"\n'
    )


def test_validate_refuses_an_ipv6_host_ip_and_says_what_to_use(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(squishfile("::1"))

    done = subprocess.run(
        [sys.executable, "-m", "squish", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    assert done.returncode == 1
    assert "ports[0].host_ip" in done.stdout + done.stderr
    assert "IPv6 addresses cannot be forwarded" in done.stdout + done.stderr
    assert "127.0.0.1" in done.stdout + done.stderr


def test_the_daemon_reports_it_invalid_and_runs_the_ipv4_one(
    tmp_path: Path, rootless: None
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "v6.toml").write_text(squishfile("::1"))
    (manifests / "v4.toml").write_text(squishfile("127.0.0.1"))
    process = daemon(tmp_path, "d", state=tmp_path / "state")
    try:
        wait_for_socket(tmp_path / "d.sock", process)
        with Client(tmp_path / "d.sock") as client:

            def phases() -> dict[str, tuple[str, str | None]] | None:
                rows = {
                    row["name"]: (row["phase"], row["manifest_error"])
                    for row in client.containers()
                }
                ready = rows.get("v4", ("", None))[0] == "running" and "v6" in rows
                return rows if ready else None

            rows = eventually(phases)
            phase, error = rows["v6"]
            assert phase == "invalid"
            assert error is not None
            assert "ports[0].host_ip" in error
            assert "IPv6 addresses cannot be forwarded" in error
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert b"bad arguments" not in err


def test_the_daemon_and_run_refuse_an_ipv6_host_ip_of_their_own(
    tmp_path: Path, rootless: None
) -> None:
    # Their --host-ip is every port's default address: an IPv6 one would fail
    # every start of every container with a port. Refused at once, in one line.
    (tmp_path / "web.toml").write_text(squishfile("127.0.0.1"))
    state = ["--state-dir", str(tmp_path / "state"), "--host-ip", "::1"]
    for argv in (
        [
            "daemon",
            *state,
            "--manifests",
            str(tmp_path / "m"),
            "--socket",
            str(tmp_path / "d.sock"),
        ],
        ["run", *state, str(tmp_path / "web.toml")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "squish", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == 1, (argv[0], done.stderr)
        assert done.stderr.startswith("squish: --host-ip (or $SQUISH_HOST_IP): IPv6 addresses")
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "d.sock").exists()
