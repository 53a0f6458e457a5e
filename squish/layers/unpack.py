"""Safe unpacking of layer archives (tar, compressed tar, zip) into a directory.

``squish.layers.archive.ArchiveResolver`` calls ``unpack_file`` inside
``LayerCache.materialise``, so what is written here lands in a private
temporary directory and only becomes a cache entry if every member was
accepted. ``sniff`` and ``is_tarball`` tell archives from other files by
their first bytes; nothing here ever trusts a file name.

Archives are hostile input: a layer archive may come from anywhere, and a
careless unpacker writes wherever its members say. So members are never handed
to ``tarfile``'s or ``zipfile``'s own extraction (tarfile's filters had
bypasses on older Pythons, and zipfile has none). Each member is checked and
created here with plain ``os`` calls, and the whole unpack fails closed: the
first member that is refused ends it with a ``LayerError`` naming the archive
and the member, and the caller throws the half-built directory away.

The rules, and why they are enough:

- Member names are relative and have no ``..``, so they name a place below
  the layer root *lexically*.
- Every directory on the way to a member must be one this unpack created as a
  real directory (it keeps a record of what it wrote; the directory starts
  empty), and the member itself is created with ``O_EXCL|O_NOFOLLOW`` (or
  ``mkdir``/``symlink``/``link``, which never follow a final symlink). So the
  kernel never follows a symlink while writing, and lexically below the root
  really is below the root.
- Symlinks may be planted, because the layer is read inside the container,
  but their target must stay inside the layer even when followed: it is
  relative, has ``..`` only as leading components, and no more of them than
  the link is deep. Going up from a chain of real directories is exact, and
  going down from inside the layer stays inside it (each symlink met on the
  way obeys the same rule), so no chain of links can leave the root. A
  lexically harmless ``q/..`` is refused because ``q`` may be a link to ``.``.
  The one exception is a base rootfs (``allow_absolute_symlinks``, used by
  the Alpine resolver only): it is mounted at ``/``, so an absolute target
  (``bin/sh -> /bin/busybox``) resolves inside the container's own root.
  Such links are planted verbatim; the unpacker still never writes through
  any link it created, so their targets never matter while unpacking.
- Hard links point at an earlier regular file of the same archive only.
- No device nodes, fifos or sockets; setuid, setgid, sticky, group- and
  world-write bits are dropped (``mode & 0o755``); directories are 0755.
- ``Limits`` are enforced on the bytes actually written, counted while
  copying, never on what headers claim.
"""

from __future__ import annotations

import bz2
import contextlib
import enum
import gzip
import importlib
import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from squish.errors import LayerError

MiB = 1 << 20
GiB = 1 << 30
_CHUNK = MiB
_HEAD = 512
_MAX_LINK_TARGET = 4096


@dataclass(frozen=True)
class Limits:
    """How much one archive may unpack to; exceeding any refuses the archive."""

    total_bytes: int = 4 * GiB
    """Bytes written for all members together (each member is also bound by it)."""
    members: int = 100_000
    """Entries of any kind, directories and links included."""
    ratio: int = 200
    """Bytes written per byte of archive, checked once ``ratio_after`` were written."""
    ratio_after: int = 64 * MiB
    """Below this many bytes written, any ratio is fine (small files compress well)."""


class Format(enum.StrEnum):
    """What an archive's first bytes say it is."""

    TAR = "tar"
    GZIP = "gzip"
    XZ = "xz"
    BZIP2 = "bzip2"
    ZSTD = "zstd"
    ZIP = "zip"


_MAGIC = (
    (b"\x1f\x8b", Format.GZIP),
    (b"\xfd7zXZ\x00", Format.XZ),
    (b"BZh", Format.BZIP2),
    (b"\x28\xb5\x2f\xfd", Format.ZSTD),
    (b"PK\x03\x04", Format.ZIP),
    (b"PK\x05\x06", Format.ZIP),  # an empty zip is only its end record
)
_TarMode = Literal["r|", "r|gz", "r|xz", "r|bz2"]
_TAR_MODES: dict[Format, _TarMode] = {
    Format.TAR: "r|",
    Format.GZIP: "r|gz",
    Format.XZ: "r|xz",
    Format.BZIP2: "r|bz2",
}
# Everything the decoders raise for a corrupt or unsupported archive; our own
# LayerError is not among them, so refusals pass through untranslated.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    RuntimeError,  # zipfile: an encrypted member
    NotImplementedError,  # zipfile: a compression method it lacks
    ValueError,
)


