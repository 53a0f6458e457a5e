"""A fleet: three daemons on this machine, three node names, one repository.

Each daemon has its own node name and labels, state directory, socket and
metrics port, and syncs the same bare repository; no daemon talks to
another. Squishfiles say where they run with ``[placement]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from test_gitops import SLEEPER, Squish, start

from squish.cli.client import Client
from tests.conftest import eventually
from tests.git_repo import Remote

__all__ = ["start"]  # a fixture, used here

pytestmark = pytest.mark.usefixtures("git_env")

INTERVAL = 1.0


def placed(nodes: str = "", labels: str = "") -> str:
    table = "[placement]\n"
    if nodes:
        table += f"nodes = {nodes}\n"
    if labels:
        table += f"labels = {labels}\n"
    return SLEEPER + table


@pytest.fixture
def fleet(remote: Remote, start: Callable[..., Squish]) -> Iterator[dict[str, Squish]]:
    remote.write("fleet/a.toml", placed(nodes='["node-1"]'))
    remote.write("fleet/b.toml", placed(nodes='["node-2"]'))
    remote.write("fleet/c.toml", placed(nodes='["node-3"]'))
    remote.write("fleet/web.toml", placed(labels='{ role = "web" }'))
    remote.write("fleet/agent.toml", placed(nodes='["node-*"]'))
    remote.write("fleet/nowhere.toml", placed(nodes='["db-*"]'))
    remote.push("the fleet")
    yield {node: start_node(start, remote, node) for node in ("node-1", "node-2", "node-3")}


def start_node(start: Callable[..., Squish], remote: Remote, node: str) -> Squish:
    """A daemon for ``node`` of the fleet, syncing the repository's ``fleet/``."""
    return start(
        "--git",
        remote.url,
        "--git-path",
        "fleet",
        "--sync-interval",
        str(INTERVAL),
        "--node",
        node,
        "--label",
        f"role={labels_of(node)}",
        name=node,
    )


def labels_of(node: str) -> str:
    return "batch" if node == "node-3" else "web"


def shares(fleet: dict[str, Squish]) -> dict[str, set[str]]:
    return {node: set(squish.running()) for node, squish in fleet.items()}


def test_each_node_runs_its_share_and_follows_moves(
    fleet: dict[str, Squish], remote: Remote
) -> None:
    expected = {
        "node-1": {"a", "web", "agent"},
        "node-2": {"b", "web", "agent"},
        "node-3": {"c", "agent"},
    }
    eventually(lambda: True if shares(fleet) == expected else None)
    for node, squish in fleet.items():
        with Client(squish.sock) as client:
            status = client.status()
        assert (status["node"], status["labels"]) == (node, {"role": labels_of(node)})

    # Move b from node-2 to node-3 in one commit.
    remote.write("fleet/b.toml", placed(nodes='["node-3"]'))
    remote.push("move b to node-3")
    moved = {**expected, "node-2": {"web", "agent"}, "node-3": {"b", "c", "agent"}}
    eventually(lambda: True if shares(fleet) == moved else None, timeout=INTERVAL + 5)


def test_a_stopped_node_catches_up_when_it_restarts(
    fleet: dict[str, Squish], remote: Remote, start: Callable[..., Squish]
) -> None:
    eventually(lambda: True if set(fleet["node-3"].running()) == {"c", "agent"} else None)
    node3 = fleet["node-3"].process
    node3.terminate()
    node3.communicate(timeout=30)

    remote.write("fleet/d.toml", placed(nodes='["node-3"]'))
    remote.remove("fleet/c.toml")
    head = remote.push("c replaced by d, while node-3 is down")
    # The others have it; node-3, being down, does not.
    eventually(lambda: True if fleet["node-1"].source()["applied_revision"] == head else None)

    again = start_node(start, remote, "node-3")
    eventually(lambda: True if set(again.running()) == {"d", "agent"} else None)
    assert again.source()["applied_revision"] == head
