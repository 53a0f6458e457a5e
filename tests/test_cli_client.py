"""The ``squish`` commands that talk to the daemon, end to end but for the runtime.

The real CLI (``main``) and client talk over a real unix socket to the real
API app and the real reconciler, served in a background event loop (an anyio
blocking portal), with the in-package fake runtime under it
(tests/control_plane.py). The output contract of the original squish is
checked exactly: ``create`` prints only the id, ``ps`` rows start with the
7-character id, the name and the pid, ``stop`` prints ids.
"""

from __future__ import annotations

import json
import re
import socket
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import pytest

from squish import __version__
from squish.daemon.api import make_app, serve
from squish.errors import PortInUse
from squish.main import main
from squish.model.host import host_paths
from squish.model.squishfile import parse_squishfile
from tests.control_plane import Plane, real_plane, squishfile, wait_sync

T = TypeVar("T")


@dataclass
class Daemon:
    plane: Plane
    socket: Path
    portal: anyio.from_thread.BlockingPortal

    def squish(self, *argv: str) -> int:
        return main(["--socket", str(self.socket), *argv])

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` in the daemon's event loop (the reconciler is not thread-safe)."""

        async def run() -> T:
            return function()

        return self.portal.call(run)

    def ids(self) -> dict[str, str]:
        return self.call(self.plane.ids)

    def phase(self, name: str) -> str | None:
        return self.call(lambda: self.plane.phase(name))

    def write(self, name: str, text: str) -> None:
        self.plane.write(name, text)

    def wait_running(self, *names: str) -> None:
        wait_sync(lambda: all(self.phase(name) == "running" for name in names))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    path = tmp_path / "squish.sock"
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(real_plane(tmp_path / "daemon")) as plane,
    ):
        future, _ = portal.start_task(serve, make_app(plane.control), path)
        try:
            yield Daemon(plane, path, portal)
        finally:
            future.cancel()


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


def stored(daemon: Daemon, name: str) -> bytes:
    return (daemon.plane.manifests / f"{name}.toml").read_bytes()


# -- create / apply ---------------------------------------------------------------


def test_create_prints_only_the_id_and_sends_absolute_paths(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert daemon.squish("create", "deploy/web.toml") == 0
    out, err = capsys.readouterr()
    assert out == f"{daemon.ids()['web']}\n"
    assert err == ""

    manifest = stored(daemon, "web")
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
        (project / "deploy" / "web.toml").read_bytes(),
        file="x",
        paths=host_paths(project),
        name="web",
    )
    sent = parse_squishfile(manifest, file="x", paths=host_paths(Path("/nonexistent")), name="web")
    assert sent.spec_hash() == local.spec_hash()
    assert daemon.call(daemon.plane.control.containers)[0]["spec_hash"] == local.spec_hash()


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
    manifest = stored(daemon, "box")
    assert tomllib.loads(manifest.decode())["layers"] == {"base": str(tmp_path / "rootfs")}


def test_create_bad_file_fails_before_the_daemon(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "bad.toml").write_text('[layers]\napp = "./missing"\n[run]\ncommand = "/x"\n')
    assert daemon.squish("create", "bad.toml") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("squish: bad.toml:2: layers.app: './missing' does not exist")
    assert len(err.splitlines()) == 1
    assert list(daemon.plane.manifests.iterdir()) == []
    assert daemon.squish("create", "nope.toml") == 1
    assert "nope.toml: cannot read the file" in capsys.readouterr().err


def test_create_reports_the_daemons_refusal_and_what_it_undid(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.call(
        lambda: daemon.plane.runtime.fail_next_start(
            "web", PortInUse("host port 42069/tcp is already in use")
        )
    )
    assert daemon.squish("create", "deploy/web.toml") == 1
    out, err = capsys.readouterr()
    assert out == ""
    web = daemon.plane.manifests / "web.toml"
    assert err == f"squish: host port 42069/tcp is already in use; {web} was removed again\n"
    assert not web.exists()


def test_create_json(daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.squish("create", "--json", "--timeout", "5", "deploy/web.toml") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == "web"
    assert status["phase"] == "running"
    # --json before the verb works too.
    assert daemon.squish("--json", "create", "deploy/web.toml") == 0
    assert json.loads(capsys.readouterr().out)["id"] == status["id"]


def test_apply_does_not_wait(
    daemon: Daemon, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "bad.toml").write_text("[run]\n")
    assert daemon.squish("apply", "deploy/web.toml", "bad.toml") == 1
    out, err = capsys.readouterr()
    assert out == "web applied\n"
    assert "bad.toml:1: run.command: is required" in err
    assert sorted(p.name for p in daemon.plane.manifests.iterdir()) == ["web.toml"]
    daemon.wait_running("web")


# -- ps ---------------------------------------------------------------------------


@pytest.fixture
def populated(daemon: Daemon) -> Daemon:
    daemon.write("web", squishfile(port=42069))
    daemon.write(
        "db",
        '[run]\ncommand = "/bin/db"\n'
        '[[ports]]\ncontainer = 5432\nhost = 5432\nhost_ip = "127.0.0.2"\n',
    )
    daemon.write("old", squishfile("/bin/old"))
    daemon.write("broken", "[run]\n")
    daemon.wait_running("web", "db", "old")
    assert daemon.squish("stop", "old") == 0
    wait_sync(lambda: daemon.phase("broken") == "invalid")
    return daemon


def test_ps_lists_running_containers(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert populated.squish("ps") == 0
    header, *rows = lines_of(capsys.readouterr().out)
    assert header.split() == ["ID", "NAME", "PID", "STATUS", "UPTIME", "RESTARTS", "PORTS"]
    assert len(rows) == 2
    fields = {row.split()[1]: row.split() for row in rows}
    ids = populated.ids()
    assert fields["web"][:2] == [ids["web"][:7], "web"]
    assert fields["web"][2].isdigit()
    assert fields["web"][3] == "running"
    assert fields["web"][4].endswith("s")
    # The bind address is shown, as podman shows it.
    assert fields["web"][5:] == ["0", "127.0.0.1:42069->80/tcp"]
    assert fields["db"][6] == "127.0.0.2:5432->5432/tcp"


def test_ps_all_adds_the_rest(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert populated.squish("ps", "-a") == 0
    header, *rows = lines_of(capsys.readouterr().out)
    assert header.startswith("ID")
    assert header.split()[-1] == "REASON"
    fields = {row.split()[1]: row.split(maxsplit=7) for row in rows}
    assert set(fields) == {"web", "db", "old", "broken"}
    assert fields["broken"][:4] == ["-", "broken", "-", "invalid"]
    # The manifest's error once, not twice.
    reason = fields["broken"][7]
    assert reason.count("run.command: is required") == 1
    old_id = populated.call(lambda: _last_id(populated, "old"))
    assert fields["old"][:4] == [old_id, "old", "-", "stopped"]
    assert fields["old"][7] == "stopped by the user"


def _last_id(daemon: Daemon, name: str) -> str:
    record = daemon.plane.reconciler.records[name]
    assert record.container_id is not None
    return record.container_id[:7]


def test_ps_fits_80_columns_on_a_terminal(
    populated: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    populated.write("broken", "x" * 300 + ' = 1\n[run]\ncommand = "/bin/x"\n')
    wait_sync(lambda: "x" * 300 in str(populated.call(populated.plane.control.containers)))
    capsys.readouterr()
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    assert populated.squish("ps", "-a") == 0
    lines = lines_of(re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out))
    assert len(lines) == 5  # the header and one line per container
    assert all(len(line) <= 80 for line in lines)
    assert any(line.rstrip().endswith("…") for line in lines)
    assert populated.squish("ps", "-a", "--no-trunc") == 0
    text = capsys.readouterr().out
    assert populated.ids()["web"] in text  # the whole id
    assert "x" * 40 in text.replace("\n", "").replace(" ", "")


def test_ps_with_nothing_running_prints_the_header(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert daemon.squish("ps") == 0
    assert lines_of(capsys.readouterr().out) == ["ID  NAME  PID  STATUS  UPTIME  RESTARTS  PORTS"]


def test_ps_json_and_format(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert populated.squish("ps", "--json") == 0
    assert {item["name"] for item in json.loads(capsys.readouterr().out)} == {"web", "db"}
    assert populated.squish("--json", "ps", "-a") == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert populated.squish("ps", "--format", "{name} {ports[0].host} {phase}") == 0
    assert lines_of(capsys.readouterr().out) == ["db 5432 running", "web 42069 running"]
    assert populated.squish("ps", "--format", "json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert populated.squish("ps", "--format", "{nope}") == 1
    err = capsys.readouterr().err
    assert err.startswith("squish: --format: no field 'nope' (fields: exit_code, health, id,")
    assert populated.squish("ps", "--format", "{name") == 1
    assert capsys.readouterr().err.startswith("squish: --format: ")


# -- stop / start / delete ----------------------------------------------------------


def test_stop_takes_names_and_id_prefixes_several_at_once(
    populated: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = populated.ids()
    capsys.readouterr()
    assert populated.squish("stop", ids["web"][:7], "db") == 0
    assert capsys.readouterr().out == f"{ids['web']}\n{ids['db']}\n"
    assert populated.ids() == {}
    # Already stopped: still fine, as in podman.
    assert populated.squish("stop", "web", "--json") == 0
    assert [item["phase"] for item in json.loads(capsys.readouterr().out)] == ["stopped"]


def test_stop_never_matches_a_name_prefix(
    populated: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert populated.squish("stop", "w") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("squish: no such container 'w'")
    assert "web" in populated.ids()


def test_stop_goes_on_past_an_unknown_ref(
    populated: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert populated.squish("stop", "zzz", "web") == 1
    out, err = capsys.readouterr()
    assert out == f"{_last_full_id(populated, 'web')}\n"
    assert err.startswith("squish: no such container 'zzz'")
    assert "web" not in populated.ids()


def _last_full_id(daemon: Daemon, name: str) -> str:
    record = daemon.call(lambda: daemon.plane.reconciler.records[name])
    assert record.container_id is not None
    return record.container_id


def test_start_prints_the_new_id(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    old_id = _last_full_id(populated, "old")
    capsys.readouterr()
    assert populated.squish("start", "old", "web") == 0
    new_id = populated.ids()["old"]
    assert new_id != old_id
    assert capsys.readouterr().out == f"{new_id}\n{populated.ids()['web']}\n"
    assert populated.squish("start", "nope") == 1
    assert capsys.readouterr().err.startswith("squish: no such container 'nope'")


def test_delete(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    web_id = populated.ids()["web"]
    capsys.readouterr()
    assert populated.squish("delete", "web", "broken") == 0
    assert capsys.readouterr().out == f"{web_id}\nbroken\n"  # broken never ran: no id
    assert not (populated.plane.manifests / "web.toml").exists()
    assert "web" not in populated.ids()


# -- inspect / logs / events / status -------------------------------------------------


def test_inspect_is_a_json_array(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert populated.squish("inspect", "web") == 0
    (web,) = json.loads(capsys.readouterr().out)
    assert web["id"] == populated.ids()["web"]
    assert web["applied"]["command"] == "/bin/app"
    assert populated.squish("inspect", "web", "nope", "db") == 1
    out, err = capsys.readouterr()
    assert [item["name"] for item in json.loads(out)] == ["web", "db"]
    assert err.startswith("squish: no such container 'nope'")
    assert populated.squish("inspect", "--format", "{name} {applied.command}", "db") == 0
    assert capsys.readouterr().out == "db /bin/db\n"


def test_logs(populated: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    populated.plane.log("web").write_bytes(b"one\ntwo\nthree\n")
    capsys.readouterr()
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


def test_logs_of_several_containers_name_each_line(
    populated: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    populated.plane.log("web").write_bytes(b"w1\nw2\n")
    populated.plane.log("db").write_bytes(b"d1\n")
    capsys.readouterr()
    assert populated.squish("logs", "web", "nope", "db") == 1
    out, err = capsys.readouterr()
    assert out == "web | w1\nweb | w2\ndb | d1\n"
    assert err.startswith("squish: no such container 'nope'")


def test_logs_follow_several_interleaves_until_they_end(
    populated: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    populated.plane.log("web").write_bytes(b"w1\n")
    populated.plane.log("db").write_bytes(b"d1\n")
    until = f"{time.time() + 1.5:.3f}"
    capsys.readouterr()

    def later() -> None:
        time.sleep(0.5)
        with populated.plane.log("db").open("ab") as file:
            file.write(b"d2\n")

    import threading

    writer = threading.Thread(target=later)
    writer.start()
    assert populated.squish("logs", "-f", "--until", until, "web", "db") == 0
    writer.join()
    lines = sorted(lines_of(capsys.readouterr().out))
    assert lines == ["db | d1", "db | d2", "web | w1"]


def feed_events(daemon: Daemon, action: Callable[[], Any]) -> None:
    """Run ``action`` once the CLI subscribes, then end the stream."""

    async def feed() -> None:
        reconciler = daemon.plane.reconciler
        with anyio.fail_after(5):
            while not reconciler.events.listening:
                await anyio.sleep(0.01)
        action()
        with anyio.fail_after(5):
            while "web" not in daemon.plane.ids():
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        reconciler.events.close()

    daemon.portal.start_task_soon(feed)


def test_events(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    feed_events(daemon, lambda: daemon.write("web", squishfile()))
    assert daemon.squish("events") == 0
    rows = [line.split(maxsplit=3) for line in lines_of(capsys.readouterr().out)]
    started = next(row for row in rows if row[1] == "container.started")
    assert started[2] == "web"
    assert started[3] == f"started {daemon.ids()['web'][:12]}"
    assert started[0].startswith(time.strftime("%Y-%m-%dT"))


def test_events_json_and_format(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    feed_events(daemon, lambda: daemon.write("web", squishfile()))
    assert daemon.squish("events", "--json") == 0
    events = [json.loads(line) for line in lines_of(capsys.readouterr().out)]
    assert any(e["kind"] == "container.started" and e["name"] == "web" for e in events)
    feed_events(daemon, lambda: daemon.write("web", squishfile(env="again")))
    assert daemon.squish("events", "--format", "{kind}:{name}") == 0
    assert "container.started:web" in lines_of(capsys.readouterr().out)


def test_status_is_a_readable_summary(
    populated: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert populated.squish("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["containers"]["running"] == 2
    assert populated.squish("status") == 0
    lines = lines_of(capsys.readouterr().out)
    assert lines[0].startswith(f"squish {__version__}, daemon pid ")
    assert f"manifests:    {populated.plane.manifests}" in lines
    assert "containers:   2 running, 1 stopped, 1 invalid" in lines
    assert not any("{" in line for line in lines)


# -- finding the daemon ---------------------------------------------------------------


def test_socket_option_after_the_verb_and_from_the_environment(
    populated: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["ps", "--socket", str(populated.socket)]) == 0
    assert len(lines_of(capsys.readouterr().out)) == 3
    monkeypatch.setenv("SQUISH_SOCKET", str(populated.socket))
    assert main(["ps"]) == 0
    assert len(lines_of(capsys.readouterr().out)) == 3


def test_daemon_unreachable_exits_3_saying_how_to_start_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sock"
    assert main(["--socket", str(missing), "ps"]) == 3
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
    assert main(["--socket", str(dead), "stop", "web"]) == 3
    assert "(connection refused)" in capsys.readouterr().err


def test_a_usage_error_exits_2_and_help_lists_every_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ps", "--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert main(["stop"]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0", "1", "2", "3", "130"):
        assert any(line.split()[:1] == [code] for line in out.splitlines()), code


def test_validate_and_run_need_no_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SQUISH_SOCKET", str(tmp_path / "missing.sock"))
    good = tmp_path / "good.toml"
    good.write_text('[run]\ncommand = "/bin/true"\n')
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"


def test_network_ls_and_inspect(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.write("api", 'networks = ["backend", "front"]\n' + squishfile())
    daemon.write("db", 'networks = ["backend"]\n' + squishfile())
    daemon.wait_running("api", "db")
    capsys.readouterr()
    assert daemon.squish("network", "ls") == 0
    header, *rows = lines_of(capsys.readouterr().out)
    assert header.split() == ["NAME", "SUBNET", "GATEWAY", "RUNNING", "CONTAINERS"]
    assert [row.split(maxsplit=4) for row in rows] == [
        ["backend", "10.89.0.0/24", "10.89.0.1", "2/2", "api, db"],
        ["front", "10.89.1.0/24", "10.89.1.1", "1/1", "api"],
    ]
    assert daemon.squish("network", "inspect", "backend", "nowhere") == 1
    captured = capsys.readouterr()
    (backend,) = json.loads(captured.out)
    assert [m["name"] for m in backend["members"]] == ["api", "db"]
    assert captured.err == "squish: no network 'nowhere': no squishfile names it\n"
    assert daemon.squish("network", "ls", "--json") == 0
    assert [n["name"] for n in json.loads(capsys.readouterr().out)] == ["backend", "front"]
    # inspect of a container shows its addresses.
    assert daemon.squish("inspect", "db") == 0
    (db,) = json.loads(capsys.readouterr().out)
    assert db["networks"] == {"backend": backend["members"][1]["address"]}


def test_exec_prints_the_output_and_exits_with_the_commands_status(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    from squish.runtime import ExecResult

    daemon.write("web", squishfile())
    daemon.wait_running("web")
    daemon.plane.runtime.exec_results["web"] = ExecResult(7, "from inside\n", 0.01)
    capsys.readouterr()
    assert daemon.squish("exec", "web", "--", "sh", "-c", "exit 7") == 7
    assert capsys.readouterr().out == "from inside\n"
    assert daemon.squish("--json", "exec", "web", "true") == 0  # --json: the answer, exit 0
    assert json.loads(capsys.readouterr().out)["exit_code"] == 7
    assert daemon.squish("exec", "web") == 2
    assert "name the command" in capsys.readouterr().err
    assert daemon.squish("exec", "nope", "true") == 1
    assert capsys.readouterr().err == "squish: no such container 'nope'\n"