def sniff(head: bytes) -> Format | None:
    """The format ``head`` (an archive's first 512 bytes) starts, or None."""
    for magic, found in _MAGIC:
        if head.startswith(magic):
            return found
    # POSIX ("ustar\0") and GNU ("ustar  ") tar headers both carry this.
    if head[257:262] == b"ustar":
        return Format.TAR
    return None


def is_tarball(path: Path) -> bool:
    """Whether the file ``path`` holds a tar archive, plain or compressed.

    Looks inside gzip, xz and bzip2 streams for a tar header, so a single
    compressed file (``data.gz``) is not mistaken for a tarball. Zip is not
    recognised here on purpose: jars, wheels and office documents are zips
    that belong mounted as files. zstd counts only when squish can decompress
    it. Unreadable files are not tarballs (the path resolver reports them).
    """
    try:
        with path.open("rb") as file:
            found = sniff(file.read(_HEAD))
            if found is Format.TAR:
                return True
            file.seek(0)
            inner = _decompressed(file, found)
            if inner is None:
                return False
            with inner:
                return sniff(inner.read(_HEAD)) is Format.TAR
    except Exception:  # any decoder complaint means "not a tarball"
        return False


def _decompressed(file: IO[bytes], found: Format | None) -> io.BufferedIOBase | IO[bytes] | None:
    """A reader of the decompressed content of ``file``, if ``found`` is a compression."""
    if found is Format.GZIP:
        return gzip.GzipFile(fileobj=file)
    if found is Format.XZ:
        return lzma.LZMAFile(file)
    if found is Format.BZIP2:
        return bz2.BZ2File(file)
    if found is Format.ZSTD:
        zstd = _zstd_module()
        if zstd is not None:
            reader: IO[bytes] = zstd.ZstdDecompressor().stream_reader(file)
            return reader
    return None


def unpack(
    archive: Path,
    into: Path,
    *,
    limits: Limits = Limits(),
    allow_absolute_symlinks: bool = False,
) -> None:
    """Unpack ``archive`` into the existing empty directory ``into``.

    The format is taken from the content, never the name. Raises
    ``LayerError`` naming the archive (and the member, if one is at fault)
    when anything is refused; ``into`` is then left half-filled for the
    caller to remove. ``allow_absolute_symlinks`` is for base rootfs
    archives only (see the module docstring).
    """
    try:
        with archive.open("rb") as file:
            unpack_file(
                file,
                into,
                name=str(archive),
                limits=limits,
                allow_absolute_symlinks=allow_absolute_symlinks,
            )
    except OSError as exc:
        raise LayerError(f"cannot read {archive}: {exc.strerror or exc}") from exc


def unpack_file(
    file: IO[bytes],
    into: Path,
    *,
    name: str,
    limits: Limits = Limits(),
    allow_absolute_symlinks: bool = False,
) -> None:
    """``unpack`` for an open, seekable archive file; ``name`` labels errors.

    The resolver hashes and unpacks through one open file, so an archive
    replaced on disk in between cannot end up under the wrong digest.
    """
    file.seek(0)
    found = sniff(file.read(_HEAD))
    file.seek(0)
    if found is None:
        raise LayerError(
            f"{name} is not an archive (its content is not tar, gzip, xz, bzip2, zstd or zip)"
        )
    if any(into.iterdir()):
        raise LayerError(f"cannot unpack {name}: {into} is not empty")
    size = os.fstat(file.fileno()).st_size
    tree = _Tree(name, into, limits, size, allow_absolute_symlinks=allow_absolute_symlinks)
    try:
        if found is Format.ZIP:
            _unpack_zip(file, tree)
        else:
            _unpack_tar(file, found, tree)
    except LayerError:
        raise
    except _READ_ERRORS as exc:
        raise LayerError(f"{name}: cannot unpack this {found} archive: {exc}") from exc


