"""Tests of archive layers: safe unpacking (``squish.layers.unpack``) and the
archive resolver (``squish.layers.archive``), grouped by behaviour.

Every archive is built here with tarfile, zipfile or raw bytes; nothing needs
the network or privileges. Each malicious archive is unpacked into ``into``
next to an empty ``sentinel`` directory, the place an escape would land
(members name ``../sentinel/...``, or links point at it), and the test checks
both the refusal and that the sentinel stayed empty.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from squish.errors import LayerError
from squish.layers import ArchiveResolver, LayerCache, LayerKind, LayerStore, Limits, Mount
from squish.layers.archive import Unpacker
from squish.layers.unpack import Format, is_tarball, sniff, unpack, unpack_file
from tests.layer_ref import Ref

# --- building archives ---------------------------------------------------------

Entry = tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]


def file_(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def dir_(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info


def tar_bytes(entries: list[Entry], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
        for entry in entries:
            if isinstance(entry, tuple):
                archive.addfile(entry[0], io.BytesIO(entry[1]))
            else:
                archive.addfile(entry)
    return buffer.getvalue()


def zip_bytes(entries: list[tuple[str, bytes, int]]) -> bytes:
    """Members as (name, data, st_mode); a st_mode of 0 writes no unix mode."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            # zipfile turns an external_attr of 0 into 0o600; a zip made on
            # Windows has only the DOS "archive" bit (0x20) there.
            info.external_attr = mode << 16 if mode else 0x20
            if not mode:
                info.create_system = 0
            archive.writestr(info, data)
    return buffer.getvalue()


