"""Start latency with a cached archive layer, side by side with a local directory layer.

Run as an ordinary user (squish is rootless):

    .venv/bin/python bench/cached_layer_start.py -n 100

Two containers that differ only in how their app layer is given, started
in turn (the order alternating every round, so that machine noise and
whatever one start leaves behind hit both alike):

- ``local``: ``app`` is a directory of ``--size-mb`` MB (a few hundred
  files), bind-mounted as it is: the anchor.
- ``archive``: ``app`` is a tar.gz of that same directory, unpacked into the
  layer cache by a warm-up resolve before any sample is taken.

Each sample is what a real start of an unchanged squishfile costs:
resolving its layers with ``squish.reconcile.spec.container_spec`` in a worker thread,
as the reconciler does (for the archive, the resolver's identity cache: an
open and an fstat, no re-hash), then ``BwrapRuntime.start`` with
``network = "none"`` until the command has run, which it signals through a
FIFO the way ``start_latency.py`` does, after checking that the layer is
mounted. Prints median and p90 per series, the median of the resolve step
alone, and the ratio archive / local (target: 1.00 within noise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread
from start_latency import READY, Fifo
from stats import median_p90

from squish.layers import LayerStore
from squish.model.host import host_paths
from squish.model.squishfile import Squishfile, parse_squishfile
from squish.reconcile.spec import container_spec
from squish.runtime.bwrap_runtime import BwrapRuntime

APP = "/app"
MARKER = "bin/hello"


def build_app(app: Path, size_mb: int) -> None:
    """A directory of about ``size_mb`` MB: a script, text and random files."""
    rng = random.Random(11)  # noqa: S311 (test data, not secrets)
    (app / "bin").mkdir(parents=True)
    hello = app / MARKER
    hello.write_text("#!/bin/sh\necho hello\n")
    hello.chmod(0o755)
    total, index = 0, 0
    while total < size_mb * 1024 * 1024:
        size = rng.choice((1024, 8192, 65536, 1 << 20))
        directory = app / "share" / f"d{index % 8}"
        directory.mkdir(parents=True, exist_ok=True)
        if index % 2:
            data = rng.randbytes(size)
        else:
            data = (f"line {index} of some text\n".encode() * (size // 16 + 1))[:size]
        (directory / f"f{index}").write_bytes(data)
        total += size
        index += 1


def archive_of(app: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for child in sorted(app.iterdir()):
            tar.add(child, arcname=child.name)


def squishfile(name: str, app_layer: Path, bench_dir: Path) -> Squishfile:
    text = f"""
network = "none"

[layers]
base = "busybox"
app = {{ path = {json.dumps(str(app_layer))}, target = "{APP}" }}
bench = {{ path = {json.dumps(str(bench_dir))}, target = "/mnt", rw = true }}

[run]
command = "/bin/sh"
args = ["-c", "[ -x {APP}/{MARKER} ] && echo > {READY}; exec sleep 1000"]
"""
    return parse_squishfile(
        text.encode(), file=f"{name}.toml", paths=host_paths(bench_dir.parent), name=name
    )


async def time_start(
    runtime: BwrapRuntime, sf: Squishfile, store: LayerStore, bench_dir: Path
) -> tuple[float, float]:
    """Seconds from the start of resolving to the command running, and of the resolve."""
    fifo = Fifo(bench_dir)
    try:
        started = time.perf_counter()
        spec = await anyio.to_thread.run_sync(container_spec, sf, store)
        resolved = time.perf_counter()
        container = await runtime.start(spec)
        ready = await fifo.wait()
        await runtime.stop(container.id, grace=0)
        return ready - started, resolved - started
    finally:
        fifo.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50, help="starts per series")
    parser.add_argument("--size-mb", type=int, default=32, help="size of the app layer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.getuid() == 0:
        sys.exit("run the benchmark as an ordinary user: squish is rootless")
    with tempfile.TemporaryDirectory(prefix="squish-bench-") as tmp:
        work = Path(tmp)
        app = work / "app"
        build_app(app, args.size_mb)
        archive = work / "app.tar.gz"
        archive_of(app, archive)
        archive_mb = archive.stat().st_size / 1e6
        bench_dir = work / "bench"
        bench_dir.mkdir()
        store = LayerStore(work / "state")
        files = {
            "local": squishfile("local", app, bench_dir),
            "archive": squishfile("archive", archive, bench_dir),
        }
        # The warm-up resolve: builds the base and unpacks the archive once.
        mounts = {name: container_spec(sf, store).mounts for name, sf in files.items()}
        unpacked = next(m.source for m in mounts["archive"] if m.target == APP)
        assert next(m.source for m in mounts["local"] if m.target == APP) == app
        assert store.cache.contains(unpacked), unpacked
        series: dict[str, list[float]] = {name: [] for name in files}
        resolves: dict[str, list[float]] = {name: [] for name in files}
        async with BwrapRuntime(run_dir=work / "run", log_dir=work / "logs") as runtime:
            for _ in range(3):  # warm caches for both series
                for sf in files.values():
                    await time_start(runtime, sf, store, bench_dir)
            for round_ in range(args.n):
                order = list(files) if round_ % 2 == 0 else list(reversed(files))
                for name in order:
                    # A start that never comes is a failure to report, not a hang.
                    with anyio.fail_after(10):
                        total, resolve = await time_start(runtime, files[name], store, bench_dir)
                    series[name].append(total)
                    resolves[name].append(resolve)
    anchor, _ = median_p90(series["local"])
    rows = []
    for name, samples in series.items():
        median, p90 = median_p90(samples)
        resolve, _ = median_p90(resolves[name])
        rows.append(
            {
                "series": name,
                "n": len(samples),
                "median_ms": round(median * 1e3, 2),
                "p90_ms": round(p90 * 1e3, 2),
                "resolve_median_ms": round(resolve * 1e3, 3),
                "ratio_to_local": round(median / anchor, 2),
            }
        )
    if args.json:
        print(
            json.dumps({"app_mb": args.size_mb, "archive_mb": round(archive_mb, 1), "rows": rows})
        )
        return
    print(f"app layer: {args.size_mb} MB directory, {archive_mb:.1f} MB tar.gz")
    print(
        f"{'series':<8} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'resolve ms':>11} {'x local':>8}"
    )
    for row in rows:
        print(
            f"{row['series']:<8} {row['n']:>4} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} "
            f"{row['resolve_median_ms']:>11.3f} {row['ratio_to_local']:>8.2f}"
        )


if __name__ == "__main__":
    anyio.run(main)
