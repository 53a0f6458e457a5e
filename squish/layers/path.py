"""The resolver for local path layers: files and directories used as they are.

Chosen by ``squish.layers.store.LayerStore`` for ``LayerKind.PATH`` (a file or
directory bind-mounted at the layer's target) and ``LayerKind.ROOTFS_PATH`` (a
directory used as the base rootfs). Nothing is copied: the runtime binds the
host path read-only (or read-write when the manifest says ``rw``).

Paths arrive resolved: the squishfile's reader follows the symlinks the user
wrote (``app = "./current"`` is the release it points to when the file is
read), the built-in and cached layers live under the daemon's resolved state
directory. A path that leads through a symlink at a start is one that
appeared since, and is refused rather than followed; the runtime then opens
the path itself the same way and binds what it opened.

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
            real = path.resolve(strict=True)
            mode = path.lstat().st_mode
        except FileNotFoundError as exc:
            if path.is_symlink():
                raise LayerError(f"{path} is a symlink to something that does not exist") from exc
            raise LayerError(f"{path} does not exist") from exc
        except OSError as exc:
            raise LayerError(f"cannot access {path}: {exc.strerror}") from exc
        except RuntimeError as exc:  # a symlink loop (Python < 3.13)
            raise LayerError(f"cannot access {path}: {exc}") from exc
        if real != path or stat.S_ISLNK(mode):
            # The squishfile's reader resolved the path (following the
            # symlinks the user meant); one found now has appeared since,
            # and following it would mount what nobody checked.
            raise LayerError(
                f"{path} leads through a symlink now (to {real}); a layer's path is resolved "
                "once, when its squishfile is read, and not followed again"
            )
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
