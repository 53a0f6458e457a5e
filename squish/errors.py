"""The one exception tree of squish.

Every error a user can cause is a ``SquishError`` whose ``str()`` is a single
line they can act on (file, field, what is wrong). Foreign exceptions are
translated where squish meets the outside world (``raise ... from exc``), so
nothing above the adapters ever sees an ``OSError`` or a pydantic error.

    SquishError
    ├── ManifestError      a squishfile cannot be read, parsed or validated
    ├── LayerError         a layer cannot be resolved to a host path
    │   └── ArchiveRefused an archive's content is refused: unsafe, corrupt, cut short, too big
    ├── AmbiguousName      an id prefix that several containers share
    ├── NetworkNotFound, VolumeNotFound, SecretNotFound
    ├── SourceError        a source cannot do what was asked (no git source to sync)
    │   └── NoSuchSource
    └── RuntimeFailure     the runtime could not start, stop or change a container
        ├── PortInUse      a host port is already bound by someone else
        └── ContainerNotFound

A ``ManifestError`` carries every problem of its file (``ManifestProblem``),
not only the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class SquishError(Exception):
    """Base of every error squish reports to a user."""


class ManifestProblem(NamedTuple):
    """One thing wrong in a squishfile.

    ``field`` is the dotted field path (``ports[0].host``) or ``None`` for the
    file as a whole, ``line`` the 1-based line it is written on, when known.
    A ``NamedTuple`` rather than a dataclass: every ``squish`` command loads
    this module, and ``dataclasses`` (with ``inspect``) would cost it 4 ms.
    """

    message: str
    field: str | None = None
    line: int | None = None

    def describe(self, file: str) -> str:
        """``FILE:LINE: field: message``, leaving out what is not known."""
        where = file if self.line is None else f"{file}:{self.line}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


class ManifestError(SquishError):
    """A squishfile is unreadable, malformed or invalid.

    ``errors`` lists every problem found, in the order of the file (``squish
    validate`` prints one line each); ``file`` is the squishfile's path.
    ``message``, ``field`` and ``line`` are those of the first problem, and
    ``str()`` is one line for places that show one (``ps``, events, the API):
    the first problem, and how many more there are.
    """

    def __init__(
        self,
        file: str,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        more: Sequence[ManifestProblem] = (),
    ) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.message = message
        self.errors = (ManifestProblem(message, field, line), *more)
        summary = self.errors[0].describe(file)
        if more:
            summary += f" (and {len(more)} more error{'s' if len(more) > 1 else ''})"
        super().__init__(summary)

    @classmethod
    def of(cls, file: str, problems: Sequence[ManifestProblem]) -> ManifestError:
        """The error for ``problems`` (at least one) in ``file``."""
        first, *more = problems
        return cls(file, first.message, field=first.field, line=first.line, more=more)


class LayerError(SquishError):
    """A layer cannot be resolved (missing path, unbuildable base, ...)."""


class ArchiveRefused(LayerError):
    """An archive's own bytes are refused: an unsafe member, a corrupt or cut-short
    stream, more than the limits allow.

    Unlike a ``LayerError`` of the host (a full disk, an unreadable file), the
    same bytes are refused again every time, so a resolver may remember it.
    """


class RuntimeFailure(SquishError):
    """The runtime failed to start, stop or update a container."""


class PortInUse(RuntimeFailure):
    """A requested host port is already bound on the host."""


class ContainerNotFound(RuntimeFailure):
    """No container with that id is known to the runtime."""


class NetworkNotFound(SquishError):
    """No squishfile names that network, and no container is on it."""


class VolumeNotFound(SquishError):
    """The node has no volume of that name."""


class SecretNotFound(SquishError):
    """The node has no secret of that name."""


class AmbiguousName(SquishError):
    """An id prefix that several containers share; ``candidates`` are their names."""

    def __init__(self, ref: str, candidates: list[str]) -> None:
        self.candidates = candidates
        super().__init__(
            f"{ref!r} is ambiguous: it begins the ids of {', '.join(candidates)}; "
            "give a longer id prefix or the name"
        )


class SourceError(SquishError):
    """A source cannot do what was asked of it (a sync with no git source)."""


class NoSuchSource(SourceError):
    """No source has that name."""
