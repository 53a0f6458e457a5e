"""Tests of the layer store (``squish.layers``), grouped by behaviour.

No privileges needed: everything happens under pytest's ``tmp_path``. The
built-in base is built from the host's busybox-static, which CI installs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from squish.errors import LayerError
from squish.layers import (
    BUILTIN_BASE,
    LayerCache,
    LayerKind,
    LayerStore,
    Mount,
    RecordingResolver,
    ResolvedLayers,
)
from squish.layers.busybox import ETC_FILES, MOUNT_POINTS, applet_path
from squish.model.host import host_paths
from squish.model.squishfile import parse_squishfile
from tests.layer_ref import Ref


def elf64(*p_types: int) -> bytes:
    """A minimal little-endian ELF64 header with program headers of these types."""
    phentsize = 56
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x400000, 64, 0, 0, 64, phentsize, len(p_types), 0, 0, 0
    )
    phdrs = b"".join(struct.pack("<IIQQQQQQ", t, 5, 0, 0, 0, 0, 0, 0x1000) for t in p_types)
    return header + phdrs


PT_LOAD, PT_INTERP = 1, 3


@pytest.fixture(scope="module")
def host_busybox() -> Path:
    found = shutil.which("busybox")
    assert found is not None, "busybox-static must be installed for these tests"
    return Path(found)


@pytest.fixture(scope="module")
def shared_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-in base for the tests that only read it."""
    return LayerStore(tmp_path_factory.mktemp("state")).builtin_base()


def cache_entries(state_dir: Path) -> list[str]:
    entries = state_dir / "layers" / "sha256"
    return sorted(child.name for child in entries.iterdir()) if entries.exists() else []


# --- path layers -------------------------------------------------------------


def test_path_layers_resolve_to_mounts_in_order(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    conf = tmp_path / "app.toml"
    conf.write_text("x = 1\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    store = LayerStore(tmp_path / "state", default_base=str(app))

    resolved = store.resolve(
        None,
        [
            Ref("app", path=app, target="/app/app"),
            Ref("conf", path=conf, target="/etc/app.toml"),
            Ref("scratch", path=scratch, target="/app/scratch", rw=True),
        ],
    )

    assert resolved == ResolvedLayers(
        rootfs=app,
        mounts=(
            Mount(source=app, target="/app/app", rw=False),
            Mount(source=conf, target="/etc/app.toml", rw=False),
            Mount(source=scratch, target="/app/scratch", rw=True),
        ),
    )


def test_path_layer_through_a_symlink_mounts_the_real_path(tmp_path: Path) -> None:
    # The squishfile's reader follows the symlink the user wrote (a
    # "current" link to a release, say); the store is handed the release.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    squishfile = parse_squishfile(
        b'[layers]\napp = "./link"\n[run]\ncommand = "/app/x"\n',
        file="app.toml",
        paths=host_paths(tmp_path),
        name="app",
    )
    store = LayerStore(tmp_path / "state")

    (mount,) = store.resolve(None, squishfile.layers).mounts

    assert mount.source == real


@pytest.mark.parametrize("where", ["the-path", "a-parent"])
def test_a_symlink_that_appeared_since_the_squishfile_was_read_is_refused(
    tmp_path: Path, where: str
) -> None:
    # The store is handed resolved paths; a symlink on one now was put there
    # since, and following it would mount what nobody checked.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "app").mkdir(parents=True)
    layer = tmp_path / "layers" / "app"
    if where == "the-path":
        layer.parent.mkdir()
        layer.symlink_to(elsewhere / "app")
    else:
        layer.parent.symlink_to(elsewhere)
    store = LayerStore(tmp_path / "state")

    with pytest.raises(
        LayerError,
        match=rf"^layer 'app': {re.escape(str(layer))} leads through a symlink now "
        rf"\(to {re.escape(str(elsewhere / 'app'))}\); a layer's path is resolved once",
    ):
        store.resolve(None, [Ref("app", path=layer, target="/app/x")])


def test_a_state_directory_reached_through_a_symlink_gives_resolved_layer_paths(
    tmp_path: Path,
) -> None:
    # Cached layers (the built-in base, a git source's trees) are handed to
    # the runtime as they are, and it refuses a path that leads through a
    # symlink: the store resolves its state directory once.
    (tmp_path / "disk" / "state").mkdir(parents=True)
    (tmp_path / "state").symlink_to(tmp_path / "disk" / "state")
    store = LayerStore(tmp_path / "state")
    archive = tmp_path / "app.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "disk", arcname="x")

    resolved = store.resolve(None, [Ref("app", path=archive, target="/app/x")])

    assert resolved.rootfs.is_relative_to(tmp_path / "disk" / "state")
    assert resolved.rootfs == resolved.rootfs.resolve()
    (mount,) = resolved.mounts
    assert mount.source.is_relative_to(tmp_path / "disk" / "state")
    assert mount.source == mount.source.resolve()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (
            lambda p: p.symlink_to(p.parent / "gone"),
            "is a symlink to something that does not exist",
        ),
    ],
)
def test_missing_path_names_the_layer(
    tmp_path: Path, make: Callable[[Path], None], message: str
) -> None:
    missing = tmp_path / "app.toml"
    make(missing)
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=rf"^layer 'conf': {re.escape(str(missing))} {message}$"):
        store.resolve(None, [Ref("conf", path=missing, target="/etc/app.toml")])


