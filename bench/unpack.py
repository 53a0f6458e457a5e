"""Unpack throughput: squish's safe unpacker against ``tar -xzf`` of the same archive.

    .venv/bin/python bench/unpack.py -n 5 --size-mb 100

Builds one tar.gz of about ``--size-mb`` MB unpacked (a tree of files of
mixed sizes, half random bytes and half text, so it compresses like real
software), then unpacks it ``-n`` times with each tool into fresh
directories on the same filesystem, interleaved. Prints median and p90 per
tool and the ratio to tar (the issue's target: within 1.5x).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from stats import median_p90

from squish.layers.unpack import Limits, unpack


def build_archive(path: Path, size_mb: int) -> int:
    """A tar.gz of ``size_mb`` MB of files; returns the unpacked byte count."""
    rng = random.Random(42)  # noqa: S311 (test data, not secrets)
    total = 0
    target = size_mb * 1024 * 1024
    with tarfile.open(path, "w:gz", compresslevel=6) as archive:
        index = 0
        while total < target:
            size = rng.choice((512, 4096, 65536, 1 << 20, 4 << 20))
            if index % 2:
                data = rng.randbytes(size)
            else:
                line = f"line {index} of some text that compresses well\n".encode()
                data = (line * (size // len(line) + 1))[:size]
            info = tarfile.TarInfo(f"dir{index % 17}/sub{index % 5}/file{index}")
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, _Reader(data))
            total += size
            index += 1
    return total


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk = bytes(self.data[self.offset : end])
        self.offset += len(chunk)
        return chunk


def time_tar(archive: Path, into: Path) -> float:
    into.mkdir()
    started = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(into)], check=True)
    return time.perf_counter() - started


def time_squish(archive: Path, into: Path) -> float:
    into.mkdir()
    started = time.perf_counter()
    unpack(archive, into, limits=Limits())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="unpacks per tool")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="squish-bench-unpack-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        archive = work / "layer.tar.gz"
        unpacked = build_archive(archive, args.size_mb)
        series: dict[str, list[float]] = {"tar -xzf": [], "squish": []}
        for run in range(args.n + 1):  # the first round warms the page cache
            for name, measure in (("tar -xzf", time_tar), ("squish", time_squish)):
                into = work / f"{name.split()[0]}-{run}"
                seconds = measure(archive, into)
                shutil.rmtree(into)
                if run:
                    series[name].append(seconds)
    anchor, _ = median_p90(series["tar -xzf"])
    rows = []
    for name, samples in series.items():
        median, p90 = median_p90(samples)
        rows.append(
            {
                "tool": name,
                "n": len(samples),
                "median_s": round(median, 3),
                "p90_s": round(p90, 3),
                "mb_per_s": round(unpacked / 1e6 / median, 1),
                "ratio_to_tar": round(median / anchor, 2),
            }
        )
    if args.json:
        print(json.dumps({"unpacked_bytes": unpacked, "rows": rows}))
        return
    print(f"archive: {unpacked / 1e6:.0f} MB unpacked")
    print(f"{'tool':<10} {'n':>3} {'median s':>9} {'p90 s':>7} {'MB/s':>7} {'x tar':>6}")
    for row in rows:
        print(
            f"{row['tool']:<10} {row['n']:>3} {row['median_s']:>9.3f} {row['p90_s']:>7.3f} "
            f"{row['mb_per_s']:>7.1f} {row['ratio_to_tar']:>6.2f}"
        )


if __name__ == "__main__":
    main()