def _zstd_module() -> Any:
    """The ``zstandard`` module if it is installed, else None."""
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def _unpack_tar(file: IO[bytes], found: Format, tree: _Tree) -> None:
    with contextlib.ExitStack() as stack:
        if found is Format.ZSTD:
            zstd = _zstd_module()
            if zstd is None:
                raise LayerError(
                    f"{tree.archive} is zstd-compressed, which this squish cannot unpack "
                    "(the Python module zstandard is not installed); "
                    "recompress it with gzip or xz"
                )
            file = stack.enter_context(zstd.ZstdDecompressor().stream_reader(file))
            mode: _TarMode = "r|"
        else:
            mode = _TAR_MODES[found]
        # Stream mode reads the archive once, front to back: random access
        # into a compressed tar would decompress it again for every member.
        archive = stack.enter_context(tarfile.open(fileobj=file, mode=mode))
        for member in _members(archive):
            tree.count(member.name)
            if member.isdir():
                tree.directory(member.name)
            elif member.isreg():
                tree.check_declared_size(member.name, member.size)
                source = archive.extractfile(member)
                if source is None:  # cannot happen for a regular member
                    raise LayerError(f"{tree.archive}: cannot read member {member.name!r}")
                with source:
                    tree.file(member.name, member.mode, source)
            elif member.issym():
                tree.symlink(member.name, member.linkname)
            elif member.islnk():
                tree.hardlink(member.name, member.linkname)
            elif member.ischr() or member.isblk():
                raise tree.refuse(member.name, "is a device node")
            elif member.isfifo():
                raise tree.refuse(member.name, "is a fifo")
            else:
                raise tree.refuse(member.name, f"has an unsupported type {member.type!r}")


def _members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # Iterating with next() keeps memory flat in stream mode, except for the
    # TarInfo list tarfile keeps anyway (bounded by Limits.members).
    while (member := archive.next()) is not None:
        yield member


def _unpack_zip(file: IO[bytes], tree: _Tree) -> None:
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            tree.count(info.filename)
            # Unix zips keep st_mode in the high half of external_attr; zips
            # made elsewhere have 0 there, and get the defaults.
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if info.is_dir() or kind == stat.S_IFDIR:
                tree.directory(info.filename)
            elif kind == stat.S_IFLNK:
                # Info-ZIP stores a symlink as a member whose data is the target.
                with archive.open(info) as source:
                    target = source.read(_MAX_LINK_TARGET + 1)
                if len(target) > _MAX_LINK_TARGET:
                    raise tree.refuse(info.filename, "is a symlink with an overlong target")
                tree.symlink(info.filename, target.decode("utf-8", "surrogateescape"))
            elif kind in (0, stat.S_IFREG):
                tree.check_declared_size(info.filename, info.file_size)
                permissions = stat.S_IMODE(mode) or 0o644
                with archive.open(info) as source:
                    tree.file(info.filename, permissions, source)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                raise tree.refuse(info.filename, "is a device node")
            elif kind == stat.S_IFIFO:
                raise tree.refuse(info.filename, "is a fifo")
            elif kind == stat.S_IFSOCK:
                raise tree.refuse(info.filename, "is a socket")
            else:
                raise tree.refuse(info.filename, f"has an unsupported file type {oct(kind)}")


class _Kind(enum.Enum):
    DIR = "directory"
    FILE = "file"
    SYMLINK = "symlink"


