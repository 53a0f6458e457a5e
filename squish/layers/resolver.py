"""The one-method interface every kind of layer is resolved through.

``squish.layers.store.LayerStore`` keeps one ``Resolver`` per ``LayerKind``
and picks it per layer: ``PathResolver`` (local files and directories),
``ArchiveResolver`` (archives unpacked into ``LayerCache``), ``BusyboxBase``
(the built-in base), ``AlpineResolver`` (an Alpine mirror) and
``RegistryResolver`` (a layer registry), the last three materialising into
``LayerCache``.
``RecordingResolver`` is the in-package fake for tests of code above the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from squish.errors import LayerError
from squish.layers.model import LayerRef


class Resolver(Protocol):
    """Turns one layer into a host path, fetching or building it if needed."""

    def resolve(self, layer: LayerRef) -> Path:
        """Return the absolute host path of ``layer``.

        Raises ``LayerError`` whose message says what is wrong but not which
        layer: the store prefixes the label (``layer 'conf': ...``).
        """
        ...


class RecordingResolver:
    """A resolver that answers every layer with one path and remembers who asked.

    With ``error`` set it raises ``LayerError(error)`` instead, after recording.
    """

    def __init__(self, path: Path, *, error: str | None = None) -> None:
        self.path = path
        self.error = error
        self.resolved: list[str] = []

    def resolve(self, layer: LayerRef) -> Path:
        self.resolved.append(layer.name)
        if self.error is not None:
            raise LayerError(self.error)
        return self.path
