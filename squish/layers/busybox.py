"""The built-in base: a rootfs built offline from the host's static busybox.

``LayerStore`` uses ``BusyboxBase`` as the resolver for ``base = "busybox"``,
which is also the default base, so squish runs containers with no network
and no images at all. The rootfs is built once into the layer cache, keyed by
the sha256 of the busybox binary and ``BUILDER_VERSION`` (an upgraded busybox,
or a change to what is built here, gives a new entry), and then shared
read-only by every container.

It holds ``bin/busybox``, a relative symlink for every applet busybox lists,
the few ``/etc`` files a libc-less userland and slirp4netns's DNS need, and
empty directories the runtime mounts over (``/app`` and ``/sdk`` exist so
layers land there without the runtime having to fake a parent directory).

Every use checks the few files everything in the base depends on
(``bin/busybox`` whole and executable, ``bin/sh`` a link to it): a few
``lstat`` calls, beside the cache's check of the whole entry against its
manifest now and then. A base that fails it is moved aside and built again,
with a warning, rather than crash-looping every container on it.

Only a statically linked busybox will do: the container has no dynamic loader
or libc, so a dynamic one would fail with a baffling "not found" at start.
That is checked by reading the ELF program headers, before anything runs.

Asking busybox for its applet list (``busybox --list-full``) is the one
subprocess outside ``squish.runtime``; there is no other reliable source.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import struct
import subprocess
import threading
from pathlib import Path, PurePosixPath

from squish.errors import LayerError
from squish.layers.cache import LayerCache
from squish.layers.model import LayerRef

BUILDER_VERSION = 1
"""Bump whenever the built tree changes, so existing bases are rebuilt."""

INSTALL_HINT = "install busybox-static (Debian/Ubuntu: apt install busybox-static)"

MOUNT_POINTS = (
    "proc",
    "dev",
    "sys",
    "tmp",
    "run",
    "var/tmp",
    "root",
    "home",
    "app",
    "sdk",
    "mnt",
)
STICKY_DIRS = ("tmp", "var/tmp")

ETC_FILES = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    ),
    # Debian calls gid 65534 nogroup, Alpine nobody; either name resolves.
    "group": "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    # slirp4netns answers DNS on 10.0.2.3 inside the container's network.
    "resolv.conf": "nameserver 10.0.2.3\n",
    "nsswitch.conf": "hosts: files dns\n",
    "os-release": (
        'NAME="squish busybox base"\n'
        "ID=squish-busybox\n"
        f"VERSION_ID={BUILDER_VERSION}\n"
        f'PRETTY_NAME="squish busybox base {BUILDER_VERSION}"\n'
    ),
}

_PT_INTERP = 3
_LIST_TIMEOUT = 30.0


class BusyboxBase:
    """Builds (once) and returns the built-in busybox rootfs; a ``Resolver``.

    ``busybox`` overrides the binary found on ``PATH``. Safe to call from
    several threads and processes at once: the cache makes the build atomic,
    and a lock keeps this process from building the same thing twice.
    """

    def __init__(self, cache: LayerCache, *, busybox: Path | None = None) -> None:
        self.cache = cache
        self.busybox = busybox
        self._lock = threading.Lock()
        # (identity of the binary last hashed, its rootfs): skips re-reading
        # and hashing the binary on every container start.
        self._known: tuple[tuple[int, int, int, int], Path] | None = None

    def resolve(self, layer: LayerRef) -> Path:
        return self.materialise()

    def cached(self, layer: LayerRef | None = None) -> Path | None:
        """The rootfs for the current busybox if it is built (never builds)."""
        try:
            binary = self._locate().read_bytes()
        except (OSError, LayerError):
            return None
        return self.cache.get(base_digest(binary))

    def materialise(self) -> Path:
        """Return the rootfs for the current busybox, building it if needed."""
        with self._lock:
            source = self._locate()
            try:
                info = source.stat()
            except OSError as exc:
                raise LayerError(f"cannot read {source}: {exc.strerror}") from exc
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            if self._known is not None and self._known[0] == identity:
                rootfs = self._known[1]
                problem = broken_base(rootfs, info.st_size)
                if problem is None and self.cache.get(rootfs.name) is not None:
                    return rootfs
                if problem is not None:
                    self.cache.discard(rootfs.name, problem)
            try:
                binary = source.read_bytes()
            except OSError as exc:
                raise LayerError(f"cannot read {source}: {exc.strerror}") from exc
            check_static(binary, source)
            digest = base_digest(binary)
            rootfs = self.cache.materialise(digest, lambda root: build_rootfs(root, binary, source))
            problem = broken_base(rootfs, len(binary))
            if problem is not None:
                # Damaged without its manifest noticing (one an older squish
                # never wrote): once more, from scratch.
                self.cache.discard(digest, problem)
                rootfs = self.cache.materialise(
                    digest, lambda root: build_rootfs(root, binary, source)
                )
            self._known = (identity, rootfs)
            return rootfs

    def _locate(self) -> Path:
        if self.busybox is not None:
            return self.busybox
        found = shutil.which("busybox")
        if found is None:
            raise LayerError(f"no busybox found on PATH; {INSTALL_HINT}")
        return Path(found)


def broken_base(rootfs: Path, size: int) -> str | None:
    """What is wrong with the files everything in the base at ``rootfs`` needs, or None.

    ``size`` is the size of the busybox it was built from.
    """
    try:
        info = os.lstat(rootfs / "bin" / "busybox")
    except FileNotFoundError:
        return "bin/busybox is missing"
    except OSError as exc:
        return f"bin/busybox cannot be read: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != 0o755:
        return f"bin/busybox has mode {info.st_mode:o} instead of 100755"
    if info.st_size != size:
        return f"bin/busybox has {info.st_size} bytes instead of {size}"
    if not os.path.islink(rootfs / "bin" / "sh"):
        return "bin/sh is missing"
    return None


def base_digest(binary: bytes) -> str:
    """The cache key of the base built from ``binary`` by this builder."""
    key = hashlib.sha256(f"squish busybox base v{BUILDER_VERSION}\n".encode())
    key.update(hashlib.sha256(binary).digest())
    return key.hexdigest()


def check_static(binary: bytes, source: Path) -> None:
    """Refuse anything but a statically linked ELF executable.

    A static binary has no ``PT_INTERP`` program header (static-pie
    included); a dynamic one names its loader there.
    """
    not_elf = LayerError(f"{source} is not an ELF executable; {INSTALL_HINT}")
    if len(binary) < 64 or binary[:4] != b"\x7fELF":
        raise not_elf
    elf_class, data = binary[4], binary[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise not_elf
    order = "<" if data == 1 else ">"
    if elf_class == 2:
        (phoff,) = struct.unpack_from(order + "Q", binary, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", binary, 54)
    else:
        (phoff,) = struct.unpack_from(order + "I", binary, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", binary, 42)
    if phnum == 0 or phentsize < 4 or phoff + phentsize * phnum > len(binary):
        raise not_elf
    for index in range(phnum):
        (p_type,) = struct.unpack_from(order + "I", binary, phoff + index * phentsize)
        if p_type == _PT_INTERP:
            raise LayerError(
                f"{source} is dynamically linked and cannot run inside a container "
                f"(the built-in base has no libc); {INSTALL_HINT}"
            )


def build_rootfs(root: Path, binary: bytes, source: Path) -> None:
    """Fill the empty directory ``root`` with the built-in base.

    Modes are set explicitly rather than left to the umask: the tree must be
    readable by whatever unprivileged user a container runs as.
    """
    _make_dirs(root, PurePosixPath("bin"))
    executable = root / "bin" / "busybox"
    executable.write_bytes(binary)
    executable.chmod(0o755)

    _make_dirs(root, PurePosixPath("etc"))
    for name, text in ETC_FILES.items():
        path = root / "etc" / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)

    for mount_point in MOUNT_POINTS:
        _make_dirs(root, PurePosixPath(mount_point))
    for sticky in STICKY_DIRS:
        (root / sticky).chmod(0o1777)

    # Links come last so an applet can never take the place of anything above.
    for applet in _list_applets(executable, source):
        _link_applet(root, applet)
    if not (root / "bin" / "sh").is_symlink():
        raise LayerError(f"{source} has no sh applet; the built-in base needs a shell")


def _list_applets(executable: Path, source: Path) -> list[PurePosixPath]:
    """Ask busybox where each applet belongs (``bin/sh``, ``usr/bin/wget``).

    The copy inside the new rootfs is what runs, which also proves the state
    directory allows executing it, as every container will.
    """
    try:
        result = subprocess.run(
            [str(executable), "--list-full"],
            capture_output=True,
            check=False,
            timeout=_LIST_TIMEOUT,
            env={"LC_ALL": "C"},
            cwd=executable.parent,
        )
    except PermissionError as exc:
        raise LayerError(
            f"cannot execute busybox in {executable.parent} "
            "(is the state directory on a noexec filesystem?)"
        ) from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LayerError(f"cannot run {source} --list-full: {exc}") from exc
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise LayerError(
            f"{source} --list-full failed (exit {result.returncode}"
            f"{': ' + reason[0] if reason else ''}); is it busybox?"
        )
    applets = []
    for line in result.stdout.decode(errors="replace").splitlines():
        applet = applet_path(line.strip())
        if applet is not None:
            applets.append(applet)
    return applets


def applet_path(entry: str) -> PurePosixPath | None:
    """The relative path of one ``--list-full`` entry, or None if it is unsafe."""
    if not entry or "\0" in entry:
        return None
    path = PurePosixPath(entry)
    # A non-normalised entry ("a//b", "./x") or one with ".." could point
    # somewhere other than where it seems; absolute ones escape outright.
    if path.is_absolute() or str(path) != entry or ".." in path.parts:
        return None
    return path


def _link_applet(root: Path, applet: PurePosixPath) -> None:
    """Symlink ``applet`` to ``bin/busybox`` relatively; skip clashes silently."""
    if not _make_dirs(root, applet.parent):
        return
    target = posixpath.relpath("bin/busybox", start=str(applet.parent))
    # Exists already: listed twice, or the name of something the base has.
    with contextlib.suppress(FileExistsError):
        os.symlink(target, root / applet)


def _make_dirs(root: Path, relative: PurePosixPath) -> bool:
    """Create ``root/relative`` and its parents as 0755 directories.

    Returns False, creating nothing more, if some component exists as anything
    other than a real directory (a symlink must never be followed here).
    """
    current = root
    for part in relative.parts:
        current = current / part
        try:
            current.mkdir()
            current.chmod(0o755)
        except FileExistsError:
            if not stat.S_ISDIR(current.lstat().st_mode):
                return False
    return True
