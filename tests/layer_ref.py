"""``Ref``: a stand-in for ``squish.model.squishfile.Layer`` in layer store tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ref:
    """Just the ``LayerRef`` fields, so layer tests need no squishfile."""

    name: str
    version: str | None = None
    path: Path | None = None
    target: str = "/"
    rw: bool = False
    sha256: str | None = None