class _Tree:
    """The layer being written: creates members and remembers what it created.

    ``written`` maps every relative path created so far (``""`` is the root)
    to what it is; it is the only source of truth about the tree, since
    nothing but this unpack writes into the private temporary directory.
    """

    def __init__(
        self,
        archive: str,
        root: Path,
        limits: Limits,
        archive_size: int,
        *,
        allow_absolute_symlinks: bool = False,
    ) -> None:
        self.archive = archive
        self.allow_absolute_symlinks = allow_absolute_symlinks
        self.root = root
        self.limits = limits
        self.archive_size = archive_size
        self.written: dict[str, _Kind] = {"": _Kind.DIR}
        self.members = 0
        self.bytes = 0

    def refuse(self, member: str, why: str) -> LayerError:
        return LayerError(f"{self.archive}: member {member!r} {why}")

    def count(self, member: str) -> None:
        self.members += 1
        if self.members > self.limits.members:
            raise self.refuse(
                member, f"is one too many: archives may hold at most {self.limits.members} members"
            )

    def check_declared_size(self, member: str, size: int) -> None:
        # Only an early, cheap refusal; the real check counts bytes written.
        if size > self.limits.total_bytes:
            raise self._too_big(member)

    def directory(self, member: str) -> None:
        parts = self._parts(member)
        key = "/".join(parts)
        known = self.written.get(key)
        if known is _Kind.DIR:
            return  # listed again, or created earlier as a parent
        if known is not None:
            raise self.refuse(
                member, f"is a directory, but a {known.value} of that name came first"
            )
        self._parents(member, parts)
        self._mkdir(key)

    def file(self, member: str, mode: int, source: IO[bytes]) -> None:
        key = self._new(member)
        fd = os.open(
            self.root / key,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        self.written[key] = _Kind.FILE
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                self.bytes += len(chunk)
                self._check_bytes(member)
                out.write(chunk)
            os.fchmod(out.fileno(), mode & 0o755)

    def symlink(self, member: str, target: str) -> None:
        parts = self._parts(member)
        if target.startswith("/"):
            if not self.allow_absolute_symlinks:
                raise self.refuse(member, f"is a symlink to {target!r}, outside the layer")
            if "\0" in target or len(target) > _MAX_LINK_TARGET:
                raise self.refuse(member, "is a symlink with an invalid target")
            # A base rootfs: the target is read relative to the container's
            # root, where this tree is mounted. Planted verbatim.
            key = self._new(member)
            os.symlink(target, self.root / key)
            self.written[key] = _Kind.SYMLINK
            return
        names = [name for name in target.split("/") if name not in ("", ".")]
        ups = 0
        while ups < len(names) and names[ups] == "..":
            ups += 1
        if ".." in names[ups:]:
            raise self.refuse(
                member,
                f"is a symlink to {target!r}; a target may only start with '..', "
                "not go back up after a name",
            )
        if ups > len(parts) - 1:
            raise self.refuse(member, f"is a symlink to {target!r}, outside the layer")
        key = self._new(member)
        os.symlink("/".join(names) or ".", self.root / key)
        self.written[key] = _Kind.SYMLINK

    def hardlink(self, member: str, target: str) -> None:
        # Tar hard link targets are archive paths, relative to its root.
        if target.startswith("/") or ".." in target.split("/"):
            raise self.refuse(member, f"is a hard link to {target!r}, outside the layer")
        source = "/".join(name for name in target.split("/") if name not in ("", "."))
        if self.written.get(source) is not _Kind.FILE:
            raise self.refuse(
                member,
                f"is a hard link to {target!r}, which is not an earlier regular file "
                "of the archive",
            )
        key = self._new(member)
        os.link(self.root / source, self.root / key, follow_symlinks=False)
        self.written[key] = _Kind.FILE

    def _parts(self, member: str) -> list[str]:
        if member.startswith("/"):
            raise self.refuse(member, "is an absolute path; members must be relative")
        parts = [name for name in member.split("/") if name not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, "has a '..' component, which would leave the layer")
        return parts

    def _new(self, member: str) -> str:
        """Check a non-directory member and make its parents; its relative path."""
        parts = self._parts(member)
        if not parts:
            raise self.refuse(member, "names the layer root but is not a directory")
        key = "/".join(parts)
        if key in self.written:
            raise self.refuse(member, "appears twice in the archive")
        self._parents(member, parts)
        return key

    def _parents(self, member: str, parts: list[str]) -> None:
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            known = self.written.get(prefix)
            if known is None:
                self._mkdir(prefix)
            elif known is _Kind.SYMLINK:
                raise self.refuse(member, f"would be written through the symlink {prefix!r}")
            elif known is not _Kind.DIR:
                raise self.refuse(member, f"would be written inside the file {prefix!r}")

    def _mkdir(self, key: str) -> None:
        path = self.root / key
        os.mkdir(path, 0o755)
        # Whatever the umask said; just made, so it is no symlink.
        os.chmod(path, 0o755)  # noqa: S103 (layers are world-readable by design)
        self.written[key] = _Kind.DIR

    def _check_bytes(self, member: str) -> None:
        if self.bytes > self.limits.total_bytes:
            raise self._too_big(member)
        if (
            self.bytes > self.limits.ratio_after
            and self.bytes > self.limits.ratio * self.archive_size
        ):
            raise self.refuse(
                member,
                f"takes the archive past {self.limits.ratio}:1 compression "
                f"({self.bytes} bytes from {self.archive_size}); refusing a likely "
                "compression bomb",
            )

    def _too_big(self, member: str) -> LayerError:
        return self.refuse(
            member,
            f"takes the archive past {self.limits.total_bytes} bytes unpacked, the limit",
        )
