"""Tests of mount planning (squish.runtime.mounts): layers as bwrap arguments.

Table-driven and pure: the host is a dictionary behind the ``HostView``
protocol, and each case asserts the exact argument list bwrap would get.
Grouped by behaviour: targets that exist in the base, targets that need a
directory exploded, kernel filesystems, refusals, and the ordering that holds
for every plan.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import pytest

from squish.errors import RuntimeFailure
from squish.layers import Mount
from squish.runtime.mounts import Kind, Pinned, Special, pin, plan_mounts

DIR, FILE, SPECIAL_FILE = Kind.DIR, Kind.FILE, Kind.OTHER


class FakeHost:
    """A ``HostView`` over a dictionary: path -> ``Kind``, or -> link text for a symlink.

    Every parent of a listed path is a directory; anything not listed is
    missing. Like lstat, a symlink is reported as a symlink and not followed.
    """

    def __init__(self, tree: Mapping[str, Kind | str]) -> None:
        self.tree: dict[PurePosixPath, Kind | str] = {}
        for path, node in tree.items():
            pure = PurePosixPath(path)
            for parent in pure.parents:
                self.tree.setdefault(parent, Kind.DIR)
            self.tree[pure] = node

    def kind(self, path: Path) -> Kind:
        node = self.tree.get(PurePosixPath(path), Kind.MISSING)
        return Kind.SYMLINK if isinstance(node, str) else node

    def entries(self, path: Path) -> list[str]:
        assert self.kind(path) is Kind.DIR, f"listed {path}, which is not a directory"
        return sorted(
            child.name
            for child in self.tree
            if child.parent == PurePosixPath(path) and child != child.parent
        )

    def readlink(self, path: Path) -> str:
        node = self.tree[PurePosixPath(path)]
        assert isinstance(node, str), f"readlink of {path}, which is not a symlink"
        return node


HOST = FakeHost(
    {
        # The base: an empty /app, an /etc with files, a directory and a symlink.
        "/base/app": DIR,
        "/base/bin/sh": FILE,
        "/base/dev": DIR,
        "/base/etc/hosts": FILE,
        "/base/etc/mtab": "/proc/mounts",
        "/base/etc/passwd": FILE,
        "/base/etc/ssl/cert.pem": FILE,
        "/base/proc": DIR,
        "/base/tmp": DIR,
        "/base/var/tmp": DIR,
        # Layers.
        "/layers/app/main.py": FILE,
        "/layers/app.toml": FILE,
        "/layers/cache": DIR,
        "/layers/conf": FILE,
        "/layers/fifo": SPECIAL_FILE,
        "/layers/hosts": FILE,
        "/layers/link": "app.toml",
        "/layers/run.sh": FILE,
        "/layers/x/bin/tool": FILE,
        "/layers/x/data.txt": FILE,
    }
)
BASE = Path("/base")
ROOT = ["--ro-bind", "/base", "/"]
TMP_SIZE = 1024
KERNEL = (
    Special("/proc", "proc"),
    Special("/dev", "dev"),
    Special("/tmp", "tmpfs", size=TMP_SIZE),
)
EXPLODED_ETC = [
    "--tmpfs",
    "/etc",
    "--ro-bind",
    "/base/etc/hosts",
    "/etc/hosts",
    "--symlink",
    "/proc/mounts",
    "/etc/mtab",
    "--ro-bind",
    "/base/etc/passwd",
    "/etc/passwd",
    "--ro-bind",
    "/base/etc/ssl",
    "/etc/ssl",
]


def ro(source: str, target: str) -> Mount:
    return Mount(Path(source), target, rw=False)


def rw(source: str, target: str) -> Mount:
    return Mount(Path(source), target, rw=True)


def plan(mounts: Sequence[Mount], specials: Sequence[Special] = ()) -> list[str]:
    return plan_mounts(BASE, mounts, specials, HOST)


DIRECT = [
    pytest.param([], [], ROOT, id="no layers: the base alone"),
    pytest.param(
        [ro("/layers/hosts", "/etc/hosts")],
        [],
        [*ROOT, "--ro-bind", "/layers/hosts", "/etc/hosts"],
        id="file over a file of the base",
    ),
    pytest.param(
        [ro("/layers/app", "/app")],
        [],
        [*ROOT, "--ro-bind", "/layers/app", "/app"],
        id="directory over a directory of the base",
    ),
    pytest.param(
        [rw("/layers/app", "/app")],
        [],
        [*ROOT, "--bind", "/layers/app", "/app"],
        id="rw layer is a writable bind",
    ),
    pytest.param(
        [ro("/layers/conf", "/app/main.py"), ro("/layers/app", "/app")],
        [],
        [*ROOT, "--ro-bind", "/layers/app", "/app", "--ro-bind", "/layers/conf", "/app/main.py"],
        id="file over a file of another layer, parent first whatever the input order",
    ),
]

EXPLODED = [
    pytest.param(
        [ro("/layers/run.sh", "/app/run.sh")],
        [],
        [
            *ROOT,
            "--tmpfs",
            "/app",
            "--ro-bind",
            "/layers/run.sh",
            "/app/run.sh",
            "--remount-ro",
            "/app",
        ],
        id="missing target under an empty base directory",
    ),
    pytest.param(
        [ro("/layers/run.sh", "/app/bin/run.sh")],
        [],
        [
            *ROOT,
            "--tmpfs",
            "/app",
            "--ro-bind",
            "/layers/run.sh",
            "/app/bin/run.sh",
            "--remount-ro",
            "/app",
        ],
        id="missing directories on the way are left to bwrap inside the tmpfs",
    ),
    pytest.param(
        [ro("/layers/run.sh", "/app/run.sh"), rw("/layers/cache", "/app/cache")],
        [],
        [
            *ROOT,
            "--tmpfs",
            "/app",
            "--ro-bind",
            "/layers/run.sh",
            "/app/run.sh",
            "--bind",
            "/layers/cache",
            "/app/cache",
            "--remount-ro",
            "/app",
        ],
        id="two layers in one exploded directory share one tmpfs",
    ),
    pytest.param(
        [ro("/layers/app.toml", "/etc/app.toml")],
        [],
        [
            *ROOT,
            *EXPLODED_ETC,
            "--ro-bind",
            "/layers/app.toml",
            "/etc/app.toml",
            "--remount-ro",
            "/etc",
        ],
        id="entries of the exploded directory are bound back, symlinks recreated",
    ),
    pytest.param(
        [ro("/layers/app.toml", "/etc/app.toml"), ro("/layers/hosts", "/etc/hosts")],
        [],
        [
            *ROOT,
            *[("/layers/hosts" if arg == "/base/etc/hosts" else arg) for arg in EXPLODED_ETC],
            "--ro-bind",
            "/layers/app.toml",
            "/etc/app.toml",
            "--remount-ro",
            "/etc",
        ],
        id="a layer over an entry replaces its bind-back (after the explosion)",
    ),
    pytest.param(
        [ro("/layers/hosts", "/etc/hosts"), ro("/layers/app.toml", "/etc/app.toml")],
        [],
        [
            *ROOT,
            *[("/layers/hosts" if arg == "/base/etc/hosts" else arg) for arg in EXPLODED_ETC],
            "--ro-bind",
            "/layers/app.toml",
            "/etc/app.toml",
            "--remount-ro",
            "/etc",
        ],
        id="a layer over an entry replaces its bind-back (before the explosion)",
    ),
    pytest.param(
        [ro("/layers/conf", "/data/x")],
        [],
        [
            *["--ro-bind", "/base/app", "/app"],
            *["--ro-bind", "/base/bin", "/bin"],
            *["--ro-bind", "/base/dev", "/dev"],
            *["--ro-bind", "/base/etc", "/etc"],
            *["--ro-bind", "/base/proc", "/proc"],
            *["--ro-bind", "/base/tmp", "/tmp"],
            *["--ro-bind", "/base/var", "/var"],
            *["--ro-bind", "/layers/conf", "/data/x"],
            *["--remount-ro", "/"],
        ],
        id="top-level directory missing: the root is exploded",
    ),
    pytest.param(
        [ro("/layers/conf", "/data/x")],
        KERNEL,
        [
            *["--proc", "/proc"],
            *["--dev", "/dev"],
            *["--size", str(TMP_SIZE), "--tmpfs", "/tmp"],
            *["--ro-bind", "/base/app", "/app"],
            *["--ro-bind", "/base/bin", "/bin"],
            *["--ro-bind", "/base/etc", "/etc"],
            *["--ro-bind", "/base/var", "/var"],
            *["--ro-bind", "/layers/conf", "/data/x"],
            *["--remount-ro", "/"],
        ],
        id="exploded root keeps the kernel filesystems instead of the base's dirs",
    ),
    pytest.param(
        [ro("/layers/x", "/app/x"), ro("/layers/conf", "/app/x/conf")],
        [],
        [
            *ROOT,
            *["--tmpfs", "/app"],
            *["--tmpfs", "/app/x"],
            *["--ro-bind", "/layers/x/bin", "/app/x/bin"],
            *["--ro-bind", "/layers/x/data.txt", "/app/x/data.txt"],
            *["--ro-bind", "/layers/conf", "/app/x/conf"],
            *["--remount-ro", "/app"],
            *["--remount-ro", "/app/x"],
        ],
        id="nested layer missing in its parent layer: the layer is exploded",
    ),
    pytest.param(
        [ro("/layers/conf", "/app/x/conf"), ro("/layers/x", "/app/x")],
        [],
        [
            *ROOT,
            *["--tmpfs", "/app"],
            *["--tmpfs", "/app/x"],
            *["--ro-bind", "/layers/x/bin", "/app/x/bin"],
            *["--ro-bind", "/layers/x/data.txt", "/app/x/data.txt"],
            *["--ro-bind", "/layers/conf", "/app/x/conf"],
            *["--remount-ro", "/app"],
            *["--remount-ro", "/app/x"],
        ],
        id="nested layers given child first plan the same",
    ),
]

SPECIALS = [
    pytest.param(
        [],
        KERNEL,
        [*ROOT, "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_SIZE), "--tmpfs", "/tmp"],
        id="proc, dev and a sized tmp",
    ),
    pytest.param(
        [],
        [Special("/var/tmp", "tmpfs"), Special("/tmp", "tmpfs", size=TMP_SIZE), KERNEL[0]],
        [
            *ROOT,
            *["--size", str(TMP_SIZE), "--tmpfs", "/tmp"],
            *["--proc", "/proc"],
            *["--tmpfs", "/var/tmp"],
        ],
        id="kernel filesystems come out in depth order, unsized tmpfs has no --size",
    ),
    pytest.param(
        [ro("/layers/cache", "/tmp/cache")],
        KERNEL,
        [
            *ROOT,
            *["--proc", "/proc"],
            *["--dev", "/dev"],
            *["--size", str(TMP_SIZE), "--tmpfs", "/tmp"],
            *["--ro-bind", "/layers/cache", "/tmp/cache"],
        ],
        id="a layer inside /tmp needs no explosion and no remount",
    ),
]

ALL_PLANS = DIRECT + EXPLODED + SPECIALS


# -- targets that exist in the base -------------------------------------------


@pytest.mark.parametrize(("mounts", "specials", "expected"), DIRECT)
def test_existing_targets_are_mounted_over_directly(
    mounts: list[Mount], specials: list[Special], expected: list[str]
) -> None:
    assert plan(mounts, specials) == expected


# -- missing targets: the nearest directory above is exploded ------------------


@pytest.mark.parametrize(("mounts", "specials", "expected"), EXPLODED)
def test_missing_targets_explode_the_nearest_directory(
    mounts: list[Mount], specials: list[Special], expected: list[str]
) -> None:
    assert plan(mounts, specials) == expected


# -- kernel filesystems ---------------------------------------------------------


@pytest.mark.parametrize(("mounts", "specials", "expected"), SPECIALS)
def test_kernel_filesystems(
    mounts: list[Mount], specials: list[Special], expected: list[str]
) -> None:
    assert plan(mounts, specials) == expected


# -- refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rootfs", "mounts", "message"),
    [
        pytest.param(
            BASE,
            [ro("/layers/conf", "/etc/mtab")],
            "layer /etc/mtab: /etc/mtab is a symlink in the container; use the real path",
            id="target is a symlink in the base",
        ),
        pytest.param(
            BASE,
            [ro("/layers/app.toml", "/etc/app.toml"), ro("/layers/conf", "/etc/mtab")],
            "layer /etc/mtab: /etc/mtab is a symlink in the container",
            id="target is a symlink recreated in an exploded directory",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/etc/mtab/x")],
            "layer /etc/mtab/x: /etc/mtab is a symlink in the container; use the real path",
            id="target below a symlink of the base",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/app")],
            "layer /app: /app is a directory in the container, the layer is a file",
            id="file layer onto a directory",
        ),
        pytest.param(
            BASE,
            [ro("/layers/app", "/etc/hosts")],
            "layer /etc/hosts: /etc/hosts is a file in the container, the layer is a directory",
            id="directory layer onto a file",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/etc/hosts/x")],
            "layer /etc/hosts/x: /etc/hosts is a file in the container, not a directory",
            id="target below a file",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/app/main.py/x"), ro("/layers/app", "/app")],
            "layer /app/main.py/x: /app/main.py is a file in the container, not a directory",
            id="target below a file of another layer",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/proc/x")],
            "layer /proc/x: /proc/x is a special file in the container",
            id="target under /proc",
        ),
        pytest.param(
            BASE,
            [ro("/layers/cache", "/proc/sys/x")],
            "layer /proc/sys/x: /proc/sys/x is a special file in the container",
            id="directory deep under /proc",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/dev/x")],
            "layer /dev/x: /dev/x is a special file in the container",
            id="target under /dev",
        ),
        pytest.param(
            BASE,
            [ro("/layers/conf", "/tmp")],
            "layer /tmp: /tmp is a directory in the container, the layer is a file",
            id="file layer onto the /tmp tmpfs",
        ),
        pytest.param(
            Path("/nowhere"),
            [],
            "rootfs /nowhere is not a directory",
            id="missing rootfs",
        ),
        pytest.param(
            Path("/layers/conf"),
            [],
            "rootfs /layers/conf is not a directory",
            id="rootfs is a file",
        ),
        pytest.param(
            BASE,
            [ro("/layers/link", "/app/link")],
            "layer for /app/link: /layers/link is a symlink, expected a file or directory",
            id="layer source is a symlink",
        ),
        pytest.param(
            BASE,
            [ro("/layers/fifo", "/app/fifo")],
            "layer for /app/fifo: /layers/fifo is a special file, expected a file or directory",
            id="layer source is a special file",
        ),
        pytest.param(
            BASE,
            [ro("/layers/gone", "/app/gone")],
            "layer for /app/gone: /layers/gone does not exist",
            id="layer source is missing",
        ),
        pytest.param(
            BASE,
            [rw("/layers/x", "/app/x"), ro("/layers/conf", "/app/x/conf")],
            "layer /app/x/conf: /app/x is a writable layer; "
            "create the mount point in /layers/x on the host",
            id="a mount point missing in a writable layer",
        ),
    ],
)
def test_unplaceable_layers_are_refused(rootfs: Path, mounts: list[Mount], message: str) -> None:
    with pytest.raises(RuntimeFailure, match=f"^{re.escape(message)}"):
        plan_mounts(rootfs, mounts, KERNEL, HOST)


def test_a_symlink_on_the_way_to_a_target_is_refused_on_a_real_host(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "libc.so").write_bytes(b"")
    base = tmp_path / "base"
    base.mkdir()
    (base / "lib64").symlink_to(elsewhere)  # absolute: resolved against the wrong root
    layer = tmp_path / "libc.so"
    layer.write_bytes(b"")

    with pytest.raises(RuntimeFailure, match="symlink"):
        plan_mounts(base, [Mount(layer, "/lib64/libc.so", rw=False)])


# -- sources bound from the fd they were checked through ----------------------


def test_pinned_sources_are_bound_from_their_fds() -> None:
    # The rootfs is exploded (nothing binds it as a whole), so its fd is not
    # bound and must not be handed to bwrap; the two layers are.
    pinned = Pinned(fds={"/": 10, "/etc/hosts": 11, "/sdk/cache": 12})

    argv = plan_mounts(
        BASE,
        [ro("/layers/hosts", "/etc/hosts"), rw("/layers/cache", "/sdk/cache")],
        (),
        HOST,
        pinned,
    )

    assert argv[-8:] == [
        "--ro-bind-fd", "11", "/etc/hosts",
        "--bind-fd", "12", "/sdk/cache",
        "--remount-ro", "/",
    ]  # fmt: skip
    assert "--ro-bind" in argv  # the rootfs's entries, bound back by path
    assert "10" not in argv and "/layers/hosts" not in argv and "/layers/cache" not in argv
    assert sorted(pinned.bound) == [11, 12]


def test_a_pinned_rootfs_bound_as_a_whole_is_bound_from_its_fd() -> None:
    pinned = Pinned(fds={"/": 10, "/app": 11})

    argv = plan_mounts(BASE, [ro("/layers/app", "/app")], (), HOST, pinned)

    assert argv == ["--ro-bind-fd", "10", "/", "--ro-bind-fd", "11", "/app"]
    assert pinned.bound == [10, 11]


@pytest.mark.parametrize("where", ["the-source", "a-parent"])
def test_pinning_refuses_a_source_that_leads_through_a_symlink(tmp_path: Path, where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    source = tmp_path / "layers" / "data"
    if where == "the-source":
        source.parent.mkdir()
        source.symlink_to(elsewhere / "data")
    else:
        source.parent.symlink_to(elsewhere)
    pinned = Pinned()

    with pytest.raises(RuntimeFailure, match=rf"^layer /data: {re.escape(str(source))} "):
        pin([("/data", source, "layer /data")], pinned)

    # What was opened is left for the caller to close.
    assert len(pinned.fds) == 1
    os.close(pinned.fds["/data"])


def test_pinning_opens_a_real_source_and_knows_its_kind(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    pinned = Pinned()
    try:
        pin([("/d", tmp_path / "dir", "d"), ("/f", tmp_path / "file", "f")], pinned)
        assert pinned.kinds == {tmp_path / "dir": DIR, tmp_path / "file": FILE}
        assert os.readlink(f"/proc/self/fd/{pinned.fds['/d']}") == str(tmp_path / "dir")
        with pytest.raises(RuntimeFailure, match="does not exist"):
            pin([("/m", tmp_path / "missing", "m")], pinned)
    finally:
        for fd in pinned.fds.values():
            os.close(fd)


# -- ordering: true of every plan ----------------------------------------------

ARITY = {
    "--ro-bind-fd": 2,
    "--bind-fd": 2,
    "--ro-bind": 2,
    "--bind": 2,
    "--symlink": 2,
    "--tmpfs": 1,
    "--proc": 1,
    "--dev": 1,
    "--remount-ro": 1,
}


def operations(argv: list[str]) -> list[tuple[str, str]]:
    """Split a plan into (option, container path) pairs; ``--size`` goes with its tmpfs."""
    ops: list[tuple[str, str]] = []
    rest = list(argv)
    while rest:
        option = rest.pop(0)
        if option == "--size":
            assert int(rest.pop(0)) > 0
            assert rest[0] == "--tmpfs", "--size must be followed by the --tmpfs it sizes"
            continue
        assert option in ARITY, f"unexpected {option!r} in {argv}"
        args = [rest.pop(0) for _ in range(ARITY[option])]
        ops.append((option, args[-1]))
    return ops


def is_inside(path: str, ancestor: str) -> bool:
    return path != ancestor and PurePosixPath(ancestor) in PurePosixPath(path).parents


@pytest.mark.parametrize(("mounts", "specials", "expected"), ALL_PLANS)
def test_parents_are_mounted_before_children_and_remounted_last(
    mounts: list[Mount], specials: list[Special], expected: list[str]
) -> None:
    ops = operations(plan(mounts, specials))
    mounted = [target for option, target in ops if option != "--remount-ro"]
    remounted = [target for option, target in ops if option == "--remount-ro"]

    # Every remount comes after every mount, and only for tmpfs owners.
    assert [option for option, _ in ops[len(mounted) :]] == ["--remount-ro"] * len(remounted)
    assert all(target in mounted or target == "/" for target in remounted)
    # Each container path is mounted once, after everything that contains it.
    assert len(mounted) == len(set(mounted))
    for index, target in enumerate(mounted):
        later = mounted[index + 1 :]
        assert not [parent for parent in later if is_inside(target, parent)], target


def test_ordering_check_catches_a_child_before_its_parent() -> None:
    # The property above must be able to fail.
    ops = operations(["--ro-bind", "/a", "/app/x", "--tmpfs", "/app"])
    mounted = [target for _, target in ops]
    assert is_inside(mounted[0], mounted[1])
