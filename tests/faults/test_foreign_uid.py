"""Fault: another local user connects to the API socket, its mode loosened.

The socket's mode (0600) must not be the only gate: through a socket made
world-writable, another user could create a container running as the
daemon's user, with its home mounted. Every connection's peer uid
(SO_PEERCRED) is checked; another one gets 403, a one-line JSON error, and
the daemon logs one warning per connection.

For real, the other user is one of squish-test's subordinate uids
(/etc/subuid): ``unshare --map-users`` (through the setuid newuidmap of the
uidmap package) maps it into a user namespace, and ``setpriv`` becomes it
there, so the kernel sees a client of another uid, 100000 up, exactly as it
would see another account's. (A plain user namespace would not do: a
client in one mapped to our own uid still connects as our uid.)
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from squish.cli.client import Client
from squish.daemon.api import make_app, serve
from squish.daemon.api.server import peer_refusal
from tests.conftest import free_port
from tests.control_plane import real_plane
from tests.test_daemon import REPO, wait_for_socket

pytestmark = pytest.mark.anyio

# The client of the other user: a status and a create, each on its own
# connection, the replies printed as JSON strings, one a line.
_FOREIGN = """
import json, socket, sys
body = json.dumps({"name": "intruder", "manifest": "[run]\\ncommand = '/bin/true'\\n"})
for request in (
    "GET /v1/status HTTP/1.1\\r\\nHost: squish\\r\\nConnection: close\\r\\n\\r\\n",
    "POST /v1/containers HTTP/1.1\\r\\nHost: squish\\r\\nConnection: close\\r\\n"
    f"Content-Type: application/json\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n{body}",
):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(sys.argv[1])
        client.sendall(request.encode())
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    print(json.dumps(reply.decode()))
"""


def test_the_check_lets_only_the_owner_in() -> None:
    assert peer_refusal(1001, 1001) is None
    reason = peer_refusal(100000, 1001)
    assert (
        reason
        == "uid 100000 may not use this squish daemon: only the user running it (uid 1001) may"
    )


async def test_a_foreign_peer_gets_403_on_every_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole path in-process, on a real socket: the daemon taken to run as another uid."""
    owner = os.getuid() + 1
    refused = tmp_path / "refused.sock"
    served = tmp_path / "served.sock"
    with anyio.fail_after(20):
        async with real_plane(tmp_path) as plane, anyio.create_task_group() as tg:
            app = make_app(plane.control)
            await tg.start(partial(serve, app, refused, owner=owner))
            await tg.start(partial(serve, app, served))
            with caplog.at_level(logging.WARNING, logger="squish.daemon.api"):
                async with client(refused) as api:
                    replies = [await api.get("/v1/status") for _ in range(3)]
                    manifest = "[run]\ncommand = '/bin/true'\n"
                    body = {"name": "intruder", "manifest": manifest}
                    replies.append(await api.post("/v1/containers", json=body))
                async with client(served) as api:
                    assert (await api.get("/v1/status")).status_code == 200
            tg.cancel_scope.cancel()
        assert not (plane.manifests / "intruder.toml").exists()
    for reply in replies:
        assert reply.status_code == 403
        assert reply.json() == {"error": peer_refusal(os.getuid(), owner)}
        assert b"\n" not in reply.content
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one connection, kept alive: one warning
    assert warnings[0].startswith(
        f"refused a connection on {refused} from pid {os.getpid()}: uid {os.getuid()} may not"
    )


def client(path: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    return httpx.AsyncClient(transport=transport, base_url="http://squish")


@pytest.fixture
def open_socket_dir() -> Iterator[Path]:
    """A directory any user may pass through, for a socket any user may open."""
    where = Path(tempfile.mkdtemp(prefix="squish-foreign-", dir="/tmp"))
    where.chmod(0o711)
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_another_user_is_refused_by_a_real_daemon(
    tmp_path: Path, open_socket_dir: Path, rootless: None
) -> None:
    sock = open_socket_dir / "d.sock"
    manifests = tmp_path / "manifests"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "squish",
            "daemon",
            "--manifests",
            str(manifests),
            "--state-dir",
            str(tmp_path / "state"),
            "--socket",
            str(sock),
            "--metrics-addr",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for_socket(sock, process)
        sock.chmod(0o666)  # the fault: the mode loosened by hand
        first_subuid = subordinate_uid()
        foreign = subprocess.run(
            [
                "unshare",
                "--map-root-user",
                f"--map-users={first_subuid},1,1",
                f"--map-groups={subordinate_uid('/etc/subgid')},1,1",
                "setpriv",
                "--reuid=1",
                "--regid=1",
                "--clear-groups",
                "/usr/bin/python3",
                "-I",
                "-c",
                _FOREIGN,
                str(sock),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert foreign.returncode == 0, foreign.stderr
        replies = [json.loads(line) for line in foreign.stdout.splitlines()]
        assert len(replies) == 2
        reason = peer_refusal(first_subuid, os.getuid())
        assert reason is not None
        for reply in replies:
            head, _, body = reply.partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 403 "), reply
            assert json.loads(body) == {"error": reason}
        assert not (manifests / "intruder.toml").exists()
        # Our own user is still served, through the same socket.
        with Client(sock) as own:
            assert own.status()["pid"] == process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    warnings = [line for line in err.decode().splitlines() if "refused a connection" in line]
    assert len(warnings) == 2, err.decode()  # one per connection
    assert all(f"uid {first_subuid} may not" in line for line in warnings)


def subordinate_uid(table: str = "/etc/subuid") -> int:
    """The first subordinate id of the user running the tests (scripts/test's useradd made it)."""
    name = pwd.getpwuid(os.getuid()).pw_name
    for line in Path(table).read_text().splitlines():
        user, start, _ = line.split(":")
        if user in (name, str(os.getuid())):
            return int(start)
    raise AssertionError(f"{name} has no subordinate ids in {table}: useradd gives them")