GOOD: list[Entry] = [
    dir_("app"),
    file_("app/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
    file_("app/data.txt", b"hello\n", 0o644),
    dir_("app/lib"),
    link("app/lib/run", "../run.sh"),
    link("app/here", "lib"),
    file_("top.txt", b"top\n", 0o600),
]


@pytest.fixture
def into(tmp_path: Path) -> Path:
    target = tmp_path / "into"
    target.mkdir()
    (tmp_path / "sentinel").mkdir()
    return target


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    archive = tmp_path / name
    archive.write_bytes(data)
    return archive


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_refused(
    tmp_path: Path, into: Path, data: bytes, member: str, why: str, **kwargs: Limits
) -> None:
    archive = write(tmp_path, "evil.tar", data)
    with pytest.raises(LayerError) as caught:
        unpack(archive, into, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{archive}: member {member!r} "), message
    assert why in message, message
    assert "\n" not in message
    assert list((tmp_path / "sentinel").iterdir()) == []
    assert not (tmp_path / "evil").exists()


# --- good archives ---------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "xz", "bz2"])
def test_tarballs_unpack_with_content_modes_and_inner_symlinks(
    tmp_path: Path, into: Path, compression: str
) -> None:
    archive = write(tmp_path, "layer.bin", tar_bytes(GOOD, compression))

    unpack(archive, into)

    assert (into / "app" / "run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert mode_of(into / "app" / "run.sh") == 0o755
    assert mode_of(into / "app" / "data.txt") == 0o644
    assert mode_of(into / "top.txt") == 0o600
    assert mode_of(into / "app") == 0o755
    assert os.readlink(into / "app" / "lib" / "run") == "../run.sh"
    assert (into / "app" / "lib" / "run").read_text() == "#!/bin/sh\necho hi\n"
    assert (into / "app" / "here" / "run").is_file()


def test_zip_unpacks_and_keeps_the_executable_bit(tmp_path: Path, into: Path) -> None:
    data = zip_bytes(
        [
            ("bin/", b"", stat.S_IFDIR | 0o755),
            ("bin/tool", b"\x7fELF...", stat.S_IFREG | 0o755),
            ("README", b"read me\n", stat.S_IFREG | 0o644),
            ("windows.txt", b"no unix mode\n", 0),
            ("nested/deep/file", b"x", stat.S_IFREG | 0o640),
            ("bin/alias", b"tool", stat.S_IFLNK | 0o777),
        ]
    )
    archive = write(tmp_path, "app.zip", data)

    unpack(archive, into)

    assert (into / "bin" / "tool").read_bytes() == b"\x7fELF..."
    assert mode_of(into / "bin" / "tool") == 0o755
    assert mode_of(into / "README") == 0o644
    assert mode_of(into / "windows.txt") == 0o644
    assert mode_of(into / "nested" / "deep" / "file") == 0o640
    assert mode_of(into / "nested") == 0o755
    assert os.readlink(into / "bin" / "alias") == "tool"


def test_empty_archives_unpack_to_nothing(tmp_path: Path, into: Path) -> None:
    unpack(write(tmp_path, "e.zip", zip_bytes([])), into)
    unpack(write(tmp_path, "e.tar.gz", tar_bytes([], "gz")), into)

    assert list(into.iterdir()) == []


def test_hardlink_to_an_earlier_file_is_kept(tmp_path: Path, into: Path) -> None:
    data = tar_bytes([file_("a", b"same", 0o755), link("b", "./a", tarfile.LNKTYPE)])

    unpack(write(tmp_path, "l.tar", data), into)

    assert (into / "b").read_bytes() == b"same"
    assert (into / "a").stat().st_ino == (into / "b").stat().st_ino


def test_repeated_directories_and_dot_entries_are_fine(tmp_path: Path, into: Path) -> None:
    data = tar_bytes([dir_("."), file_("./d/f", b"x"), dir_("d"), dir_("./d/")])

    unpack(write(tmp_path, "d.tar", data), into)

    assert (into / "d" / "f").read_bytes() == b"x"


# --- detection by content ------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08", Format.GZIP),
        (b"\xfd7zXZ\x00\x00", Format.XZ),
        (b"BZh91AY", Format.BZIP2),
        (b"\x28\xb5\x2f\xfd", Format.ZSTD),
        (b"PK\x03\x04", Format.ZIP),
        (b"PK\x05\x06", Format.ZIP),
        (bytes(257) + b"ustar\x0000", Format.TAR),
        (bytes(257) + b"ustar  \x00", Format.TAR),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff(head: bytes, expected: Format | None) -> None:
    assert sniff(head) is expected


def test_the_name_is_never_trusted(tmp_path: Path, into: Path) -> None:
    archive = write(tmp_path, "really-a-tarball.zip", tar_bytes(GOOD, "gz"))

    unpack(archive, into)

    assert (into / "top.txt").read_text() == "top\n"


def test_a_text_file_named_like_an_archive_is_refused(tmp_path: Path, into: Path) -> None:
    fake = write(tmp_path, "x.tar.gz", b"<html>404 not found</html>\n")

    with pytest.raises(LayerError, match=r"x\.tar\.gz is not an archive \(its content is not"):
        unpack(fake, into)


def test_compressed_non_tar_is_refused(tmp_path: Path, into: Path) -> None:
    import gzip

    fake = write(tmp_path, "x.tar.gz", gzip.compress(b"just text, no tar\n" * 50))

    with pytest.raises(LayerError, match=r"x\.tar\.gz: cannot unpack this gzip archive"):
        unpack(fake, into)


def test_truncated_archive_is_refused(tmp_path: Path, into: Path) -> None:
    data = tar_bytes([file_("big", os.urandom(64 * 1024))], "gz")

    with pytest.raises(LayerError, match=r"cut\.tgz: the gzip stream ends early"):
        unpack(write(tmp_path, "cut.tgz", data[: len(data) // 2]), into)


def test_zstd_is_unpacked(tmp_path: Path, into: Path) -> None:
    # zstandard is a dependency of squish, so .tar.zst layers always work.
    import zstandard

    data = zstandard.ZstdCompressor().compress(tar_bytes(GOOD))
    unpack(write(tmp_path, "a.tar.zst", data), into)

    assert (into / "app" / "data.txt").read_bytes() == b"hello\n"
    assert os.access(into / "app" / "run.sh", os.X_OK)


def test_is_tarball(tmp_path: Path) -> None:
    import gzip

    assert is_tarball(write(tmp_path, "a", tar_bytes(GOOD)))
    assert is_tarball(write(tmp_path, "b", tar_bytes(GOOD, "gz")))
    assert is_tarball(write(tmp_path, "c", tar_bytes(GOOD, "xz")))
    assert is_tarball(write(tmp_path, "d", tar_bytes(GOOD, "bz2")))
    assert not is_tarball(write(tmp_path, "e.gz", gzip.compress(b"text" * 200)))
    assert not is_tarball(write(tmp_path, "f.jar", zip_bytes([("A", b"a", 0)])))
    assert not is_tarball(write(tmp_path, "g", b"plain text"))
    assert not is_tarball(tmp_path / "missing")


def test_into_must_be_empty(tmp_path: Path, into: Path) -> None:
    (into / "x").write_text("")

    with pytest.raises(LayerError, match="is not empty"):
        unpack(write(tmp_path, "a.tar", tar_bytes(GOOD)), into)


# --- hostile archives ------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "member", "why"),
    [
        ([file_("../sentinel/evil", b"x")], "../sentinel/evil", "has a '..' component"),
        ([file_("a/../../evil", b"x")], "a/../../evil", "has a '..' component"),
        ([file_("/etc/evil", b"x")], "/etc/evil", "is an absolute path"),
        (
            [link("link", "/etc"), file_("link/passwd", b"x")],
            "link",
            "is a symlink to '/etc', outside the layer",
        ),
        ([link("up", "../sentinel")], "up", "outside the layer"),
        ([dir_("d"), link("d/up", "../../sentinel")], "d/up", "outside the layer"),
        # Lexically "q/.." is ".", but q may be (and here is) a link to ".".
        ([link("q", "."), link("p", "q/../sentinel")], "p", "not go back up after a name"),
    ],
)
def test_escaping_names_and_symlinks_are_refused(
    tmp_path: Path, into: Path, entries: list[Entry], member: str, why: str
) -> None:
    assert_refused(tmp_path, into, tar_bytes(entries), member, why)


def test_writing_through_a_planted_symlink_is_refused(tmp_path: Path, into: Path) -> None:
    # The link itself stays inside (so it is allowed), but no member may be
    # written through it, even to a place that is inside too.
    (into.parent / "sentinel").rmdir()
    (into.parent / "sentinel").mkdir()
    data = tar_bytes([dir_("real"), link("alias", "real"), file_("alias/file", b"x")])

    assert_refused(tmp_path, into, data, "alias/file", "would be written through the symlink")
    assert list((into / "real").iterdir()) == []


def test_writing_inside_a_file_is_refused(tmp_path: Path, into: Path) -> None:
    data = tar_bytes([file_("f", b"x"), file_("f/g", b"y")])

    assert_refused(tmp_path, into, data, "f/g", "would be written inside the file 'f'")


@pytest.mark.parametrize(
    "second", [link("a", "b"), file_("a", b"y"), link("a", "b", tarfile.LNKTYPE), dir_("a")]
)
def test_duplicate_members_are_refused(tmp_path: Path, into: Path, second: Entry) -> None:
    # A second "a" could replace a checked file by something else; fail closed.
    data = tar_bytes([file_("b", b"x"), file_("a", b"x"), second])

    why = "came first" if isinstance(second, tarfile.TarInfo) and second.isdir() else "twice"
    assert_refused(tmp_path, into, data, "a", why)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc/passwd", "is a hard link to '/etc/passwd', outside the layer"),
        ("../sentinel/x", "outside the layer"),
        ("later", "not an earlier regular file"),
        ("dir", "not an earlier regular file"),
        ("sym", "not an earlier regular file"),
    ],
)
def test_hardlinks_outside_or_to_non_files_are_refused(
    tmp_path: Path, into: Path, target: str, why: str
) -> None:
    data = tar_bytes(
        [dir_("dir"), link("sym", "dir"), link("hl", target, tarfile.LNKTYPE), file_("later")]
    )

    assert_refused(tmp_path, into, data, "hl", why)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        (tarfile.CHRTYPE, "is a device node"),
        (tarfile.BLKTYPE, "is a device node"),
        (tarfile.FIFOTYPE, "is a fifo"),
    ],
)
def test_special_files_are_refused(tmp_path: Path, into: Path, kind: bytes, why: str) -> None:
    assert_refused(tmp_path, into, tar_bytes([special("dev/null", kind)]), "dev/null", why)


def test_setuid_and_world_writable_bits_are_dropped(tmp_path: Path, into: Path) -> None:
    data = tar_bytes(
        [
            file_("suid", b"x", 0o4755),
            file_("sgid", b"x", 0o2755),
            file_("open", b"x", 0o666),
            dir_("sticky", 0o1777),
        ]
    )

    unpack(write(tmp_path, "m.tar", data), into)

    assert mode_of(into / "suid") == 0o755
    assert mode_of(into / "sgid") == 0o755
    assert mode_of(into / "open") == 0o644
    assert mode_of(into / "sticky") == 0o755


@pytest.mark.parametrize(
    ("name", "mode", "why"),
    [
        ("../sentinel/evil", stat.S_IFREG | 0o644, "has a '..' component"),
        ("/etc/evil", stat.S_IFREG | 0o644, "is an absolute path"),
        ("null", stat.S_IFCHR | 0o666, "is a device node"),
        ("pipe", stat.S_IFIFO | 0o644, "is a fifo"),
        ("sock", stat.S_IFSOCK | 0o644, "is a socket"),
    ],
)
def test_zip_slip_and_zip_specials_are_refused(
    tmp_path: Path, into: Path, name: str, mode: int, why: str
) -> None:
    assert_refused(tmp_path, into, zip_bytes([(name, b"x", mode)]), name, why)


def test_zip_symlink_escape_is_refused(tmp_path: Path, into: Path) -> None:
    data = zip_bytes([("l", b"/etc", stat.S_IFLNK | 0o777), ("l/passwd", b"x", 0)])

    assert_refused(tmp_path, into, data, "l", "outside the layer")


def test_zip_setuid_is_dropped(tmp_path: Path, into: Path) -> None:
    unpack(write(tmp_path, "s.zip", zip_bytes([("s", b"x", stat.S_IFREG | 0o4777)])), into)

    assert mode_of(into / "s") == 0o755


# --- limits ------------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read: a bomb built without the memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 MiB of zeros in one member, gzip'd to about 300 kB (1000:1)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.tar.gz"
    size = 300 << 20
    with tarfile.open(path, mode="w:gz", compresslevel=9) as archive:
        info = tarfile.TarInfo("zeros")
        info.size = size
        archive.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


def test_compression_bomb_is_stopped_by_the_ratio(bomb: Path, into: Path) -> None:
    # Ratio enforced from 8 MiB on instead of 64, to keep the test quick.
    limits = Limits(ratio_after=8 << 20)

    with pytest.raises(LayerError, match=r"member 'zeros' takes the archive past 200:1"):
        unpack(bomb, into, limits=limits)
    # Stopped as soon as 200:1 was passed, long before the 300 MiB.
    assert (into / "zeros").stat().st_size <= 200 * bomb.stat().st_size


def test_compression_bomb_is_stopped_by_the_total(bomb: Path, into: Path) -> None:
    # The header says 300 MiB; the early check catches that without writing.
    with pytest.raises(LayerError, match=r"member 'zeros' takes the archive past 1048576 bytes"):
        unpack(bomb, into, limits=Limits(total_bytes=1 << 20))


def test_total_counts_bytes_written_not_headers(tmp_path: Path, into: Path) -> None:
    # Each member is within the limit; together they are not.
    data = tar_bytes([file_(f"f{i}", bytes(400_000)) for i in range(3)], "gz")

    with pytest.raises(LayerError, match=r"member 'f2' takes the archive past 1000000 bytes"):
        unpack(write(tmp_path, "t.tgz", data), into, limits=Limits(total_bytes=1_000_000))


def test_zip_header_lying_about_the_size_is_still_counted(tmp_path: Path, into: Path) -> None:
    data = zip_bytes([(f"z{i}", bytes(300_000), 0) for i in range(4)])

    with pytest.raises(LayerError, match=r"member 'z3' takes the archive past 1000000 bytes"):
        unpack(write(tmp_path, "z.zip", data), into, limits=Limits(total_bytes=1_000_000))


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_members(tmp_path: Path, into: Path, kind: str) -> None:
    if kind == "tar":
        data = tar_bytes([file_(f"f{i}") for i in range(11)])
    else:
        data = zip_bytes([(f"f{i}", b"", 0) for i in range(11)])

    with pytest.raises(LayerError, match=r"member 'f10' is one too many: .* at most 10 members"):
        unpack(write(tmp_path, f"many.{kind}", data), into, limits=Limits(members=10))


# --- the archive resolver and the store ---------------------------------------


# A directory base, so that resolving does not build the busybox base into the
# cache these tests count entries of.
BASE = Ref("base", path=Path("/"))


def cache_entries(state_dir: Path) -> list[str]:
    entries = state_dir / "layers" / "sha256"
    return sorted(child.name for child in entries.iterdir()) if entries.exists() else []


class CountingUnpacker:
    """The real unpack, counted, optionally slowed so racers overlap."""

    def __init__(self, delay: threading.Event | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, file: IO[bytes], into: Path, name: str, limits: Limits) -> None:
        with self._lock:
            self.calls += 1
        if self.delay is not None:
            self.delay.wait(0.2)
        unpack_file(file, into, name=name, limits=limits)


def store_with(tmp_path: Path, unpacker: Unpacker) -> LayerStore:
    state = tmp_path / "state"
    resolver = ArchiveResolver(LayerCache(state / "layers"), unpacker=unpacker)
    return LayerStore(state, resolvers={LayerKind.ARCHIVE: resolver})


def test_archive_layer_is_unpacked_once_and_mounted(tmp_path: Path) -> None:
    archive = write(tmp_path, "app.tar.gz", tar_bytes(GOOD, "gz"))
    counting = CountingUnpacker()
    store = store_with(tmp_path, counting)
    layer = Ref("app", path=archive, target="/app/app.tar.gz")

    (first,) = store.resolve(BASE, [layer]).mounts
    (second,) = store.resolve(BASE, [layer]).mounts
    # A fresh store (only the disk remembers) does not unpack again either.
    (third,) = LayerStore(tmp_path / "state").resolve(BASE, [layer]).mounts

    assert first == second == third
    assert first.target == "/app/app.tar.gz"
    assert first.rw is False
    assert first.source.parent == tmp_path / "state" / "layers" / "sha256"
    assert (first.source / "app" / "run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert mode_of(first.source) == 0o755
    assert counting.calls == 1
    assert cache_entries(tmp_path / "state") == [first.source.name]


def test_a_changed_archive_gets_a_new_entry(tmp_path: Path) -> None:
    archive = write(tmp_path, "app.zip", zip_bytes([("v", b"1", 0)]))
    store = LayerStore(tmp_path / "state")
    layer = Ref("app", path=archive, target="/app/app.zip")
    (old,) = store.resolve(BASE, [layer]).mounts

    archive.write_bytes(zip_bytes([("v", b"2", 0)]))
    (new,) = store.resolve(BASE, [layer]).mounts

    assert new.source != old.source
    assert (old.source / "v").read_text() == "1"
    assert (new.source / "v").read_text() == "2"
    assert cache_entries(tmp_path / "state") == sorted([old.source.name, new.source.name])


def test_concurrent_resolves_unpack_once(tmp_path: Path) -> None:
    archive = write(tmp_path, "app.tar.xz", tar_bytes(GOOD, "xz"))
    counting = CountingUnpacker(delay=threading.Event())
    store = store_with(tmp_path, counting)
    barrier = threading.Barrier(6)
    results: list[Mount] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        barrier.wait()
        try:
            results.extend(store.resolve(BASE, [Ref("app", path=archive, target="/app/a")]).mounts)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len({mount.source for mount in results}) == 1
    assert counting.calls == 1
    assert cache_entries(tmp_path / "state") == [results[0].source.name]


@pytest.mark.parametrize(
    "data",
    [
        tar_bytes([file_("ok", b"fine"), dir_("d"), file_("../evil", b"x")], "gz"),
        b"not an archive at all",
    ],
)
def test_a_failing_unpack_leaves_no_entry_and_no_debris(tmp_path: Path, data: bytes) -> None:
    archive = write(tmp_path, "bad.tar.gz", data)
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'app': .*bad\.tar\.gz"):
        store.resolve(BASE, [Ref("app", path=archive, target="/app/bad.tar.gz")])

    assert cache_entries(tmp_path / "state") == []
    assert not (tmp_path / "evil").exists()


def test_a_tarball_with_another_name_is_unpacked(tmp_path: Path) -> None:
    archive = write(tmp_path, "release-1.2", tar_bytes(GOOD, "bz2"))
    store = LayerStore(tmp_path / "state")

    (mount,) = store.resolve(BASE, [Ref("app", path=archive, target="/app/release-1.2")]).mounts

    assert mount.source.is_dir()
    assert (mount.source / "top.txt").read_text() == "top\n"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("tool.jar", lambda: zip_bytes([("META-INF/MANIFEST.MF", b"x", 0)])),
        ("data.gz", lambda: __import__("gzip").compress(b"text" * 100)),
        ("notes.txt", lambda: b"plain text"),
    ],
)
def test_other_files_are_mounted_as_files(
    tmp_path: Path, name: str, make: Callable[[], bytes]
) -> None:
    path = write(tmp_path, name, make())
    store = LayerStore(tmp_path / "state")

    (mount,) = store.resolve(BASE, [Ref("f", path=path, target=f"/app/{name}")]).mounts

    assert mount.source == path
    assert cache_entries(tmp_path / "state") == []


def test_a_base_can_be_a_rootfs_tarball(tmp_path: Path) -> None:
    data = tar_bytes([dir_("bin"), file_("bin/sh", b"#!", 0o755), dir_("etc")], "gz")
    named = write(tmp_path, "rootfs.tar.gz", data)
    unnamed = write(tmp_path, "rootfs.img", data)
    store = LayerStore(tmp_path / "state")

    assert (store.resolve_base(Ref("base", path=named)) / "bin" / "sh").is_file()
    assert store.resolve_base(Ref("base", path=unnamed)) == store.resolve_base(
        Ref("base", path=named)
    )


def test_archive_layers_cannot_be_rw(tmp_path: Path) -> None:
    archive = write(tmp_path, "app.tar", tar_bytes(GOOD))
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'app': .*app\.tar is an archive.*cannot be .*rw"):
        store.resolve(BASE, [Ref("app", path=archive, target="/app/app", rw=True)])


def test_archive_that_is_not_a_regular_file(tmp_path: Path) -> None:
    odd = tmp_path / "dir.tar"
    odd.mkdir()
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'x': .*dir\.tar is not a regular file"):
        store.resolve(BASE, [Ref("x", path=odd, target="/app/x")])
