"""Placement: which node of a fleet runs which container.

One git repository can drive many hosts, each running its own squish daemon.
Every daemon is a :class:`Node`: a name (``--node``, by default the host's
short hostname, ``squish.daemon.main.default_node_name``) and labels (``--label role=web``,
parsed by :meth:`Node.parse`). A squishfile says where it may run in an
optional ``[placement]`` table, read by :mod:`squish.model.squishfile` into a
:class:`Placement`::

    [placement]
    nodes = ["web-*", "db-1"]                 # any glob matches the node name
    labels = { role = "web", zone = "eu-1" }  # every label equals the node's

A node takes a container when both hold; a missing key (or a missing table)
holds everywhere. ``squish.sources.placed.PlacedSource`` applies this to a
source's snapshot.

The rules for names and labels (Kubernetes' label syntax, minus empty
values) live here, so that the squishfile and the daemon's flags accept the
same spellings:

- a node name is letters, digits, ``-``, ``_`` and ``.``, starting with a
  letter or digit, at most 253 characters; matching is case-sensitive;
- a node pattern is a node name that may also use the glob characters
  ``*``, ``?``, ``[``, ``]`` and ``!`` (:func:`fnmatch.fnmatchcase`). A
  space or a comma is refused rather than silently matching nothing;
- a label key is a name of at most 63 characters (letters, digits, ``-``,
  ``_``, ``.``; starting and ending with a letter or digit), optionally after
  a prefix and a ``/`` (``example.com/role``; the prefix follows the same
  rule, at most 253 characters);
- a label value follows the name rule: 1 to 63 characters, no ``/``. Empty
  values are refused: ``--label role=$ROLE`` with an unset variable is a
  mistake, and a label whose value is empty would be one nobody can tell
  apart from a missing label.

Pure: the daemon asks the host its name (``squish.daemon.main.default_node_name``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

from squish.errors import SquishError

__all__ = [
    "Node",
    "Placement",
    "label_key_problem",
    "label_value_problem",
    "node_name_problem",
    "node_pattern_problem",
]

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"(?:(?P<prefix>{_NAME})/)?(?P<name>{_NAME})")
_LABEL_VALUE = re.compile(_NAME)
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NODE_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]+")
_MAX_NAME = 63
_MAX_PREFIX = 253
_MAX_NODE_NAME = 253


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a label key, or None."""
    match = _LABEL_KEY.fullmatch(key)
    if match is None or len(match["name"]) > _MAX_NAME or len(match["prefix"] or "") > _MAX_PREFIX:
        return (
            "label keys are letters, digits, '-', '_' and '.', start and end with a letter "
            "or digit and have at most 63 characters, optionally after a prefix and '/' "
            f"(example.com/role), got {_shown(key)}"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a label value, or None."""
    if not value:
        return "label values must not be empty; give the label a value or leave it out"
    if _LABEL_VALUE.fullmatch(value) is None or len(value) > _MAX_NAME:
        return (
            "label values are letters, digits, '-', '_' and '.', start and end with a "
            f"letter or digit and have at most 63 characters, got {_shown(value)}"
        )
    return None


def node_name_problem(name: str) -> str | None:
    """Why ``name`` is not a node name, or None."""
    if _NODE_NAME.fullmatch(name) is None or len(name) > _MAX_NODE_NAME:
        return (
            "node names are letters, digits, '-', '_' and '.', start with a letter or digit "
            f"and have at most 253 characters, got {_shown(name)}"
        )
    return None


def node_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a node name or glob, or None."""
    if not pattern:
        return 'must not be empty: give a node name or a glob such as "web-*"'
    if "\x00" in pattern:
        return "must not contain a NUL character"
    if _NODE_PATTERN.fullmatch(pattern) is None:
        return (
            "node patterns are node names (letters, digits, '-', '_' and '.') with the glob "
            f"characters '*', '?', '[', ']' and '!'; write one per string, got {_shown(pattern)}"
        )
    return None


def _frozen(labels: Mapping[str, str]) -> Mapping[str, str]:
    return labels if isinstance(labels, MappingProxyType) else MappingProxyType(dict(labels))


def _no_labels() -> Mapping[str, str]:
    return MappingProxyType({})


def _describe_labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels.items())


@dataclass(frozen=True)
class Node:
    """This daemon's place in the fleet: its name and its labels."""

    name: str
    # Read-only; excluded from __hash__ because a mapping is not hashable.
    labels: Mapping[str, str] = field(default_factory=_no_labels, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))

    @classmethod
    def parse(cls, name: str, labels: Sequence[str] = ()) -> Node:
        """A node from the daemon's settings: ``name`` and ``key=value`` strings.

        Raises a one-line :class:`SquishError` for a bad name, a string
        without ``=``, a bad key or value, or a key given twice with
        different values (the same pair twice is harmless).
        """
        if problem := node_name_problem(name):
            raise SquishError(f"node name {_shown(name)}: {problem}")
        parsed: dict[str, str] = {}
        for text in labels:
            key, equals, value = text.partition("=")
            if not equals:
                raise SquishError(f"node label {_shown(text)}: must be KEY=VALUE, e.g. role=web")
            if problem := label_key_problem(key) or label_value_problem(value):
                raise SquishError(f"node label {_shown(text)}: {problem}")
            if parsed.get(key, value) != value:
                raise SquishError(
                    f"node label {_shown(text)}: {key!r} is already set to "
                    f"{parsed[key]!r}; give each label once"
                )
            parsed[key] = value
        return cls(name, parsed)

    def describe(self) -> str:
        """``web-1 (role=web, zone=eu-1)``, for logs and status."""
        return f"{self.name} ({_describe_labels(self.labels)})" if self.labels else self.name


@dataclass(frozen=True)
class Placement:
    """Where a container may run; the default (nothing given) is every node.

    ``nodes``: globs on the node name, any of which must match (none given:
    any name). ``labels``: every one must equal the node's (none given: any
    labels). Both must hold.
    """

    nodes: tuple[str, ...] = ()
    # Read-only; excluded from __hash__ because a mapping is not hashable.
    labels: Mapping[str, str] = field(default_factory=_no_labels, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "labels", _frozen(self.labels))

    @property
    def everywhere(self) -> bool:
        return not self.nodes and not self.labels

    def matches(self, node: Node) -> bool:
        """Whether ``node`` may run the container."""
        if self.nodes and not any(fnmatchcase(node.name, pattern) for pattern in self.nodes):
            return False
        return all(node.labels.get(key) == value for key, value in self.labels.items())

    def describe(self) -> str:
        """``nodes web-*, db-1; labels role=web``, or ``every node``."""
        parts = []
        if self.nodes:
            parts.append(f"nodes {', '.join(self.nodes)}")
        if self.labels:
            parts.append(f"labels {_describe_labels(self.labels)}")
        return "; ".join(parts) or "every node"
