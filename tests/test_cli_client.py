"""The ``squish`` commands that talk to the daemon, end to end but for the daemon.

The real CLI (``main``) and client talk over a real unix socket to the real
API app, served in a background event loop (an anyio blocking portal), with
a fake ControlPlane behind it. The output contract of the original squish is
checked exactly: ``create`` prints only the id, ``ps`` rows start with the
7-character id, the name and the pid, ``stop`` prints ids.
"""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from fake_control_plane import FakeControlPlane, make_id

from squish.api import make_app, serve
from squish.cli import main
from squish.control import Event, Phase
from squish.errors import PortInUse
from squish.manifest import parse_squishfile
from squish.runtime import PortForward


@dataclass
class Daemon:
    control: FakeControlPlane
    socket: Path
    portal: anyio.from_thread.BlockingPortal

    def squish(self, *argv: str) -> int:
        return main(["--socket", str(self.socket), *argv])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    control = FakeControlPlane(tmp_path / "daemon")
    path = tmp_path / "squish.sock"
    with anyio.from_thread.start_blocking_portal() as portal:
        future, _ = portal.start_task(serve, make_app(control), path)
        try:
            yield Daemon(control, path, portal)
        finally:
            future.cancel()
            portal.call(control.close)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout with a binary, a config file and a squishfile in a subdirectory."""
    root = tmp_path / "project"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "server").write_text("#!/bin/sh\n")
    (root / "conf").mkdir()
    (root / "conf" / "app.toml").write_text("x = 1\n")
    (root / "lib" / "extra").mkdir(parents=True)
    (root / "deploy").mkdir()
    (root / "deploy" / "web.toml").write_text(
        """\
[layers]
alpine = "3.14"
python = "3.11"
app = "./bin/server"
extra = "./lib/extra"
conf = { path = "conf/app.toml", target = "/etc/app.toml" }
abs = { path = "/tmp", target = "/mnt/tmp", rw = true }

[run]
command = "/app/server"
args = ["8080"]

