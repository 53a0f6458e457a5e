"""A squishfile on this host: its file read, its layer paths looked up on disk.

The parser (``squish.model.squishfile``) touches no filesystem; this module
is the host's side of it, for the directory source, ``squish validate``,
``squish create`` and ``squish run``: :func:`host_paths` is the path lookup
of a directory (relative paths from it, symlinks followed, the path must
exist), :func:`read_squishfile` reads a file (at most
``MAX_SQUISHFILE_BYTES``, never more), :func:`load_squishfile` reads one and
parses it with the lookup of the file's directory.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from squish.errors import ManifestError
from squish.model.squishfile import (
    MAX_SQUISHFILE_BYTES,
    HostPath,
    LayerPathError,
    PathLookup,
    Squishfile,
    parse_squishfile,
    too_big,
)


def host_paths(base_dir: Path) -> PathLookup:
    """Layer paths on this host: relative ones from ``base_dir``, resolved, existing.

    The symlinks on a path are followed now (``app = "./current"`` is the
    release ``current`` points to), and the resolved path is what is mounted
    from then on (see ``squish.layers.path``).
    """

    def lookup(raw_path: str, field: str) -> HostPath:
        del field  # every error here is about the path itself
        try:
            resolved = (base_dir / raw_path).resolve()
            exists = resolved.exists()
        except (OSError, RuntimeError) as exc:
            # RuntimeError: a symlink loop (Python < 3.13).
            raise LayerPathError(f"cannot access {raw_path!r}: {exc}") from exc
        if not exists:
            raise LayerPathError(
                f"{raw_path!r} does not exist (resolved to {resolved}; relative paths start "
                "at the squishfile's directory)"
            )
        return HostPath(resolved, resolved.name)

    return lookup


def read_squishfile(path: Path | str) -> bytes:
    """The bytes of the squishfile at ``path``; a file over ``MAX_SQUISHFILE_BYTES`` is refused.

    Reads one byte more than allowed, never the whole of a huge file.
    """
    file = str(path)
    try:
        with Path(path).open("rb") as opened:
            data = opened.read(MAX_SQUISHFILE_BYTES + 1)
            size = os.fstat(opened.fileno()).st_size
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ManifestError(file, f"cannot read the file: {reason}") from exc
    if len(data) > MAX_SQUISHFILE_BYTES:
        raise too_big(file, max(size, len(data)))
    return data


def load_squishfile(path: Path | str) -> Squishfile:
    """Read, parse and validate the squishfile at ``path``.

    The container is named after the file's stem; relative layer paths resolve
    against the file's directory.
    """
    source = Path(path)
    data = read_squishfile(path)
    squishfile = parse_squishfile(
        data, file=str(path), name=source.stem, paths=host_paths(source.parent)
    )
    return replace(squishfile, file=source)
