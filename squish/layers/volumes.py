"""Named volumes: directories of the node that containers mount rw, and keep.

A volume is made empty the first time a container that names it starts
(``[volumes] pgdata = "/var/lib/postgresql"``), under the state directory,
owned by the daemon's user; it outlives the container's replacement, its
restarts and the daemon's, and every container that names it shares it.
``squish volume ...`` lists, inspects and removes them through the daemon
(``squish.daemon.control``), which knows who uses which.

Layout: ``ROOT/NAME/data`` is what containers mount; ``ROOT/NAME/created``
holds when it was made (Unix seconds). A volume is made in a temporary
directory renamed into place, so a half-made one is never seen.

``export`` writes a volume as a tar (symlinks as links, never followed);
``import_archive`` makes a volume hold exactly what an archive holds,
unpacked by the layers' safe unpacker (``squish.layers.unpack``: nothing
written outside, no devices, no setuid bits) beside it and swapped in
whole, so a refused archive leaves the volume as it was.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from squish.errors import LayerError, VolumeNotFound
from squish.layers.cache import checked_name, entry_names, tree_size
from squish.layers.unpack import unpack_file


@dataclass(frozen=True)
class Volume:
    name: str
    path: Path
    """What containers mount."""
    created_at: float


class Volumes:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, name: str) -> Path:
        return self.root / checked_name("volume", name)

    def ensure(self, name: str) -> Path:
        """The data directory of volume ``name``, made empty if there is none yet."""
        home = self._dir(name)
        data = home / "data"
        if data.is_dir():
            return data
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            making = self.root / f".{name}.{os.getpid()}.{time.monotonic_ns()}"
            (making / "data").mkdir(parents=True, mode=0o755)
            (making / "created").write_text(f"{time.time():.3f}\n")
            try:
                making.rename(home)
            except OSError:
                shutil.rmtree(making, ignore_errors=True)
                if not data.is_dir():  # not another start that made it meanwhile
                    raise
        except OSError as exc:
            raise LayerError(f"cannot make volume {name} in {self.root}: {exc}") from exc
        return data

    def get(self, name: str) -> Volume:
        home = self._dir(name)
        data = home / "data"
        if not data.is_dir():
            raise VolumeNotFound(f"no volume {name!r}; see squish volume ls")
        try:
            created = float((home / "created").read_text())
        except (OSError, ValueError):
            created = data.stat().st_mtime
        return Volume(name, data, created)

    def list(self) -> list[Volume]:
        found = []
        for name in entry_names(self.root):
            try:
                found.append(self.get(name))
            except (VolumeNotFound, LayerError):
                continue  # not a volume (a stray file)
        return found

    def size(self, name: str) -> int:
        return tree_size(self.get(name).path)

    def export(self, name: str, sink: IO[bytes]) -> None:
        """Write volume ``name`` to ``sink`` as an uncompressed tar stream."""
        data = self.get(name).path
        try:
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                for entry in sorted(data.iterdir()):
                    archive.add(entry, arcname=entry.name, recursive=True)
        except OSError as exc:
            raise LayerError(f"cannot export volume {name}: {exc}") from exc

    def import_archive(self, name: str, archive: Path, *, label: str | None = None) -> Volume:
        """Make volume ``name`` (made if need be) hold exactly what ``archive`` holds.

        ``label`` names the archive in errors (its path, if not given).
        """
        data = self.ensure(name)
        fresh = self.root / f".{name}.import.{time.monotonic_ns()}"
        old = self.root / f".{name}.replaced.{time.monotonic_ns()}"
        try:
            fresh.mkdir(mode=0o755)
            with archive.open("rb") as file:
                unpack_file(file, fresh, name=label or str(archive))
            fresh.chmod(0o755)
            data.rename(old)
            try:
                fresh.rename(data)
            except OSError:
                old.rename(data)  # what it held, back in place
                raise
        except OSError as exc:
            raise LayerError(f"cannot import into volume {name}: {exc}") from exc
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return self.get(name)

    def remove(self, name: str) -> None:
        """Delete volume ``name`` and what it holds (the caller checked nobody uses it)."""
        home = self._dir(name)
        self.get(name)
        # Renamed away first: a start that comes meanwhile makes a new, empty one.
        doomed = self.root / f".{name}.removing.{time.monotonic_ns()}"
        try:
            home.rename(doomed)
        except OSError as exc:
            raise LayerError(f"cannot remove volume {name}: {exc}") from exc
        shutil.rmtree(doomed, ignore_errors=True)