[[ports]]
container = 8080
host = 42069
"""
    )
    # As in the original squish, relative paths are the caller's: scripts run
    # `squish create deploy/web.toml` from the checkout.
    monkeypatch.chdir(root)
    return root


def lines_of(text: str) -> list[str]:
    return text.splitlines()


# -- create / apply ---------------------------------------------------------------


def test_create_prints_only_the_id_and_sends_absolute_paths(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert daemon.squish("create", "deploy/web.toml") == 0
    out, err = capsys.readouterr()
    status = daemon.control.statuses["web"]
    assert out == f"{status.id}\n"
    assert err == ""

    [(verb, name, manifest, timeout)] = daemon.control.calls
    assert (verb, name, timeout) == ("create", "web", 30.0)
    layers = tomllib.loads(manifest.decode())["layers"]
    assert layers["alpine"] == "3.14"
    assert layers["python"] == "3.11"
    # Where each layer was mounted from the relative path is kept as target.
    assert layers["app"] == {"path": str(project / "bin" / "server"), "target": "/app/server"}
    assert layers["extra"] == {"path": str(project / "lib" / "extra"), "target": "/app/lib/extra"}
    assert layers["conf"] == {"path": str(project / "conf" / "app.toml"), "target": "/etc/app.toml"}
    assert layers["abs"] == {"path": "/tmp", "target": "/mnt/tmp", "rw": True}
    # The daemon builds exactly the container validated here.
    local = parse_squishfile(
        (project / "deploy" / "web.toml").read_bytes(), file="x", base_dir=project, name="web"
    )
    sent = parse_squishfile(manifest, file="x", base_dir=Path("/nonexistent"), name="web")
    assert sent.spec_hash() == local.spec_hash()


def test_create_rewrites_a_path_base(
    daemon: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "box.toml").write_text('[layers]\nbase = "./rootfs"\n[run]\ncommand = "/bin/sh"\n')
    monkeypatch.chdir(tmp_path)
    assert daemon.squish("create", "box.toml") == 0
    manifest = daemon.control.calls[0][2]
    assert tomllib.loads(manifest.decode())["layers"] == {"base": str(tmp_path / "rootfs")}


def test_create_bad_file_fails_before_the_daemon(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "bad.toml").write_text('[layers]\napp = "./missing"\n[run]\ncommand = "/x"\n')
    assert daemon.squish("create", "bad.toml") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("squish: bad.toml: layers.app: './missing' does not exist")
    assert len(err.splitlines()) == 1
    assert daemon.control.calls == []
    assert daemon.squish("create", "nope.toml") == 1
    assert "nope.toml: cannot read the file" in capsys.readouterr().err


def test_create_reports_the_daemons_refusal(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.control.fail_next = PortInUse("host port 42069/tcp is already in use")
    assert daemon.squish("create", "deploy/web.toml") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "squish: host port 42069/tcp is already in use\n"


def test_create_json(daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.squish("create", "--json", "--timeout", "5", "deploy/web.toml") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == "web"
    assert status["phase"] == "running"
    assert daemon.control.calls[0][3] == 5.0


def test_apply_does_not_wait(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "bad.toml").write_text("[run]\n")
    assert daemon.squish("apply", "deploy/web.toml", "bad.toml") == 1
    out, err = capsys.readouterr()
    assert out == "web applied\n"
    assert "bad.toml: run.command: is required" in err
    assert [call[:2] for call in daemon.control.calls] == [("apply", "web")]
    assert daemon.control.statuses["web"].phase is Phase.PENDING


# -- ps ---------------------------------------------------------------------------


@pytest.fixture
def populated(daemon: Daemon) -> Daemon:
    control = daemon.control
    control.add("web", pid=4242, ports=(PortForward(host=42069, container=8080),), restarts=2)
    control.add("db", pid=5151, ports=(PortForward(host=5432, container=5432, host_ip="::1"),))
    control.add("old", Phase.STOPPED, id=make_id("old"), reason="stopped by the user")
    control.add("broken", Phase.INVALID, reason="", manifest_error="broken.toml: run: is required")
    control.add("crashy", Phase.BACKOFF, id=make_id("crashy"), reason="exited with 1", restarts=4)
    return daemon


def test_ps_lists_running_containers(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("ps") == 0
    header, *rows = lines_of(capsys.readouterr().out)
    assert header.split() == ["ID", "NAME", "PID", "STATUS", "UPTIME", "RESTARTS", "PORTS"]
    assert len(rows) == 2
    fields = {row.split()[1]: row.split() for row in rows}
    assert fields["web"][:3] == [make_id("web")[:7], "web", "4242"]
    assert fields["web"][3] == "running"
    assert fields["web"][4].startswith("1m1")  # started 75 s ago
    assert fields["web"][5:] == ["2", "42069->8080/tcp"]
    assert fields["db"][:3] == [make_id("db")[:7], "db", "5151"]
    assert fields["db"][6] == "[::1]:5432->5432/tcp"


def test_ps_all_adds_the_rest(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("ps", "-a") == 0
    header, *rows = lines_of(capsys.readouterr().out)
    assert header.startswith("ID")
    assert header.split()[-1] == "REASON"
    fields = {row.split()[1]: row.split(maxsplit=7) for row in rows}
    assert set(fields) == {"web", "db", "old", "broken", "crashy"}
    assert fields["broken"][:4] == ["-", "broken", "-", "invalid"]
    assert fields["broken"][7] == "manifest invalid: broken.toml: run: is required"
    assert fields["old"][:4] == [make_id("old")[:7], "old", "-", "stopped"]
    assert fields["old"][7] == "stopped by the user"
    assert fields["crashy"][3:6] == ["backoff", "-", "4"]


def test_ps_with_nothing_running_prints_the_header(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert daemon.squish("ps") == 0
    assert lines_of(capsys.readouterr().out) == ["ID  NAME  PID  STATUS  UPTIME  RESTARTS  PORTS"]


def test_ps_json(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("ps", "--json") == 0
    assert {item["name"] for item in json.loads(capsys.readouterr().out)} == {"web", "db"}
    assert populated.squish("ps", "-a", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 5


# -- stop / start / delete ----------------------------------------------------------


def test_stop_prints_the_ids(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("stop", make_id("web")[:7]) == 0
    assert capsys.readouterr().out == f"{make_id('web')}\n"
    assert populated.control.statuses["web"].phase is Phase.STOPPED
    assert populated.squish("stop", "d", "--json") == 0
    assert [item["name"] for item in json.loads(capsys.readouterr().out)] == ["db"]


def test_stop_unknown_prefix_fails(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("stop", "zzz") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "squish: no container id or name starts with 'zzz'\n"


def test_start_prints_the_new_id(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("start", "old") == 0
    new_id = populated.control.statuses["old"].id
    assert new_id != make_id("old")
    assert capsys.readouterr().out == f"{new_id}\n"
    assert populated.squish("start", "nope") == 1
    assert capsys.readouterr().err == "squish: no container named 'nope'\n"


def test_delete(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("delete", "web") == 0
    assert capsys.readouterr().out == f"{make_id('web')}\n"
    assert populated.squish("delete", "broken") == 0
    assert capsys.readouterr().out == "broken\n"  # never ran: no id
    assert "web" not in populated.control.statuses


# -- inspect / logs / events / status -------------------------------------------------


def test_inspect_is_json(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("inspect", "web") == 0
    assert json.loads(capsys.readouterr().out)["status"]["pid"] == 4242
    assert populated.squish("inspect", "nope") == 1


def test_logs(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    populated.control.log_path("web").write_bytes(b"one\ntwo\nthree\n")
    assert populated.squish("logs", "web") == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\n"
    assert populated.squish("logs", "--tail", "1", "web") == 0
    assert capsys.readouterr().out == "three\n"
    assert populated.squish("logs", "--tail", "2", "--json", "web") == 0
    records = [json.loads(line) for line in lines_of(capsys.readouterr().out)]
    assert [{k: r[k] for k in ("name", "line")} for r in records] == [
        {"name": "web", "line": "two"},
        {"name": "web", "line": "three"},
    ]
    assert all(isinstance(r["at"], float) for r in records)
    assert populated.squish("logs", "db") == 0  # known, nothing written yet: an empty log
    assert capsys.readouterr().out == ""
    assert populated.squish("logs", "nosuch") == 1
    assert capsys.readouterr().err == "squish: no such container 'nosuch'\n"


def feed_events(daemon: Daemon, *events: Event) -> None:
    """Publish ``events`` once the CLI subscribes, then end the stream."""

    async def feed() -> None:
        with anyio.fail_after(5):
            while not daemon.control.subscribers:
                await anyio.sleep(0.01)
        for event in events:
            daemon.control.publish(event)
        daemon.control.close()

    daemon.portal.start_task_soon(feed)


def test_events(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    at = 1_700_000_000.0
    feed_events(
        daemon,
        Event("container.started", "web", "started abc", at=at),
        Event("container.exited", "web", "exited\nwith 1", at=at + 1),
    )
    assert daemon.squish("events") == 0
    rows = [line.split(maxsplit=3) for line in lines_of(capsys.readouterr().out)]
    assert [row[1:] for row in rows] == [
        ["container.started", "web", "started abc"],
        ["container.exited", "web", "exited with 1"],
    ]
    assert rows[0][0].startswith("2023-11-1")


def test_events_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    feed_events(daemon, Event("manifest.invalid", "db", "bad", at=5.0, fields={"file": "db.toml"}))
    assert daemon.squish("events", "--json") == 0
    assert [json.loads(line) for line in lines_of(capsys.readouterr().out)] == [
        {"kind": "manifest.invalid", "name": "db", "message": "bad", "at": 5.0, "file": "db.toml"}
    ]


def test_status(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert populated.squish("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["phases"]["running"] == 2
    assert populated.squish("status") == 0
    assert "version: test" in lines_of(capsys.readouterr().out)


# -- finding the daemon ---------------------------------------------------------------


def test_socket_option_after_the_verb_and_from_the_environment(
    populated: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ps", "--socket", str(populated.socket)]) == 0
    assert len(lines_of(capsys.readouterr().out)) == 3
    monkeypatch.setenv("SQUISH_SOCKET", str(populated.socket))
    assert main(["ps"]) == 0
    assert len(lines_of(capsys.readouterr().out)) == 3


def test_daemon_unreachable_exits_2_saying_how_to_start_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sock"
    assert main(["--socket", str(missing), "ps"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert f"cannot reach the squish daemon at {missing} (no such file or directory)" in err
    assert "squish daemon --manifests DIR" in err
    assert "SQUISH_SOCKET" in err
    assert "--socket" in err

    # A socket nobody listens on (a dead daemon's): connection refused.
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(dead))
    assert main(["--socket", str(dead), "stop", "web"]) == 2
    assert "(connection refused)" in capsys.readouterr().err


def test_validate_and_run_need_no_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SQUISH_SOCKET", str(tmp_path / "missing.sock"))
    good = tmp_path / "good.toml"
    good.write_text('[run]\ncommand = "/bin/true"\n')
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
