"""One commit of a git source's clone, read through git's object database.

Made by the git source (``squish.sources.git.source``) for each revision it
builds: it lists trees, walks paths (refusing symlinks and paths that leave
the repository), reads squishfiles and parses them with the one parser, and
is the ``GitObjects`` the layer exporter (``squish.layers.git_tree``) reads
a path layer from.
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from squish.errors import ManifestError
from squish.layers.git_tree import (
    LayerRefused,
    LayerTooBig,
    TreeEntry,
    parse_ls_tree,
)
from squish.layers.unpack import MiB
from squish.model.manifest import Manifest
from squish.model.squishfile import (
    HostPath,
    Layer,
    LayerPathError,
    Squishfile,
    parse_squishfile,
)
from squish.sources.git.process import (
    MAX_LISTING,
    Attempt,
    SyncFailed,
)

if TYPE_CHECKING:
    from squish.sources.git.source import GitSource

MAX_SQUISHFILE = MiB
"""A squishfile larger than this is refused unread (it would be a mistake)."""


class Revision:
    """One commit of the clone, read through git's object database.

    Tree listings are remembered, so the squishfiles and layers of one
    revision list each directory once.
    """

    def __init__(self, source: GitSource, attempt: Attempt, commit: str) -> None:
        self.source = source
        self.attempt = attempt
        self.commit = commit
        self.short = commit[:12]
        self._git = source._git
        self._listings: dict[str, dict[str, TreeEntry]] = {}
        root = self._run(["rev-parse", "--verify", f"{commit}^{{tree}}"], "reading the commit")
        self.root = TreeEntry("040000", "tree", root.decode("ascii", "replace").strip(), 0)

    def _run(
        self,
        args: Sequence[str],
        what: str,
        *,
        stdout: IO[bytes] | None = None,
        stdin: IO[bytes] | None = None,
        max_output: int = MAX_LISTING,
    ) -> bytes:
        return self._git.run(
            self.attempt,
            args,
            what=f"{what} at {self.short}",
            stdout=stdout,
            stdin=stdin,
            max_output=max_output,
        )

    # -- trees ---------------------------------------------------------------

    def listing(self, tree: TreeEntry) -> dict[str, TreeEntry]:
        known = self._listings.get(tree.oid)
        if known is None:
            raw = self._run(["ls-tree", "-l", "-z", tree.oid], "listing a directory")
            known = dict(parse_ls_tree(raw))
            self._listings[tree.oid] = known
        return known

    def walk(self, repo_path: str) -> TreeEntry:
        """The entry at ``repo_path`` (normalised, relative; "" is the root).

        Raises ``NotThere`` naming the first component that is missing, is
        a symlink or a submodule, or is a file where a directory should be.
        """
        entry = self.root
        parts = repo_path.split("/") if repo_path else []
        for depth, part in enumerate(parts):
            so_far = "/".join(parts[: depth + 1])
            if entry.kind != "tree":
                raise NotThere(f"'{posixpath.dirname(so_far)}' is a file, not a directory")
            child = self.listing(entry).get(part)
            if child is None:
                raise NotThere("does not exist")
            if child.is_symlink:
                what = "is" if so_far == repo_path else f"passes through '{so_far}', which is"
                raise NotThere(
                    f"{what} a symlink in the repository; a git source never follows "
                    "symlinks: commit the files themselves"
                )
            if child.kind == "commit":
                what = "is" if so_far == repo_path else f"passes through '{so_far}', which is"
                raise NotThere(
                    f"{what} a submodule; a git source does not fetch submodules: "
                    "commit the files themselves"
                )
            entry = child
        return entry

    def directory(self, repo_path: str) -> TreeEntry:
        """The tree at the source's ``path``; a sync failure if there is none."""
        try:
            entry = self.walk(repo_path)
        except NotThere as exc:
            raise SyncFailed(
                f"path '{repo_path}' at {self.short}: {exc.message} (the path of the git source)"
            ) from exc
        if entry.kind != "tree":
            raise SyncFailed(f"path '{repo_path}' at {self.short}: is a file, not a directory")
        return entry

    def read_blobs(self, oids: Sequence[str]) -> dict[str, bytes]:
        """The contents of ``oids`` (all blobs), read with one ``cat-file --batch``."""
        if not oids:
            return {}
        with tempfile.TemporaryFile(dir=self.source.work_dir, prefix=".git-stdin-") as stdin:
            stdin.write("".join(f"{oid}\n" for oid in oids).encode("ascii"))
            stdin.seek(0)
            raw = self._run(["cat-file", "--batch"], "reading squishfiles", stdin=stdin)
        found: dict[str, bytes] = {}
        at = 0
        for oid in oids:
            end = raw.index(b"\n", at)
            header = raw[at:end].split()
            if len(header) != 3 or header[1] != b"blob":
                raise SyncFailed(f"reading squishfiles at {self.short}: git cannot read {oid}")
            size = int(header[2])
            found[oid] = raw[end + 1 : end + 1 + size]
            at = end + 1 + size + 1
        return found

    # -- one squishfile --------------------------------------------------------

    def manifest(self, repo_path: str, entry: TreeEntry, data: bytes | None) -> Manifest:
        file = f"{repo_path}@{self.short}"
        name = posixpath.basename(repo_path).removesuffix(".toml")
        try:
            if entry.is_symlink:
                raise ManifestError(
                    file,
                    "is a symlink in the repository; a git source reads squishfiles only "
                    "from regular files: commit the file itself",
                )
            if data is None:
                raise ManifestError(
                    file, f"is {entry.size} bytes; a squishfile may be at most {MAX_SQUISHFILE}"
                )
            squishfile = self._parse(file, posixpath.dirname(repo_path), name, data)
        except ManifestError as exc:
            return Manifest(name, file, None, exc)
        return Manifest(name, file, squishfile)

    def _parse(self, file: str, directory: str, name: str, data: bytes) -> Squishfile:
        """Parse a squishfile of the repository, its path layers exported into the cache.

        The parser asks where each path layer leads; the answer is checked
        against the repository's tree (relative, inside it, there) and is
        the layer's place in the repository, under ``/<repository>``. Once
        the whole file is valid, each such layer is exported and its path
        becomes the cache's.
        """
        located: dict[Path, tuple[str, TreeEntry, str]] = {}

        def locate(raw: str, field: str) -> HostPath:
            if raw.startswith("/"):
                return self._host_path(raw)
            repo_path = posixpath.normpath(posixpath.join(directory, raw))
            if repo_path == ".." or repo_path.startswith("../"):
                raise LayerPathError(
                    f"{raw!r} leaves the repository; a path layer must be inside it"
                )
            repo_path = "" if repo_path == "." else repo_path
            try:
                entry = self.walk(repo_path)
            except NotThere as exc:
                shown = f"'{repo_path}'" if repo_path else "the repository root"
                raise LayerPathError(f"{raw!r} ({shown} in the repository) {exc.message}") from exc
            # Named like a checkout's: a default target of ``app = "./"`` at
            # the top is /app/<repository>.
            place = Path("/", self.source.repo_name, repo_path)
            located[place] = (repo_path, entry, field)
            return HostPath(place, place.name)

        squishfile = parse_squishfile(data, file=file, name=name, paths=locate)

        def exported(layer: Layer) -> Layer:
            if layer.path is None or layer.path not in located:
                return layer  # not a path layer, or a host path the node allows
            repo_path, entry, field = located[layer.path]
            try:
                path = self.source.exporter.export(repo_path, entry, self)
            except LayerRefused as exc:
                raise ManifestError(file, str(exc), field=field) from exc
            except LayerTooBig as exc:
                # Too big: the whole sync fails, saying where.
                raise SyncFailed(f"{file}: {field}: {exc}") from exc
            except SyncFailed as exc:
                # git itself failed or went over a limit while exporting.
                raise SyncFailed(f"{file}: {field}: {exc}", killed=exc.killed) from exc
            return replace(layer, path=path)

        return replace(
            squishfile,
            base=None if squishfile.base is None else exported(squishfile.base),
            layers=tuple(exported(layer) for layer in squishfile.layers),
        )

    def _host_path(self, raw: str) -> HostPath:
        """An absolute path layer: refused, unless under a directory the node allows.

        Checked once resolved (symlinks followed), so a link under an allowed
        directory cannot lead out of it.
        """
        allowed = self.source.host_paths
        hint = (
            'in a git repository a path layer is relative to the squishfile, e.g. "./app"; '
            "a named volume ([volumes]) keeps data without naming a host path"
        )
        if not allowed:
            raise LayerPathError(
                f"{raw!r} is an absolute path; {hint} (or allow host paths on the node "
                "with --allow-host-path DIR)"
            )
        try:
            resolved = Path(raw).resolve(strict=True)
        except FileNotFoundError:
            raise LayerPathError(f"{raw!r} does not exist on this host") from None
        except (OSError, RuntimeError) as exc:
            raise LayerPathError(f"cannot access {raw!r}: {exc}") from exc
        if not any(resolved == top or resolved.is_relative_to(top) for top in allowed):
            shown = ", ".join(str(top) for top in allowed)
            leads = "" if str(resolved) == raw else f" (it leads to {resolved})"
            raise LayerPathError(
                f"{raw!r} is not under a host path this node allows{leads}; "
                f"allowed: {shown} (--allow-host-path)"
            )
        return HostPath(resolved, resolved.name)

    # -- the objects a layer is exported from (squish.layers.git_tree.GitObjects)

    def list_tree(self, oid: str, what: str) -> list[tuple[str, TreeEntry]]:
        return parse_ls_tree(self._run(["ls-tree", "-r", "-l", "-z", oid], what))

    def write_blob(self, oid: str, out: IO[bytes], size: int, what: str) -> None:
        self._run(["cat-file", "blob", oid], what, stdout=out, max_output=size)

    def write_archive(self, oid: str, out: IO[bytes], max_bytes: int, what: str) -> None:
        self._run(["archive", "--format=tar", oid], what, stdout=out, max_output=max_bytes)


class NotThere(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
