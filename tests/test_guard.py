"""The prune guard and webhook signatures, as units."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from squish.daemon.source_admin import verified
from squish.model.host import host_paths
from squish.model.manifest import Manifest
from squish.model.squishfile import parse_squishfile
from squish.sources.directory import DirectorySource
from squish.sources.fake import FakeSource
from squish.sources.guard import GuardedSource, PruneGuard, Running


def manifests(*names: str) -> dict[str, Manifest]:
    found = {}
    for name in names:
        squishfile = parse_squishfile(
            b'[run]\ncommand = "/bin/true"\n',
            file=f"{name}.toml",
            paths=host_paths(Path("/")),
            name=name,
        )
        found[name] = Manifest(name, f"{name}.toml", squishfile)
    return found


def guard(running: set[str], **options: object) -> PruneGuard:
    return PruneGuard(Running(frozenset(running)), **options)  # type: ignore[arg-type]


def test_stopping_every_running_container_is_held() -> None:
    reason = guard({"a", "b", "c"})(manifests("a", "b", "c"), {})

    assert reason is not None
    assert "would stop 3 of the 3 running containers (a, b, c)" in reason


def test_stopping_some_or_one_is_let_through_by_default() -> None:
    check = guard({"a", "b", "c"})

    assert check(manifests("a", "b", "c"), manifests("a")) is None  # 2 of 3
    assert check(manifests("a"), {}) is None  # only one container at all


def test_a_lower_threshold_holds_earlier() -> None:
    check = guard({"a", "b", "c", "d"}, threshold=0.5)

    assert check(manifests("a", "b", "c", "d"), manifests("a", "b", "c")) is None
    assert check(manifests("a", "b", "c", "d"), manifests("a", "b")) is not None


def test_only_running_containers_count_and_disabled_holds_nothing() -> None:
    assert guard(set())(manifests("a", "b"), {}) is None
    assert guard({"x", "y"})(manifests("a", "b"), {}) is None
    assert guard({"a", "b"}, enabled=False)(manifests("a", "b"), {}) is None


def test_placed_elsewhere_counts_as_stopping() -> None:
    check = guard({"a", "b"}, wanted=lambda manifest: manifest.name != "b")

    assert check(manifests("a", "b"), manifests("a", "b")) is None  # b was never wanted here
    assert guard({"a", "b"})(manifests("a", "b"), manifests()) is not None


def test_a_guarded_source_keeps_its_last_snapshot_while_held() -> None:
    inner = FakeSource(*manifests("a", "b").values())
    source = GuardedSource(inner, guard({"a", "b"}), name="manifests", url="/srv/manifests")
    assert set(source.snapshot()) == {"a", "b"}

    inner.set()
    assert set(source.snapshot()) == {"a", "b"}
    held = source.status().held
    assert held is not None and "would stop 2 of the 2" in held

    inner.set(*manifests("a").values())
    assert set(source.snapshot()) == {"a"}
    assert source.status().held is None


def test_a_guarded_source_keeps_its_last_snapshot_while_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[run]\ncommand = "/bin/true"\n')
    source = GuardedSource(
        DirectorySource(tmp_path), guard(set()), name="manifests", url=str(tmp_path)
    )
    assert set(source.snapshot()) == {"a"}

    tmp_path.chmod(0)
    try:
        assert set(source.snapshot()) == {"a"}
        error = source.status().error
        assert error is not None and "cannot read the directory: Permission denied" in error
    finally:
        tmp_path.chmod(0o755)
    (tmp_path / "b.toml").write_text('[run]\ncommand = "/bin/true"\n')
    assert set(source.snapshot()) == {"a", "b"}
    assert source.status().error is None


BODY = b'{"ref":"refs/heads/main"}'
SIGNATURE = hmac.new(b"secret", BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"x-hub-signature-256": f"sha256={SIGNATURE}"}, True),
        ({"x-hub-signature-256": f"sha256={SIGNATURE.upper()}"}, True),
        ({"x-gitea-signature": SIGNATURE}, True),
        ({"x-gitlab-token": "secret"}, True),
        ({"x-hub-signature-256": "sha256=" + "0" * 64}, False),
        ({"x-hub-signature-256": SIGNATURE}, False),  # no sha256= prefix
        ({"x-gitlab-token": "guess"}, False),
        ({}, False),
    ],
)
def test_webhook_signatures(headers: dict[str, str], ok: bool) -> None:
    assert verified(b"secret", BODY, headers) is ok
    if ok:
        assert not verified(b"secret", BODY + b" ", headers) or "x-gitlab-token" in headers
