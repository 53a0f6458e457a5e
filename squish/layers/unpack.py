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

An archive must also be whole. ``tarfile`` ends quietly wherever the data
stops at a member boundary, and its own decompression ignores a compressed
stream that ends early, so a file cut short (an interrupted download or copy)
would unpack to a partial layer. So the decompressing happens here, with
readers that raise ``EOFError`` at an early end (zstd's frames are walked
first, as its reader stops quietly too), the stream is read to its end after
the last member, and the tar itself must end with its end-of-archive marker
(a zero block). That is stricter than GNU tar for a plain, uncompressed tar
cut exactly at a member boundary, which GNU tar lists without a word: nothing
else tells such a file from a whole one.

Every refusal of the archive's own bytes is an ``ArchiveRefused``, which a
caller may remember (the same bytes are refused again); a failure of the host
(a full disk) is a plain ``LayerError``.
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
from typing import IO, Any, Self, cast

from squish.errors import ArchiveRefused, LayerError

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
        raise ArchiveRefused(
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
    except EOFError as exc:
        raise ArchiveRefused(
            f"{name}: the {found} stream ends early, so the file is cut short "
            "(an interrupted download or copy?); fetch it again"
        ) from exc
    except OSError as exc:
        if exc.errno is None:  # the decoders' own complaints (gzip.BadGzipFile)
            raise ArchiveRefused(f"{name}: cannot unpack this {found} archive: {exc}") from exc
        raise LayerError(f"cannot unpack {name}: {exc.strerror or exc}") from exc
    except _READ_ERRORS as exc:
        raise ArchiveRefused(f"{name}: cannot unpack this {found} archive: {exc}") from exc


def _zstd_module() -> Any:
    """The ``zstandard`` module if it is installed, else None."""
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def _unpack_tar(file: IO[bytes], found: Format, tree: _Tree) -> None:
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(_decompressing(file, found, tree.archive))
        ends: list[tarfile.HeaderError] = []
        # Stream mode reads the archive once, front to back: random access
        # into a compressed tar would decompress it again for every member.
        archive = stack.enter_context(
            tarfile.open(fileobj=stream, mode="r|", tarinfo=_header_type(ends))
        )
        last: str | None = None
        for member in _members(archive):
            last = member.name
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
        _check_end(tree, ends[-1] if ends else None, last)
        if stream is not file:
            # The decoder checks its end-of-stream marker only when asked for
            # more; what follows the tar (its padding) counts as written.
            while chunk := stream.read(_CHUNK):
                tree.bytes += len(chunk)
                tree.check_bytes("(after the last member)")


def _decompressing(file: IO[bytes], found: Format, archive: str) -> IO[bytes]:
    """A reader of the tar inside ``file`` that raises ``EOFError`` if it is cut short."""
    if found is Format.TAR:
        return file
    if found is Format.GZIP:
        return cast(IO[bytes], gzip.GzipFile(fileobj=file, mode="rb"))
    if found is Format.XZ:
        return lzma.LZMAFile(file)
    if found is Format.BZIP2:
        return bz2.BZ2File(file)
    zstd = _zstd_module()
    if zstd is None:
        raise LayerError(
            f"{archive} is zstd-compressed, which this squish cannot unpack "
            "(the Python module zstandard is not installed); "
            "recompress it with gzip or xz"
        )
    _check_zstd_frames(file)
    reader: IO[bytes] = zstd.ZstdDecompressor().stream_reader(
        file, read_across_frames=True, closefd=False
    )
    return reader


_HeaderError = tarfile.HeaderError
# typeshed leaves these two out of tarfile's stubs; they are there at run time.
_EOF_HEADER: type[Exception] = getattr(tarfile, "EOFHeaderError")  # noqa: B009
_INVALID_HEADER: type[Exception] = getattr(tarfile, "InvalidHeaderError")  # noqa: B009


def _header_type(ends: list[tarfile.HeaderError]) -> type[tarfile.TarInfo]:
    """A ``TarInfo`` that records why reading a header failed, into ``ends``.

    ``tarfile`` ends the member list quietly on any bad header after the
    first one; only this tells its end-of-archive marker from data that
    stops, or from garbage.
    """

    class _Header(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tarfile: tarfile.TarFile) -> Self:
            try:
                return super().fromtarfile(tarfile)
            except _HeaderError as exc:
                ends.append(exc)
                raise

    return _Header


def _check_end(tree: _Tree, end: tarfile.HeaderError | None, last: str | None) -> None:
    if isinstance(end, _EOF_HEADER):
        return  # the zero block that ends a tar
    after = "" if last is None else f" after member {last!r}"
    if isinstance(end, _INVALID_HEADER):
        raise ArchiveRefused(
            f"{tree.archive}: what follows{after} is not a tar header: the archive is corrupt"
        )
    raise ArchiveRefused(
        f"{tree.archive}: the tar archive stops{after}, without its end-of-archive "
        "marker, so the file is cut short (an interrupted download or copy?); fetch it again"
    )


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # to 0x184D2A5F
_FCS_SIZES = (0, 2, 4, 8)
_DID_SIZES = (0, 1, 2, 4)


def _check_zstd_frames(file: IO[bytes]) -> None:
    """Raise ``EOFError`` unless ``file`` ends where a zstd frame does.

    zstandard's stream reader stops quietly at an early end, so the frames'
    block headers (RFC 8878) are walked first: a few bytes read per block.
    Content that is no zstd frame is left to the decoder to refuse.
    """
    size = os.fstat(file.fileno()).st_size
    position = 0
    while position < size:
        file.seek(position)
        magic_bytes = file.read(4)
        if len(magic_bytes) < 4:
            raise EOFError("zstd frame magic cut short")
        magic = int.from_bytes(magic_bytes, "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
            length = file.read(4)
            if len(length) < 4:
                raise EOFError("zstd skippable frame cut short")
            position += 8 + int.from_bytes(length, "little")
        elif magic == _ZSTD_MAGIC:
            position = _zstd_frame_end(file, position + 4)
        else:
            break
        if position > size:
            raise EOFError("zstd frame cut short")
    file.seek(0)


def _zstd_frame_end(file: IO[bytes], position: int) -> int:
    """Where the zstd frame whose header starts at ``position`` ends."""
    descriptor = file.read(1)
    if not descriptor:
        raise EOFError("zstd frame header cut short")
    flags = descriptor[0]
    single_segment = bool(flags & 0x20)
    content_size = _FCS_SIZES[flags >> 6] or (1 if single_segment else 0)
    position += 1 + (0 if single_segment else 1) + _DID_SIZES[flags & 0x03] + content_size
    while True:
        file.seek(position)
        header = file.read(3)
        if len(header) < 3:
            raise EOFError("zstd block header cut short")
        value = int.from_bytes(header, "little")
        block_type = (value >> 1) & 0x03
        block_size = value >> 3
        position += 3 + (1 if block_type == 1 else block_size)
        if value & 0x01:
            return position + (4 if flags & 0x04 else 0)


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

    def refuse(self, member: str, why: str) -> ArchiveRefused:
        return ArchiveRefused(f"{self.archive}: member {member!r} {why}")

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
                self.check_bytes(member)
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

    def check_bytes(self, member: str) -> None:
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

    def _too_big(self, member: str) -> ArchiveRefused:
        return self.refuse(
            member,
            f"takes the archive past {self.limits.total_bytes} bytes unpacked, the limit",
        )
