"""The one exception tree of squish.

Every error a user can cause is a ``SquishError`` whose ``str()`` is a single
line they can act on (file, field, what is wrong). Foreign exceptions are
translated where squish meets the outside world (``raise ... from exc``), so
nothing above the adapters ever sees an ``OSError`` or a pydantic error.

    SquishError
    ├── ManifestError      a squishfile cannot be read, parsed or validated
    ├── LayerError         a layer cannot be resolved to a host path
    ├── AmbiguousName      an id prefix that several containers share
    └── RuntimeFailure     the runtime could not start, stop or change a container
        ├── PortInUse      a host port is already bound by someone else
        └── ContainerNotFound
"""


class SquishError(Exception):
    """Base of every error squish reports to a user."""


class ManifestError(SquishError):
    """A squishfile is unreadable, malformed or invalid.

    ``file`` is the squishfile's path, ``field`` the dotted field path
    (``ports[0].host``) or ``None`` for file-level problems, ``line`` the
    1-based line for syntax errors.
    """

    def __init__(
        self, file: str, message: str, *, field: str | None = None, line: int | None = None
    ) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.message = message
        where = file
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")


class LayerError(SquishError):
    """A layer cannot be resolved (missing path, unbuildable base, ...)."""


class RuntimeFailure(SquishError):
    """The runtime failed to start, stop or update a container."""


class PortInUse(RuntimeFailure):
    """A requested host port is already bound on the host."""


class ContainerNotFound(RuntimeFailure):
    """No container with that id is known to the runtime."""


class AmbiguousName(SquishError):
    """An id prefix that several containers share; ``candidates`` are their names."""

    def __init__(self, ref: str, candidates: list[str]) -> None:
        self.candidates = candidates
        super().__init__(
            f"{ref!r} is ambiguous: it begins the ids of {', '.join(candidates)}; "
            "give a longer id prefix or the name"
        )