def test_special_files_are_not_layers(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'null': /dev/null is not a regular file"):
        store.resolve(None, [Ref("null", path=Path("/dev/null"), target="/dev/x")])


def test_relative_path_is_refused(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'app': app is not an absolute host path"):
        store.resolve(None, [Ref("app", path=Path("app"), target="/app/app")])


@pytest.mark.parametrize("target", ["/", "app", "/app/../etc"])
def test_layer_targets_must_be_absolute_and_below_root(tmp_path: Path, target: str) -> None:
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'app': "):
        store.resolve(None, [Ref("app", path=tmp_path, target=target)])


def test_base_given_as_a_path_must_be_a_directory(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    not_dir = tmp_path / "rootfs.img"
    not_dir.write_text("")
    store = LayerStore(tmp_path / "state")

    assert store.resolve_base(Ref("base", path=rootfs)) == rootfs
    with pytest.raises(LayerError, match=r"^base 'base': .*rootfs.img is not a directory"):
        store.resolve_base(Ref("base", path=not_dir))


# --- kinds that need something not there yet ---------------------------------


def test_version_layer_needs_a_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQUISH_REGISTRY", raising=False)
    store = LayerStore(tmp_path / "state")

    with pytest.raises(
        LayerError,
        match=r"^layer 'python': no layer registry is configured for 'python' .*"
        r"squish layer import python 3\.11 FILE",
    ):
        store.resolve(None, [Ref("python", version="3.11", target="/sdk/python")])


def test_alpine_base_with_an_unreachable_mirror_and_no_cache_says_so(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "state", alpine_mirror="http://127.0.0.1:1")

    with pytest.raises(
        LayerError,
        match=r"^base 'alpine' 3\.14: the Alpine mirror is unreachable .*nothing is cached",
    ):
        store.resolve_base(Ref("alpine", version="3.14"))


@pytest.mark.parametrize(
    ("base", "label"),
    [(Ref("base", version="ubuntu"), "base 'base' ubuntu"), (None, "default base 'ubuntu'")],
)
def test_unknown_base_says_what_works(tmp_path: Path, base: Ref | None, label: str) -> None:
    store = LayerStore(tmp_path / "state", default_base="ubuntu")

    with pytest.raises(
        LayerError, match=rf"^{label}: unknown base 'ubuntu'; use base = \"busybox\""
    ):
        store.resolve_base(base)


def test_a_file_named_like_an_archive_must_be_one(tmp_path: Path) -> None:
    # Named like an archive, it is never mounted as a file (more in test_unpack).
    archive = tmp_path / "app.tar.gz"
    archive.write_bytes(b"")
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'app': .*app.tar.gz is not an archive \("):
        store.resolve(None, [Ref("app", path=archive, target="/app/app")])
    assert cache_entries(tmp_path / "state") == []


def test_layer_with_neither_path_nor_version(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"^layer 'odd': has neither a path nor a version$"):
        store.resolve(None, [Ref("odd", target="/app/odd")])


def test_a_resolver_slots_in_for_its_kind(tmp_path: Path) -> None:
    sdk = tmp_path / "python-3.11"
    registry = RecordingResolver(sdk)
    store = LayerStore(tmp_path / "state", resolvers={LayerKind.REGISTRY: registry})

    resolved = store.resolve(
        Ref("base", path=tmp_path), [Ref("python", version="3.11", target="/sdk/python")]
    )

    assert resolved.mounts == (Mount(source=sdk, target="/sdk/python", rw=False),)
    assert registry.resolved == ["python"]


def test_resolver_errors_are_labelled_once(tmp_path: Path) -> None:
    registry = RecordingResolver(tmp_path, error="3.11 is not in the registry")
    store = LayerStore(tmp_path / "state", resolvers={LayerKind.REGISTRY: registry})

    with pytest.raises(LayerError) as caught:
        store.resolve(None, [Ref("python", version="3.11", target="/sdk/python")])

    assert str(caught.value) == "layer 'python': 3.11 is not in the registry"


# --- the built-in base -------------------------------------------------------


def test_default_base_is_the_builtin_busybox_rootfs(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "state")

    rootfs = store.resolve_base(None)

    assert rootfs == store.builtin_base()
    assert rootfs == store.resolve_base(Ref("base", version=BUILTIN_BASE))
    assert rootfs.parent == tmp_path / "state" / "layers" / "sha256"
    assert (rootfs / "bin" / "busybox").is_file()


def test_builtin_base_links_every_applet_to_busybox(
    shared_rootfs: Path, host_busybox: Path
) -> None:
    busybox = shared_rootfs / "bin" / "busybox"
    assert busybox.read_bytes() == host_busybox.read_bytes()
    assert stat.S_IMODE(busybox.stat().st_mode) == 0o755
    assert os.readlink(shared_rootfs / "bin" / "sh") == "busybox"
    assert os.readlink(shared_rootfs / "usr" / "bin" / "wget") == "../../bin/busybox"

    listed = subprocess.run(
        [str(host_busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in listed:
        if applet == "bin/busybox":
            continue  # busybox lists itself; that one is the real binary
        link = shared_rootfs / applet
        assert link.is_symlink(), applet
        assert link.resolve() == busybox.resolve(), applet


def test_builtin_base_etc_files(shared_rootfs: Path) -> None:
    etc = shared_rootfs / "etc"
    passwd = (etc / "passwd").read_text().splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" in passwd
    group = (etc / "group").read_text()
    assert "root:x:0:" in group
    assert "nogroup:x:65534:" in group
    assert (etc / "hosts").read_text().split("\n")[:2] == ["127.0.0.1\tlocalhost", "::1\tlocalhost"]
    assert (etc / "resolv.conf").read_text() == "nameserver 10.0.2.3\n"
    assert "hosts: files dns" in (etc / "nsswitch.conf").read_text()
    assert 'NAME="squish busybox base"' in (etc / "os-release").read_text()
    assert sorted(child.name for child in etc.iterdir()) == sorted(ETC_FILES)


def test_builtin_base_has_empty_mount_points(shared_rootfs: Path) -> None:
    for name in ("proc", "dev", "sys", "tmp", "run", "var/tmp", "root", "home", "app", "sdk"):
        assert name in MOUNT_POINTS
    for name in MOUNT_POINTS:
        path = shared_rootfs / name
        assert path.is_dir() and not path.is_symlink(), name
        assert list(path.iterdir()) == [], name
    assert stat.S_IMODE((shared_rootfs / "tmp").stat().st_mode) == 0o1777


def test_builtin_base_is_world_readable_and_owner_writable_only(shared_rootfs: Path) -> None:
    assert stat.S_IMODE(shared_rootfs.stat().st_mode) == 0o755
    for dirpath, dirnames, filenames in os.walk(shared_rootfs):
        for name in dirnames + filenames:
            info = (Path(dirpath) / name).lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_ISDIR(info.st_mode):
                assert mode in (0o755, 0o1777), (dirpath, name, oct(mode))
            else:
                assert mode in (0o644, 0o755), (dirpath, name, oct(mode))


def test_builtin_base_runs_a_real_shell(shared_rootfs: Path) -> None:
    for argv in (["bin/busybox", "sh"], ["bin/sh"]):
        result = subprocess.run(
            [str(shared_rootfs / argv[0]), *argv[1:], "-c", "echo hi"],
            capture_output=True,
            text=True,
            check=False,
            env={},
        )
        assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_builtin_base_is_built_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = LayerStore(state).builtin_base()
    before = (first.stat().st_ino, (first / "etc" / "passwd").stat().st_mtime_ns)

    again = LayerStore(state).builtin_base()  # a new store: only the disk remembers

    assert again == first
    assert (again.stat().st_ino, (again / "etc" / "passwd").stat().st_mtime_ns) == before
    assert cache_entries(state) == [first.name]


def test_a_new_busybox_builds_a_new_base(tmp_path: Path, host_busybox: Path) -> None:
    busybox = tmp_path / "busybox"
    shutil.copy(host_busybox, busybox)
    store = LayerStore(tmp_path / "state", busybox=busybox)
    old = store.builtin_base()

    # Trailing bytes change the hash but not what the binary does.
    with busybox.open("ab") as binary:
        binary.write(b"\0upgraded")
    new = store.builtin_base()

    assert new != old
    assert (new / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    assert cache_entries(tmp_path / "state") == sorted([old.name, new.name])


def test_concurrent_builds_in_threads_end_with_one_base(tmp_path: Path) -> None:
    state = tmp_path / "state"
    barrier = threading.Barrier(6)
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        store = LayerStore(state)
        barrier.wait()
        try:
            results.append(store.builtin_base())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(results)) == 1
    assert cache_entries(state) == [results[0].name]
    assert (results[0] / "bin" / "sh").is_symlink()


def test_concurrent_builds_in_processes_end_with_one_base(
    tmp_path: Path, host_busybox: Path
) -> None:
    state = tmp_path / "state"
    script = (
        "import sys; from pathlib import Path; from squish.layers import LayerStore; "
        "print(LayerStore(Path(sys.argv[1]), busybox=Path(sys.argv[2])).builtin_base())"
    )
    builders = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(state), str(host_busybox)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [builder.communicate(timeout=30) for builder in builders]

    assert [builder.returncode for builder in builders] == [0] * 4, outputs
    paths = {Path(stdout.strip()) for stdout, _ in outputs}
    assert len(paths) == 1
    (rootfs,) = paths
    assert cache_entries(state) == [rootfs.name]
    assert (rootfs / "etc" / "passwd").is_file()
    assert (rootfs / "bin" / "sh").is_symlink()


def test_dynamic_busybox_is_refused(tmp_path: Path) -> None:
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(elf64(6, PT_INTERP, PT_LOAD))
    store = LayerStore(tmp_path / "state", busybox=dynamic)

    with pytest.raises(
        LayerError,
        match=r"^built-in base 'busybox': .*busybox is dynamically linked .*install busybox-static",
    ):
        store.builtin_base()
    with pytest.raises(LayerError, match=r"^default base 'busybox': .*dynamically linked"):
        store.resolve_base(None)
    assert cache_entries(tmp_path / "state") == []


def test_not_an_elf_busybox_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho bin/sh\n")
    script.chmod(0o755)
    store = LayerStore(tmp_path / "state", busybox=script)

    with pytest.raises(LayerError, match=r"is not an ELF executable; install busybox-static"):
        store.builtin_base()


def test_static_binary_that_cannot_run_leaves_no_base(tmp_path: Path) -> None:
    bogus = tmp_path / "busybox"
    bogus.write_bytes(elf64(PT_LOAD))  # static by its headers, but no code at all
    store = LayerStore(tmp_path / "state", busybox=bogus)

    with pytest.raises(LayerError, match=r"^built-in base 'busybox': "):
        store.builtin_base()
    assert cache_entries(tmp_path / "state") == []


def test_no_busybox_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    store = LayerStore(tmp_path / "state")

    with pytest.raises(LayerError, match=r"no busybox found on PATH; install busybox-static"):
        store.builtin_base()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("bin/sh", PurePosixPath("bin/sh")),
        ("usr/bin/wget", PurePosixPath("usr/bin/wget")),
        ("linuxrc", PurePosixPath("linuxrc")),
        ("", None),
        ("/bin/sh", None),
        ("../etc/passwd", None),
        ("usr/../../x", None),
        ("usr//bin/x", None),
        ("./bin/x", None),
    ],
)
def test_applet_entries_that_would_escape_are_skipped(
    entry: str, expected: PurePosixPath | None
) -> None:
    assert applet_path(entry) == expected


# --- the content-addressed cache ---------------------------------------------

DIGEST = "ab" * 32


def test_materialise_builds_once_into_the_cache_layout(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers")
    calls: list[Path] = []

    def build(root: Path) -> None:
        calls.append(root)
        (root / "marker").write_text("ok")

    first = cache.materialise(DIGEST, build)
    second = cache.materialise(DIGEST, build)

    assert first == second == tmp_path / "layers" / "sha256" / DIGEST
    assert len(calls) == 1
    assert calls[0] != first  # built elsewhere, then renamed
    assert (first / "marker").read_text() == "ok"
    assert stat.S_IMODE(first.stat().st_mode) == 0o755
    assert cache.get(DIGEST) == first


def test_failing_builder_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers")

    def build(root: Path) -> None:
        (root / "half").mkdir()
        (root / "half" / "file").write_text("x")
        (root / "half").chmod(0o555)  # even a read-only leftover is removed
        raise RuntimeError("builder broke")

    with pytest.raises(RuntimeError, match="builder broke"):
        cache.materialise(DIGEST, build)

    assert cache_entries(tmp_path) == []
    assert cache.get(DIGEST) is None


def test_builder_os_errors_become_layer_errors(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers")

    def build(root: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(LayerError, match=r"cannot build .*No space left on device"):
        cache.materialise(DIGEST, build)
    assert cache_entries(tmp_path) == []


def test_losing_the_race_uses_the_winners_entry(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers")

    def winner(root: Path) -> None:
        (root / "who").write_text("winner")

    def loser(root: Path) -> None:
        (root / "who").write_text("loser")
        # Another builder finishes while this one is still working.
        cache.materialise(DIGEST, winner)

    entry = cache.materialise(DIGEST, loser)

    assert (entry / "who").read_text() == "winner"
    assert cache_entries(tmp_path) == [DIGEST]


def test_abandoned_builds_are_swept_but_live_ones_kept(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers")
    entries = tmp_path / "layers" / "sha256"
    entries.mkdir(parents=True)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(finished.stdout)
    dead = entries / f".{DIGEST}.{dead_pid}.x1.tmp"
    (dead / "sub").mkdir(parents=True)
    live = entries / f".{DIGEST}.{os.getpid()}.x2.tmp"
    live.mkdir()

    cache.materialise("cd" * 32, lambda root: None)

    assert not dead.exists()
    assert live.exists()


def test_digest_must_be_sha256_hex(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers")

    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        cache.path_for("../etc")


# --- pinned digests of path layers ----------------------------------------------


def test_a_pinned_archive_or_file_must_have_its_sha256(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    tarball = tmp_path / "app.tar.gz"
    tarball.write_bytes(buffer.getvalue())
    conf = tmp_path / "app.conf"
    conf.write_text("x = 1\n")
    right = hashlib.sha256(tarball.read_bytes()).hexdigest()
    store = LayerStore(tmp_path / "state")

    resolved = store.resolve(None, [Ref("app", path=tarball, target="/app", sha256=right)])
    assert (resolved.mounts[0].source / "hello.txt").read_text() == "hi"
    # Known by identity now; the pin is still checked.
    with pytest.raises(LayerError, match=r"^layer 'app': .*app\.tar\.gz has sha256 .* pins 0+;"):
        store.resolve(None, [Ref("app", path=tarball, target="/app", sha256="0" * 64)])
    with pytest.raises(LayerError, match=r"^layer 'conf': .*app\.conf has sha256 .* pins 1+;"):
        store.resolve(None, [Ref("conf", path=conf, target="/etc/app.conf", sha256="1" * 64)])
    with pytest.raises(LayerError, match="is a directory; sha256 can only pin a file or archive"):
        store.resolve(None, [Ref("dir", path=tmp_path, target="/data", sha256="1" * 64)])
    fresh = LayerStore(tmp_path / "state")  # nothing known by identity: hashed
    with pytest.raises(LayerError, match=r"pins 2+; refusing it"):
        fresh.resolve(None, [Ref("app", path=tarball, target="/app", sha256="2" * 64)])
