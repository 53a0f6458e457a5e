"""GitOps end to end: a real daemon following a bare repository on local disk.

Real daemon processes with the real runtime (rootless), real git, a bare
repository reached by a ``file://`` URL, and the ``squish`` CLI for
``sync``, ``sources`` and ``ps -a``. Containers sleep with no network, so
each test is about what runs, not what it serves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_daemon import daemon, wait_for_socket

from squish.cli.client import Client, JSONObject
from tests.conftest import eventually, free_port
from tests.git_repo import Remote, git

pytestmark = pytest.mark.usefixtures("git_env")

REPO = Path(__file__).resolve().parent.parent

SLEEPER = 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'


class Squish:
    """A daemon under test and the CLI pointed at it."""

    def __init__(self, process: subprocess.Popen[bytes], sock: Path) -> None:
        self.process = process
        self.sock = sock

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "squish", "--socket", str(self.sock), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def rows(self) -> dict[str, JSONObject]:
        with Client(self.sock) as client:
            return {status["name"]: status for status in client.containers()}

    def running(self) -> dict[str, str]:
        """Running containers by name: their ids."""
        return {
            name: str(row["id"]) for name, row in self.rows().items() if row["phase"] == "running"
        }

    def until(self, check: Callable[[dict[str, str]], bool], timeout: float = 20) -> dict[str, str]:
        """The running containers, once ``check`` accepts them."""
        return eventually(lambda: r if check(r := self.running()) else None, timeout)

    def source(self) -> JSONObject:
        with Client(self.sock) as client:
            (source,) = [s for s in client.sources() if s["kind"] == "git"]
        return source


@pytest.fixture
def start(tmp_path: Path, rootless: None) -> Iterator[Callable[..., Squish]]:
    processes: list[subprocess.Popen[bytes]] = []

    def launch(*extra: str, name: str = "d", **env: str) -> Squish:
        process = daemon(tmp_path, name, *extra, state=tmp_path / f"state-{name}", **env)
        processes.append(process)
        sock = tmp_path / f"{name}.sock"
        wait_for_socket(sock, process)
        return Squish(process, sock)

    yield launch
    for process in processes:
        process.terminate()
        process.communicate(timeout=30)


def test_the_daemon_follows_the_repository(
    remote: Remote, start: Callable[..., Squish], tmp_path: Path
) -> None:
    remote.write("apps/web.toml", SLEEPER + '[env]\nVERSION = "1"\n')
    remote.write("apps/api.toml", SLEEPER)
    remote.write("apps/README", "squishfiles live here\n")
    first = remote.push("two apps")
    squish = start("--git", remote.url, "--git-path", "apps", "--sync-interval", "1")

    # push -> running within the interval
    ids = squish.until(lambda r: set(r) == {"web", "api"})
    assert squish.source()["applied_revision"] == first

    # edit -> `squish sync` applies it at once: web replaced, api untouched
    remote.write("apps/web.toml", SLEEPER + '[env]\nVERSION = "2"\n')
    second = remote.push("web v2")
    synced = squish.cli("sync")
    assert synced.returncode == 0, synced.stderr
    assert f"applied {second[:12]}" in synced.stdout
    replaced = squish.until(lambda r: r.get("web") not in (None, ids["web"]), 5)
    assert replaced["api"] == ids["api"]

    # delete -> stopped
    remote.remove("apps/api.toml")
    remote.push("no api")
    assert squish.cli("sync").returncode == 0
    squish.until(lambda r: set(r) == {"web"}, 5)

    # a broken commit -> the last good web keeps running, the error is shown
    remote.write("apps/web.toml", SLEEPER + "[env\n")
    broken = remote.push("broken")
    assert squish.cli("sync").returncode == 0
    row = eventually(lambda: r if (r := squish.rows()["web"]).get("manifest_error") else None, 5)
    assert row["phase"] == "running" and row["id"] == replaced["web"]
    assert row["manifest_error"].startswith(f"apps/web.toml@{broken[:12]}:5: invalid TOML")
    assert squish.source()["applied_revision"] == broken

    # force-push to an older commit -> that state again
    git(remote.work, "reset", "-q", "--hard", first)
    git(remote.work, "push", "-q", "--force", "origin", "HEAD:main")
    assert squish.cli("sync").returncode == 0
    back = squish.until(lambda r: set(r) == {"web", "api"}, 5)
    assert back["web"] != replaced["web"]  # VERSION 1 again: a new container
    assert squish.source()["applied_revision"] == first

    # the remote is gone -> the sync fails, nothing stops, ps -a says why
    shutil.move(remote.bare, tmp_path / "elsewhere.git")
    failed = squish.cli("sync")
    assert failed.returncode == 1 and "ERROR:" in failed.stdout
    time.sleep(1.5)  # a periodic sync fails too
    assert squish.running() == back
    ps = squish.cli("ps", "-a")
    assert "source git (" in ps.stderr and "ERROR:" in ps.stderr
    assert squish.source()["applied_revision"] == first


def test_the_prune_guard_holds_a_commit_that_empties_the_path(
    remote: Remote, start: Callable[..., Squish]
) -> None:
    for name in ("a", "b", "c"):
        remote.write(f"{name}.toml", SLEEPER)
    good = remote.push("three")
    squish = start("--git", remote.url, "--sync-interval", "0.5")
    ids = squish.until(lambda r: len(r) == 3)

    for name in ("a", "b", "c"):
        remote.remove(f"{name}.toml")
    empty = remote.push("oops: everything deleted")
    held = squish.cli("sync")

    assert held.returncode == 1
    assert "HELD: the prune guard holds it: it would stop 3 of the 3 running" in held.stdout
    assert "--allow-prune-all" in held.stdout
    source = squish.source()
    assert (source["applied_revision"], source["attempted_revision"]) == (good, empty)
    time.sleep(1.2)  # periodic syncs hold it too
    assert squish.running() == ids
    argv = [str(arg) for arg in squish.process.args]  # type: ignore[union-attr]
    text = httpx.get(f"http://{argv[argv.index('--metrics-addr') + 1]}/metrics").text
    assert 'squish_source_syncs_total{result="held",source="git"}' in text

    # Fixing the source lets the next revision through.
    remote.write("a.toml", SLEEPER)
    remote.push("restore a")
    assert squish.cli("sync").returncode == 0
    squish.until(lambda r: set(r) == {"a"}, 5)


def test_an_emptied_directory_is_held_unless_allowed(
    tmp_path: Path, start: Callable[..., Squish]
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name in ("a", "b"):
        (manifests / f"{name}.toml").write_text(SLEEPER)
    squish = start()
    ids = squish.until(lambda r: len(r) == 2)

    for name in ("a", "b"):
        (manifests / f"{name}.toml").unlink()
    sources = eventually(lambda: s if "HELD" in (s := squish.cli("sources")).stdout else None)

    assert "would stop 2 of the 2 running containers (a, b)" in sources.stdout
    assert squish.running() == ids
    (manifests / "c.toml").write_text(SLEEPER)  # still held: a and b would stop
    time.sleep(1)
    assert squish.running() == ids

    # The same with the guard off: they stop.
    squish.process.terminate()
    squish.process.communicate(timeout=30)
    (manifests / "c.toml").unlink()
    unguarded = start("--allow-prune-all", name="e")
    for name in ("a", "b"):
        (manifests / f"{name}.toml").write_text(SLEEPER)
    unguarded.until(lambda r: len(r) == 2)
    for name in ("a", "b"):
        (manifests / f"{name}.toml").unlink()
    unguarded.until(lambda r: r == {}, 10)


def test_a_signed_webhook_syncs_at_once(
    remote: Remote, start: Callable[..., Squish], tmp_path: Path
) -> None:
    remote.write("web.toml", SLEEPER)
    remote.push("web")
    port = free_port()
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    squish = start(
        "--git",
        remote.url,
        "--sync-interval",
        "300",
        "--webhook-addr",
        f"127.0.0.1:{port}",
        "--webhook-secret-file",
        str(secret),
    )
    squish.until(lambda r: "web" in r)
    remote.write("api.toml", SLEEPER)
    pushed = remote.push("api")
    body = b'{"ref": "refs/heads/main"}'
    url = f"http://127.0.0.1:{port}/v1/webhook"

    unsigned = httpx.post(url, content=body)
    wrong = httpx.post(url, content=body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert (unsigned.status_code, wrong.status_code) == (401, 401)
    time.sleep(0.5)
    assert squish.source()["applied_revision"] != pushed

    signature = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    signed = httpx.post(url, content=body, headers={"X-Hub-Signature-256": f"sha256={signature}"})

    assert signed.status_code == 202 and signed.json() == {"syncing": ["git"]}
    squish.until(lambda r: set(r) == {"web", "api"}, 10)
    assert squish.source()["applied_revision"] == pushed


def test_a_dependency_in_git_orders_a_container_of_the_directory(
    remote: Remote, start: Callable[..., Squish], tmp_path: Path
) -> None:
    # [depends_on] names containers of the node, from whichever source.
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    (manifests / "web.toml").write_text(SLEEPER + '[depends_on]\ndb = "healthy"\n')
    squish = start("--git", remote.url, "--git-path", "apps", "--sync-interval", "1")
    row = eventually(lambda: r if (r := squish.rows().get("web", {})).get("phase") else None, 10)
    assert row["phase"] == "waiting"
    assert row["reason"] == "waiting for db to be healthy: no squishfile names it"
    remote.write(
        "apps/db.toml",
        SLEEPER + '[health]\ncommand = ["test", "-e", "/tmp/ready"]\ninterval = "100ms"\n',
    )
    remote.push("db")
    assert squish.cli("sync").returncode == 0
    squish.until(lambda r: "db" in r, 10)
    assert squish.rows()["web"]["reason"].endswith("it is starting")
    done = squish.cli("exec", "db", "touch", "/tmp/ready")
    assert done.returncode == 0, done.stderr
    squish.until(lambda r: set(r) == {"db", "web"}, 10)
    # A cycle across the two sources is an error of both files.
    remote.write(
        "apps/db.toml",
        SLEEPER + '[health]\ncommand = ["true"]\n[depends_on]\nweb = "started"\n',
    )
    remote.push("db waits for web")
    assert squish.cli("sync").returncode == 0
    rows = eventually(lambda: r if (r := squish.rows())["web"].get("manifest_error") else None, 10)
    assert "dependency cycle: web -> db -> web" in rows["web"]["manifest_error"]
    assert "dependency cycle: db -> web -> db" in rows["db"]["manifest_error"]
    assert rows["db"]["manifest_error"].startswith("apps/db.toml@")


def test_a_git_squishfile_mounts_a_host_path_the_node_allows(
    remote: Remote, start: Callable[..., Squish], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "greeting").write_text("from the host\n")
    writer = (
        'network = "none"\n[run]\ncommand = "/bin/sh"\n'
        'args = ["-c", "cat /srv/greeting > /srv/seen; exec sleep 1000"]\n'
        f'[layers]\nsrv = {{ path = "{shared}", target = "/srv", rw = true }}\n'
    )
    remote.write("apps/writer.toml", writer)
    remote.push("a host path")
    refused = start("--git", remote.url, "--git-path", "apps", name="refused")
    row = eventually(
        lambda: r if (r := refused.rows().get("writer", {})).get("manifest_error") else None, 10
    )
    assert "--allow-host-path DIR" in row["manifest_error"]
    allowed = start(
        "--git",
        remote.url,
        "--git-path",
        "apps",
        "--allow-host-path",
        str(tmp_path),
        name="allowed",
    )
    allowed.until(lambda r: "writer" in r, 10)
    eventually(lambda: (shared / "seen").exists() or None, 10)
    assert (shared / "seen").read_text() == "from the host\n"


def test_a_git_squishfile_may_use_a_named_volume(
    remote: Remote, start: Callable[..., Squish], tmp_path: Path
) -> None:
    remote.write(
        "apps/keeper.toml",
        SLEEPER.replace('args = ["1000"]', 'args = ["1001"]') + '[volumes]\nkept = "/data"\n',
    )
    remote.push("a volume")
    squish = start("--git", remote.url, "--git-path", "apps", "--sync-interval", "1")
    squish.until(lambda r: "keeper" in r, 10)
    done = squish.cli("exec", "keeper", "sh", "-c", "echo from-git > /data/note")
    assert done.returncode == 0, done.stderr
    listed = squish.cli("volume", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    (volume,) = json.loads(listed.stdout)
    assert volume["name"] == "kept" and volume["containers"] == ["keeper"]
    assert (Path(volume["path"]) / "note").read_text() == "from-git\n"
