"""Where squish keeps things on the host, following the XDG base directories.

Called by the CLI and the daemon. State (the layer cache, the built-in base,
logs) lives under ``$XDG_STATE_HOME/squish`` (``~/.local/state/squish``);
runtime files (sockets, per-container scratch) under
``$XDG_RUNTIME_DIR/squish``, or, where there is no such directory (or it is
another user's, as ``su`` and ``runuser`` pass on), a private
``/tmp/squish-<uid>`` that must be ours and mode 0700.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from squish.errors import SquishError


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "squish"


def runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _ours(Path(xdg)):
        path = Path(xdg) / "squish"
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SquishError(f"cannot make {path}: {exc.strerror or exc}") from exc
        return path
    path = Path(f"/tmp/squish-{os.getuid()}")  # noqa: S108 (checked below: ours, 0700)
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise SquishError(f"cannot make {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SquishError(f"{path} is not a private directory of this user; remove it")
    return path


def _ours(directory: Path) -> bool:
    try:
        info = directory.stat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def socket_path() -> Path:
    """The daemon's API socket: ``$SQUISH_SOCKET``, else ``squish.sock`` in the runtime dir."""
    override = os.environ.get("SQUISH_SOCKET")
    if override:
        return Path(override)
    return runtime_dir() / "squish.sock"
