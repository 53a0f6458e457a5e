"""The named networks' bookkeeping (squish.runtime.networks.NetworkBook), pure.

The real runtime and the fake share it; tests/test_networks.py checks that
the two list the same networks. Here: addresses, subnets, hosts files and
sizes, and the limits a user meets.
"""

from __future__ import annotations

import pytest

from squish.errors import RuntimeFailure
from squish.runtime.networks import NetworkBook, mac_of


def test_addresses_are_the_lowest_free_ones_of_each_networks_subnet() -> None:
    book = NetworkBook()
    assert book.reserve("id-a", "a", ["front"]) == {"front": "10.89.0.2"}
    assert book.reserve("id-b", "b", ["front", "back"]) == {
        "front": "10.89.0.3",
        "back": "10.89.1.2",
    }
    book.release("id-a")
    assert book.reserve("id-c", "c", ["front"]) == {"front": "10.89.0.2"}
    assert {n.name: n.subnet for n in book.networks()} == {
        "back": "10.89.1.0/24",
        "front": "10.89.0.0/24",
    }
    assert dict(book.sizes) == {"front": 2, "back": 1}


def test_a_network_goes_with_its_last_member_and_its_subnet_waits_for_its_bridge() -> None:
    book = NetworkBook()
    book.reserve("id-a", "a", ["one"])
    book.reserve("id-b", "b", ["two"])
    _, emptied = book.release("id-a")
    assert [n.name for n in emptied] == ["one"]
    assert [n.name for n in book.networks()] == ["two"]
    book.retiring.add(emptied[0].index)  # its bridge is being taken down
    assert book.reserve("id-c", "c", ["three"]) == {"three": "10.89.2.2"}
    book.retiring.clear()
    assert book.reserve("id-d", "d", ["four"]) == {"four": "10.89.0.2"}


def test_a_full_network_is_a_clear_error_and_reserves_nothing() -> None:
    book = NetworkBook()
    for index in range(253):  # .2 to .254; .1 is the gateway
        book.reserve(f"id-{index}", f"c{index}", ["big"])
    with pytest.raises(
        RuntimeFailure, match=r"network big: no free address left in 10\.89\.0\.0/24"
    ):
        book.reserve("id-x", "x", ["small", "big"])
    # Nothing of the failed reservation is left: not on "small", not a member.
    assert [n.name for n in book.networks()] == ["big"]
    assert not book.has("id-x")


def test_the_hosts_file_lists_every_member_of_those_networks_once_by_address() -> None:
    book = NetworkBook()
    for index in range(12):
        book.reserve(f"id-{index}", f"c{index}", ["n"])
    book.reserve("id-both", "both", ["n", "m"])
    book.reserve("id-m", "m-only", ["m"])
    text = book.hosts(("m", "n"))
    lines = text.splitlines()
    assert lines[:2] == ["127.0.0.1\tlocalhost", "::1\tlocalhost"]
    # Network by network (m, then n), each by address (not as text: .11 before .12).
    assert lines[2:6] == ["10.89.1.2\tboth", "10.89.1.3\tm-only", "10.89.0.2\tc0", "10.89.0.3\tc1"]
    assert lines.index("10.89.0.11\tc9") < lines.index("10.89.0.12\tc10")
    assert lines[-1] == "10.89.0.14\tboth"  # on both: both of its addresses
    assert "m-only" not in book.hosts(("n",))


def test_a_mac_address_is_derived_from_the_ip_address() -> None:
    assert mac_of("10.89.0.2") == "02:73:0a:59:00:02"
    assert mac_of("10.89.255.254") == "02:73:0a:59:ff:fe"
