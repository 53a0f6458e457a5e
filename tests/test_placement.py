"""Placement: the node a daemon is, which squishfiles it runs, and PlacedSource.

Table-driven for the rules (node flags, globs, labels); PlacedSource is
checked over a fake source whose snapshot the test sets.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from squish.daemon.main import default_node_name
from squish.errors import ManifestError, SquishError
from squish.model.host import host_paths
from squish.model.manifest import Manifest
from squish.model.placement import Node, Placement
from squish.model.squishfile import Squishfile, parse_squishfile
from squish.sources.fake import FakeSource
from squish.sources.placed import PlacedSource, wanted_on
from tests.source_changes import watching

# -- Node.parse ------------------------------------------------------------------


def test_node_parse_reads_key_value_labels() -> None:
    node = Node.parse("web-1", ["role=web", "zone=eu-1", "example.com/tier=front", "role=web"])

    assert node.name == "web-1"
    assert dict(node.labels) == {"role": "web", "zone": "eu-1", "example.com/tier": "front"}
    assert node.describe() == "web-1 (role=web, zone=eu-1, example.com/tier=front)"
    with pytest.raises(TypeError):
        node.labels["role"] = "db"  # type: ignore[index]


def test_a_node_without_labels() -> None:
    node = Node.parse("db-1", [])

    assert node == Node("db-1")
    assert dict(node.labels) == {}
    assert node.describe() == "db-1"


BAD_NODES = [
    # (id, name, labels, words in the message)
    ("empty-name", "", [], "node name ''"),
    ("name-space", "web 1", [], "node names are letters"),
    ("name-slash", "a/b", [], "node names are letters"),
    ("name-leading-dash", "-web", [], "start with a letter or digit"),
    ("no-equals", "web-1", ["role"], "node label 'role': must be KEY=VALUE"),
    ("empty-key", "web-1", ["=web"], "label keys are letters"),
    ("bad-key", "web-1", ["my role=web"], "node label 'my role=web': label keys"),
    ("key-trailing-dot", "web-1", ["role.=web"], "label keys are letters"),
    ("empty-value", "web-1", ["role="], "label values must not be empty"),
    ("value-with-equals", "web-1", ["role=a=b"], "label values are letters"),
    ("value-too-long", "web-1", ["role=" + "v" * 64], "at most 63 characters"),
    ("conflict", "web-1", ["role=web", "role=db"], "'role' is already set to 'web'"),
]


@pytest.mark.parametrize(
    ("name", "labels", "words"),
    [pytest.param(name, labels, words, id=case) for case, name, labels, words in BAD_NODES],
)
def test_node_parse_errors_are_one_line(name: str, labels: list[str], words: str) -> None:
    with pytest.raises(SquishError) as caught:
        Node.parse(name, labels)

    message = str(caught.value)
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("hostname", "name"),
    [("web-1.eu.example.com", "web-1"), ("db-1", "db-1"), ("box.", "box")],
)
def test_the_default_node_name_is_the_short_hostname(
    monkeypatch: pytest.MonkeyPatch, hostname: str, name: str
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: hostname)

    assert default_node_name() == name


# -- Placement.matches ---------------------------------------------------------------

WEB_EU = Node.parse("web-1", ["role=web", "zone=eu-1"])

MATCHES = [
    # (id, placement, node, runs there)
    ("everywhere", Placement(), WEB_EU, True),
    ("everywhere-bare-node", Placement(), Node("x"), True),
    ("exact-name", Placement(("web-1",)), WEB_EU, True),
    ("other-name", Placement(("web-2",)), WEB_EU, False),
    ("glob-star", Placement(("web-*",)), WEB_EU, True),
    ("glob-question", Placement(("web-?",)), WEB_EU, True),
    ("glob-class", Placement(("web-[12]",)), WEB_EU, True),
    ("glob-negated-class", Placement(("web-[!1]",)), WEB_EU, False),
    ("glob-whole-name", Placement(("web",)), WEB_EU, False),
    ("case-sensitive", Placement(("WEB-*",)), WEB_EU, False),
    ("any-pattern", Placement(("db-*", "web-1")), WEB_EU, True),
    ("no-pattern", Placement(("db-*", "cache-*")), WEB_EU, False),
    ("one-label", Placement(labels={"role": "web"}), WEB_EU, True),
    ("every-label", Placement(labels={"role": "web", "zone": "eu-1"}), WEB_EU, True),
    ("label-differs", Placement(labels={"role": "web", "zone": "us-1"}), WEB_EU, False),
    ("label-missing", Placement(labels={"gpu": "yes"}), WEB_EU, False),
    ("label-value-case", Placement(labels={"role": "Web"}), WEB_EU, False),
    ("name-and-labels", Placement(("web-*",), {"role": "web"}), WEB_EU, True),
    ("name-not-labels", Placement(("web-*",), {"role": "db"}), WEB_EU, False),
    ("labels-not-name", Placement(("db-*",), {"role": "web"}), WEB_EU, False),
]


@pytest.mark.parametrize(
    ("placement", "node", "runs"),
    [pytest.param(placement, node, runs, id=case) for case, placement, node, runs in MATCHES],
)
def test_placement_matches(placement: Placement, node: Node, runs: bool) -> None:
    assert placement.matches(node) is runs


def test_placement_from_a_squishfile_matches() -> None:
    squishfile = parse(
        "web",
        '[placement]\nnodes = ["web-*", "db-1"]\nlabels = { role = "web", zone = "eu-1" }\n',
    )

    assert squishfile.placement.matches(WEB_EU)
    assert not squishfile.placement.matches(Node.parse("web-1", ["role=web"]))
    assert not squishfile.placement.matches(Node.parse("db-1", ["role=db", "zone=eu-1"]))
    assert squishfile.placement.describe() == "nodes web-*, db-1; labels role=web, zone=eu-1"
    assert Placement().describe() == "every node"


# -- PlacedSource ----------------------------------------------------------------------


def parse(name: str, placement: str = "") -> Squishfile:
    text = '[run]\ncommand = "/app/server"\n' + placement
    return parse_squishfile(
        text.encode(), file=f"{name}.toml", paths=host_paths(Path("/")), name=name
    )


def manifest(name: str, placement: str = "") -> Manifest:
    return Manifest(name, f"apps/{name}.toml@1a2b3c4d", parse(name, placement))


def invalid(name: str) -> Manifest:
    error = ManifestError(f"apps/{name}.toml@1a2b3c4d", "is bad", field="run.command")
    return Manifest(name, error.file, None, error)


FLEET = [
    manifest("anywhere"),
    manifest("web", '[placement]\nnodes = ["web-*"]\n'),
    manifest("db", '[placement]\nnodes = ["db-*"]\n'),
    manifest("eu-cache", '[placement]\nlabels = { zone = "eu-1" }\n'),
    manifest("us-cache", '[placement]\nlabels = { zone = "us-1" }\n'),
    invalid("broken"),
]


@pytest.mark.parametrize(
    ("node", "runs", "excluded"),
    [
        (WEB_EU, {"anywhere", "web", "eu-cache", "broken"}, ["db", "us-cache"]),
        (
            Node.parse("db-1", ["zone=us-1"]),
            {"anywhere", "db", "us-cache", "broken"},
            ["eu-cache", "web"],
        ),
        (Node("other"), {"anywhere", "broken"}, ["db", "eu-cache", "us-cache", "web"]),
    ],
    ids=["web-eu", "db-us", "other"],
)
def test_each_node_gets_what_is_placed_on_it(
    node: Node, runs: set[str], excluded: list[str]
) -> None:
    inner = FakeSource(*FLEET)
    placed = PlacedSource(inner, node)

    snapshot = placed.snapshot()

    assert set(snapshot) == runs
    assert all(snapshot[name] is inner.manifests[name] for name in runs)
    assert placed.excluded() == excluded


def test_an_invalid_manifest_is_kept_on_every_node() -> None:
    # Its placement is unknown; kept, the reconciler keeps its last good
    # version running and reports the error.
    broken = invalid("broken")
    for node in (WEB_EU, Node("db-1"), Node("other")):
        snapshot = PlacedSource(FakeSource(broken), node).snapshot()
        assert snapshot == {"broken": broken}


def test_excluded_follows_the_latest_snapshot() -> None:
    inner = FakeSource(manifest("web", '[placement]\nnodes = ["web-*"]\n'))
    placed = PlacedSource(inner, Node("db-1"))

    assert placed.excluded() == []  # nothing read yet
    assert dict(placed.snapshot()) == {}
    assert placed.excluded() == ["web"]

    # The placement is edited to take in this node too.
    inner.set(manifest("web", '[placement]\nnodes = ["web-*", "db-*"]\n'))
    assert set(placed.snapshot()) == {"web"}
    assert placed.excluded() == []


def test_a_placement_edit_keeps_the_spec_on_a_node_still_placed() -> None:
    before = PlacedSource(FakeSource(manifest("web", "")), WEB_EU).snapshot()["web"]
    moved = manifest("web", '[placement]\nnodes = ["web-*"]\n')
    after = PlacedSource(FakeSource(moved), WEB_EU).snapshot()["web"]

    assert before.squishfile is not None and after.squishfile is not None
    assert before.squishfile.spec_hash() == after.squishfile.spec_hash()


def test_wanted_on_agrees_with_the_source() -> None:
    wanted = wanted_on(WEB_EU)

    assert [m.name for m in FLEET if wanted(m)] == ["anywhere", "web", "eu-cache", "broken"]


@pytest.mark.anyio
async def test_changes_pass_through() -> None:
    inner = FakeSource(manifest("db", '[placement]\nnodes = ["db-*"]\n'))
    placed = PlacedSource(inner, WEB_EU)

    # Every change is passed on, also one that only touches manifests placed
    # elsewhere: the reconciler re-reads the snapshot and finds nothing to do.
    async with watching(placed) as changes:
        inner.touch()
        inner.touch()
        await changes.next()
        await changes.next()
        inner.finish()
        with anyio.fail_after(5):
            await changes.ended.wait()
