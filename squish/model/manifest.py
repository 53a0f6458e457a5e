"""A manifest: one squishfile as a source sees it, parsed or with why it is not.

Sources (``squish.sources``) make them; the planner and the reconciler
(``squish.reconcile``) read them. A manifest whose squishfile is invalid
still names its container, so that what runs under that name keeps running
and the error is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from squish.errors import ManifestError
from squish.model.squishfile import Squishfile


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
