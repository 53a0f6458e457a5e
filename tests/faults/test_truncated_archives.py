"""Fault: an archive layer cut short (an interrupted download or copy).

Each archive of 8 members is cut where its decompressed content ends exactly
after member 2: a compressed stream that stops at a flush point (or a block,
or a frame of a multi-frame file), a plain tar without its end-of-archive
blocks. ``tar -t`` (GNU tar with the real decompressors) is asked about
every file, and squish must agree with it wherever it complains: the archive
is refused and the resolver caches nothing. Where GNU tar says nothing (a
plain tar, or a whole compressed stream of a tar, stopping exactly at a
member boundary), squish is stricter on purpose, as nothing else tells such
a file from a whole one; see ``squish.layers.unpack``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from squish.errors import ArchiveRefused
from squish.layers import ArchiveResolver, LayerCache
from squish.layers.unpack import unpack

MEMBER = 3000
BLOCK = 512 + 3072  # a header, and the data padded to 512-byte blocks


def members() -> list[bytes]:
    """A tar of 8 members as its 8 parts (header and data each) and its end blocks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for index in range(8):
            data = os.urandom(MEMBER)
            info = tarfile.TarInfo(f"m{index}")
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    parts = [raw[index * BLOCK : (index + 1) * BLOCK] for index in range(8)]
    return [*parts, raw[8 * BLOCK :]]


PARTS = members()
WHOLE = b"".join(PARTS)
TWO = PARTS[0] + PARTS[1]


def gzip_flushed() -> bytes:
    """One gzip stream, flushed after each member, cut after the second flush."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(
        compressor.compress(part) + compressor.flush(zlib.Z_FULL_FLUSH) for part in PARTS[:2]
    )


def zstd_flushed() -> bytes:
    """One zstd frame, a block ending after each member, cut after the second."""
    compressor = zstandard.ZstdCompressor().compressobj()
    flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    return b"".join(compressor.compress(part) + compressor.flush(flush) for part in PARTS[:2])


def xz_blocks() -> bytes:
    """One xz stream of blocks of one member each (xz --block-size), cut after block 2."""
    whole = subprocess.run(
        ["xz", "-c", f"--block-size={BLOCK}"], input=WHOLE, capture_output=True, check=True
    ).stdout
    for length in range(len(whole)):
        decoder = lzma.LZMADecompressor()
        if len(decoder.decompress(whole[:length])) == len(TWO):
            return whole[:length]
    raise AssertionError("no cut of the xz stream ends after member 2")


def bzip2_streams() -> bytes:
    """A multi-stream bzip2 (one stream a member), the third stream cut to its header."""
    return bz2.compress(PARTS[0]) + bz2.compress(PARTS[1]) + bz2.compress(PARTS[2])[:4]


CUT: dict[str, Callable[[], bytes]] = {
    "cut.tar.gz": gzip_flushed,
    "cut.tar.xz": xz_blocks,
    "cut.tar.bz2": bzip2_streams,
    "cut.tar.zst": zstd_flushed,
}

# Whole compressed streams of a tar that stops after member 2, and that tar plain.
NO_END: dict[str, Callable[[], bytes]] = {
    "noend.tar": lambda: TWO,
    "noend.tar.gz": lambda: gzip.compress(TWO),
    "noend.tar.bz2": lambda: bz2.compress(TWO),
    "noend.tar.zst": lambda: zstandard.ZstdCompressor().compress(TWO),
}


def tar_list(archive: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tar", "-tf", str(archive)], capture_output=True, text=True, check=False, timeout=30
    )


def refused_and_not_cached(tmp_path: Path, archive: Path) -> str:
    cache = LayerCache(tmp_path / "layers")
    with pytest.raises(ArchiveRefused) as caught:
        ArchiveResolver(cache).materialise(archive)
    assert cache.digests() == []
    assert [child.name for child in (tmp_path / "layers" / "sha256").iterdir()] == []
    message = str(caught.value)
    assert message.startswith(f"{archive}: "), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(CUT))
def test_a_compressed_stream_that_ends_early_is_refused_as_gnu_tar_does(
    tmp_path: Path, name: str
) -> None:
    archive = tmp_path / name
    archive.write_bytes(CUT[name]())

    listed = tar_list(archive)
    assert listed.stdout.split() == ["m0", "m1"]  # what a partial layer would hold
    assert listed.returncode != 0, listed

    message = refused_and_not_cached(tmp_path, archive)
    assert "stream ends early, so the file is cut short" in message


@pytest.mark.parametrize("name", sorted(NO_END))
def test_a_tar_without_its_end_marker_is_refused_where_gnu_tar_is_silent(
    tmp_path: Path, name: str
) -> None:
    archive = tmp_path / name
    archive.write_bytes(NO_END[name]())

    listed = tar_list(archive)
    assert (listed.stdout.split(), listed.returncode, listed.stderr) == (["m0", "m1"], 0, "")

    message = refused_and_not_cached(tmp_path, archive)
    assert "the tar archive stops after member 'm1', without its end-of-archive marker" in message


def test_garbage_after_a_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "garbage.tar"
    archive.write_bytes(TWO + b"\x01" * 512 + PARTS[8])

    assert tar_list(archive).returncode != 0
    assert "is not a tar header" in refused_and_not_cached(tmp_path, archive)


@pytest.mark.parametrize(
    "compress",
    [
        lambda data: data,
        gzip.compress,
        bz2.compress,
        lambda data: zstandard.ZstdCompressor().compress(data),
        # Frames one after the other, as pzstd writes them.
        lambda data: b"".join(zstandard.ZstdCompressor().compress(part) for part in PARTS),
        lambda data: (
            subprocess.run(["xz", "-c"], input=data, capture_output=True, check=True).stdout
        ),
    ],
    ids=["tar", "gz", "bz2", "zst", "zst-frames", "xz"],
)
def test_whole_archives_still_unpack(tmp_path: Path, compress: Callable[[bytes], bytes]) -> None:
    archive = tmp_path / "whole.tar.x"
    archive.write_bytes(compress(WHOLE))
    into = tmp_path / "into"
    into.mkdir()

    assert tar_list(archive).returncode == 0
    unpack(archive, into)

    assert sorted(child.name for child in into.iterdir()) == [f"m{index}" for index in range(8)]
