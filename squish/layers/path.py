"""The resolver for local path layers: files and directories used as they are.

Chosen by ``squish.layers.store.LayerStore`` for ``LayerKind.PATH`` (a file or
directory bind-mounted at the layer's target) and ``LayerKind.ROOTFS_PATH`` (a
directory used as the base rootfs). Nothing is copied: the runtime binds the
host path read-only (or read-write when the manifest says ``rw``).

``classify`` only sees names, so a tarball named ``app-1.2`` arrives here as
a plain path. A regular file whose content is a tar archive (plain or
compressed, see ``squish.layers.unpack.is_tarball``) is handed to the
archive resolver instead, which unpacks it and returns a directory; zips and
single compressed files are mounted as they are.
"""

from __future__ import annotations

import stat
from pathlib import Path

from squish.errors import LayerError
from squish.layers.archive import content_sha256
from squish.layers.model import LayerRef
from squish.layers.resolver import Resolver
from squish.layers.unpack import is_tarball


class PathResolver:
    """Checks that a layer's host path exists and is something bwrap can bind.

    With ``archives`` set, tarball files are resolved through it instead.
    """

    def __init__(self, *, directory_only: bool = False, archives: Resolver | None = None) -> None:
        self.directory_only = directory_only
        self.archives = archives

    def resolve(self, layer: LayerRef) -> Path:
        if layer.path is None:
            raise LayerError("has no path")
        path = layer.path
        if not path.is_absolute():
            # The manifest resolves paths against the squishfile's directory;
            # a relative one here would depend on the daemon's cwd.
            raise LayerError(f"{path} is not an absolute host path")
        try:
            # Resolve symlinks now so the runtime binds what was checked here.
            real = path.resolve(strict=True)
            mode = real.stat().st_mode
        except FileNotFoundError as exc:
            if path.is_symlink():
                raise LayerError(f"{path} is a symlink to something that does not exist") from exc
            raise LayerError(f"{path} does not exist") from exc
        except OSError as exc:
            raise LayerError(f"cannot access {path}: {exc.strerror}") from exc
        if self.archives is not None and stat.S_ISREG(mode) and is_tarball(real):
            return self.archives.resolve(layer)
        if self.directory_only and not stat.S_ISDIR(mode):
            raise LayerError(f"{path} is not a directory; a base rootfs must be one")
        # Devices, sockets and fifos have no business being layers, and binding
        # one would hand the container a host resource.
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise LayerError(f"{path} is not a regular file or directory")
        if layer.sha256 is not None:
            if not stat.S_ISREG(mode):
                raise LayerError(f"{path} is a directory; sha256 can only pin a file or archive")
            try:
                with real.open("rb") as file:
                    content = content_sha256(file)
            except OSError as exc:
                raise LayerError(f"cannot read {path}: {exc.strerror}") from exc
            if content != layer.sha256:
                raise LayerError(
                    f"{path} has sha256 {content}, but the squishfile pins {layer.sha256}; "
                    "refusing it"
                )
        return real
