"""Node secrets: the store, the reconciler waiting for and replacing on them, and the runtime.

A value must never show anywhere but in the container's /run/secrets: each
test that has one greps what it can see for it. The e2e suite does the same
through the ``squish`` command and the daemon's log.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import anyio
import pytest

from squish.errors import LayerError, ManifestError, RuntimeFailure, SecretNotFound
from squish.layers.secrets import MAX_SECRET_BYTES, Secrets
from squish.model.host import load_squishfile
from squish.runtime import ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime
from tests.control_plane import Plane, real_plane, running, squishfile, until
from tests.test_runtime import run_to_exit

pytestmark = pytest.mark.anyio

VALUE = b"correct-horse-battery-staple-7731"


def test_the_store_keeps_values_private_and_versions_them(tmp_path: Path) -> None:
    secrets = Secrets(tmp_path / "secrets")
    made = secrets.create("pg", VALUE)
    assert made.path.read_bytes() == VALUE
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    again = secrets.create("pg", b"another")
    assert again.version != made.version and secrets.version("pg") == again.version
    assert [s.name for s in secrets.list()] == ["pg"]
    with pytest.raises(LayerError) as caught:
        secrets.create("big", VALUE * (MAX_SECRET_BYTES // len(VALUE) + 1))
    assert "at most 524288" in str(caught.value) and VALUE.decode() not in str(caught.value)
    secrets.remove("pg")
    assert secrets.version("pg") is None
    with pytest.raises(SecretNotFound, match="squish secret create pg FILE"):
        secrets.get("pg")


def test_secrets_in_the_squishfile(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text('[run]\ncommand = "/bin/app"\n[secrets]\ndb_password = "pg-password"\n')
    loaded = load_squishfile(path)
    assert loaded.secrets == (("db_password", "pg-password"),)
    path.write_text('[run]\ncommand = "/bin/app"\n[secrets]\ndb = { value = "x" }\n')
    with pytest.raises(ManifestError, match=r"secrets\.db: must be a string"):
        load_squishfile(path)


def seen_everywhere(plane: Plane) -> str:
    """Everything the control plane and the metrics show, as text."""
    rows = plane.control.containers()
    details = [plane.control.inspect(str(row["name"])) for row in rows]
    return json.dumps([rows, details], default=str) + plane.metrics.exposition().decode()


async def test_a_container_waits_for_its_secret_and_is_replaced_with_a_new_value(
    tmp_path: Path,
) -> None:
    async def value(data: bytes) -> object:
        yield data

    async with real_plane(tmp_path) as plane:
        with plane.reconciler.subscribe() as events:
            plane.write("web", squishfile() + '[secrets]\ndb = "pg"\n')
            await until(lambda: plane.phase("web") == "waiting")
            row = next(r for r in plane.control.containers() if r["name"] == "web")
            assert row["reason"] == (
                "waiting for secret pg: the node has no such secret (squish secret create pg FILE)"
            )
            made = await plane.control.create_secret("pg", value(VALUE))  # type: ignore[arg-type]
            assert made["containers"] == ["web"] and VALUE.decode() not in json.dumps(made)
            await running(plane, "web")
            first = plane.ids()["web"]
            await plane.control.create_secret("pg", value(b"rotated-value-991"))  # type: ignore[arg-type]
            await until(lambda: plane.ids().get("web") not in (None, first))
            with pytest.raises(RuntimeFailure, match="secret pg is used by web"):
                await plane.control.remove_secret("pg")
            listed = await plane.control.secrets()
            assert [s["name"] for s in listed] == ["pg"]
            said = []
            while True:
                try:
                    said.append(str(events.receive_nowait().to_json()))
                except anyio.WouldBlock:
                    break
        everything = seen_everywhere(plane) + "".join(said) + json.dumps(listed)
        for secret in (VALUE, b"rotated-value-991"):
            assert secret.decode() not in everything


async def test_the_value_is_in_a_tmpfs_of_the_container_only_readable_by_its_user(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    value = Secrets(tmp_path / "secrets").create("pg", VALUE)
    for uid in (0, 1000):
        spec = ContainerSpec(
            name=f"as-{uid}",
            rootfs=base_rootfs,
            command="/bin/sh",
            args=(
                "-c",
                "stat -c '%a %u' /run/secrets/db; cat /run/secrets/db; echo; "
                "grep ' /run/secrets ' /proc/mounts | cut -d' ' -f3,4 | cut -d, -f1; "
                "ls /proc/self/fd | wc -l; rm -f /run/secrets/db 2>/dev/null || echo kept",
            ),
            network=False,
            uid=uid,
            secrets=(("db", value.path),),
        )
        event, log = await run_to_exit(runtime, spec)
        assert event.exit_code == 0, log
        # 0400, the process's user's; a read-only tmpfs; no fd of it left to the command.
        assert log.splitlines() == [f"400 {uid}", VALUE.decode(), "tmpfs ro", "4", "kept"]
    assert not (base_rootfs / "run" / "secrets").exists()
    assert os.stat(value.path).st_mode & 0o077 == 0
