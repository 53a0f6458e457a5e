"""Where desired state comes from.

A source knows a set of squishfiles. The reconciler asks it for a
``snapshot()`` (every manifest it has now, each parsed or with its error)
whenever it reconciles, and waits on ``changes()`` as one of its triggers.
Snapshots, not diffs: a missed change notification costs a little latency,
never correctness, because the next periodic resync reads everything again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from squish.errors import ManifestError
from squish.manifest import Squishfile


@dataclass(frozen=True)
class Manifest:
    """One squishfile as a source sees it: parsed, or why it is not."""

    name: str
    file: str
    squishfile: Squishfile | None
    error: ManifestError | None = None
    # Identity of the files its path layers name (inode, size, mtime): an
    # archive or a file replaced on the host changes what the container
    # would get, without changing the squishfile itself.
    layer_key: str = ""


class Source(Protocol):
    def snapshot(self) -> Mapping[str, Manifest]: ...

    def changes(self) -> AsyncIterator[None]: ...
