"""Layers from a git repository: a tree (or one file) exported into the layer cache.

Called by the git source (``squish.sources.git``) for each path layer of a
squishfile it reads from a revision, once the squishfile is valid. Beside
the other resolvers because it does what they do: it materialises a layer
into the content-addressed ``LayerCache``, keyed by what the content *is*
(the tree's or blob's object id), so a revision that does not change a
layer reuses its entry and two repositories holding the same tree share it.
A tree goes through ``git archive`` and the same unpacker as any archive
(``squish.layers.unpack``: no slips, no devices, limits on size and member
count); a file is written as the one file of a cache entry. Submodules are
refused: a git source does not fetch them.

The git objects are read through ``GitObjects``, which the git source
implements on its clone (its process runner carries the timeouts, limits
and cancellation); this module runs no git itself.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from squish.errors import LayerError
from squish.layers.archive import UNPACKER_VERSION
from squish.layers.cache import LayerCache
from squish.layers.unpack import Limits, unpack_file

# Keys of cache entries. The tree tag carries the unpacker's version because
# the entry is what the unpacker wrote; a new unpacker means a new entry.
_TREE_TAG = f"squish git tree v1 unpack {UNPACKER_VERSION}\n"
_BLOB_TAG = "squish git blob v1\n"


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a git tree (``ls-tree -l``)."""

    mode: str
    kind: str  # blob, tree or commit (a gitlink)
    oid: str
    size: int  # 0 for trees and gitlinks

    @property
    def is_symlink(self) -> bool:
        return self.mode == "120000"


def parse_ls_tree(raw: bytes) -> list[tuple[str, TreeEntry]]:
    """``git ls-tree -l -z`` output as (name, entry) pairs."""
    found: list[tuple[str, TreeEntry]] = []
    for record in raw.split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, oid, size = meta.decode("ascii").split()
        found.append(
            (
                name.decode("utf-8", "surrogateescape"),
                TreeEntry(mode, kind, oid, int(size) if size != "-" else 0),
            )
        )
    return found


class GitObjects(Protocol):
    """What the exporter reads of a repository (the git source's clone)."""

    def list_tree(self, oid: str, what: str) -> list[tuple[str, TreeEntry]]:
        """Every file below tree ``oid`` (``ls-tree -r -l``), by path."""
        ...

    def write_blob(self, oid: str, out: IO[bytes], size: int, what: str) -> None:
        """Write blob ``oid`` (``size`` bytes) to ``out``."""
        ...

    def write_archive(self, oid: str, out: IO[bytes], max_bytes: int, what: str) -> None:
        """Write tree ``oid`` as a tar archive to ``out``, at most ``max_bytes``."""
        ...


class LayerTooBig(LayerError):
    """A layer over the limits: the git source fails its whole sync, saying where."""


class LayerRefused(LayerError):
    """A layer's content was refused (a submodule, an unsafe member): its manifest is in error.

    Not an ``OSError``, so ``LayerCache.materialise`` passes it through
    untranslated, telling a refusal from a cache that cannot be written.
    """


class GitTreeExporter:
    """Exports trees and files of a repository into ``cache``, within the limits."""

    def __init__(
        self, cache: LayerCache, *, max_bytes: int, max_files: int, work_dir: Path
    ) -> None:
        self.cache = cache
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.work_dir = work_dir

    def export(self, repo_path: str, entry: TreeEntry, objects: GitObjects) -> Path:
        """The cache path holding ``entry``: a directory, or a directory's one file."""
        label = f"'{repo_path or '.'}'"
        if entry.kind == "blob":
            if entry.size > self.max_bytes:
                raise LayerTooBig(
                    f"{label} is {entry.size} bytes, more than the limit of "
                    f"{self.max_bytes} (max_bytes)"
                )
            basename = posixpath.basename(repo_path)
            key = _key(_BLOB_TAG, f"{entry.oid}\n{entry.mode}\n{basename}")
            entry_dir = self.cache.materialise(
                key, lambda into: _write_blob(objects, entry, into / basename)
            )
            return entry_dir / basename
        key = _key(_TREE_TAG, entry.oid)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        files = dict(objects.list_tree(entry.oid, "listing a layer"))
        for path, item in files.items():
            if item.kind == "commit":
                raise LayerRefused(
                    f"{label} contains the submodule '{posixpath.join(repo_path, path)}'; a git "
                    "source does not fetch submodules: commit the files themselves"
                )
        total = sum(item.size for item in files.values())
        if total > self.max_bytes:
            raise LayerTooBig(
                f"{label} holds {total} bytes, more than the limit of {self.max_bytes} (max_bytes)"
            )
        limits = Limits(total_bytes=self.max_bytes, members=self.max_files)
        return self.cache.materialise(
            key, lambda into: self._write_tree(objects, entry, label, into, limits)
        )

    def _write_tree(
        self, objects: GitObjects, entry: TreeEntry, label: str, into: Path, limits: Limits
    ) -> None:
        # Tar headers and padding: at most 1.5 KiB per member on top of the data.
        overhead = 1536 * (limits.members + 1) + 10240
        with tempfile.TemporaryFile(dir=self.work_dir, prefix=".git-archive-") as tar:
            objects.write_archive(
                entry.oid, tar, limits.total_bytes + overhead, f"exporting {label}"
            )
            try:
                unpack_file(tar, into, name=label, limits=limits)
            except LayerError as exc:
                raise LayerRefused(str(exc)) from exc


def _write_blob(objects: GitObjects, entry: TreeEntry, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        objects.write_blob(entry.oid, out, entry.size, f"exporting {target.name}")
        # The one mode bit git keeps; layers are world-readable by design.
        os.fchmod(out.fileno(), 0o755 if entry.mode == "100755" else 0o644)


def _key(tag: str, identity: str) -> str:
    return hashlib.sha256(f"{tag}{identity}".encode("utf-8", "surrogateescape")).hexdigest()
