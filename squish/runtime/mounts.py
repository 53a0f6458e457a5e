"""Mount planning: the container's filesystem as bwrap arguments.

Called by the bwrap argv builder. Pure apart from looking at the host through
a ``HostView`` (the real one lstat()s, tests pass a dictionary).

The rootfs and every layer are shared read-only between containers, so a
layer whose target does not exist in the base (``/app/run.sh``,
``/sdk/python``, ``/data/x``) cannot be given a mount point by creating it in
the base. Instead the nearest existing directory above the target is
"exploded": a tmpfs is mounted over it, each entry of the original directory
is bind-mounted back into the tmpfs (with the original's read-only flag),
bwrap creates the missing mount points in the tmpfs, and the tmpfs is
remounted read-only once everything is in place. Inside the container the
directory looks exactly like the original plus the new mount points, and
nothing was written anywhere on the host.

The common case costs nothing: a target that exists in the base is mounted
over directly, and the built-in base ships empty ``/app`` and ``/sdk`` so
exploding them binds no entries at all.

Mount points are ordered by depth so that a parent is always mounted before
anything inside it; a symlink on the way to a target is refused, because the
kernel would resolve it against the wrong root while bwrap sets up mounts.

What is checked is what is mounted: ``pin`` opens each source once, without
following a symlink anywhere on its path, and bwrap binds that open file
(``--bind-fd``), not whatever the path names by the time it gets there. A
source swapped for a symlink (``renameat2(RENAME_EXCHANGE)``) between the
check and the mount is refused, here or by bwrap, which compares the inode
it mounted with the fd's.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from squish.errors import RuntimeFailure
from squish.layers import Mount


class Kind(enum.Enum):
    MISSING = "missing"
    DIR = "directory"
    FILE = "file"
    SYMLINK = "symlink"
    OTHER = "special file"


class HostView(Protocol):
    """What the planner needs to know about host paths."""

    def kind(self, path: Path) -> Kind: ...

    def entries(self, path: Path) -> list[str]: ...

    def readlink(self, path: Path) -> str: ...


class RealHost:
    """The host filesystem, seen through lstat (symlinks are not followed)."""

    def kind(self, path: Path) -> Kind:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return Kind.MISSING
        except NotADirectoryError:
            return Kind.MISSING
        if stat.S_ISDIR(mode):
            return Kind.DIR
        if stat.S_ISREG(mode):
            return Kind.FILE
        if stat.S_ISLNK(mode):
            return Kind.SYMLINK
        return Kind.OTHER

    def entries(self, path: Path) -> list[str]:
        return sorted(os.listdir(path))

    def readlink(self, path: Path) -> str:
        return os.readlink(path)


@dataclass
class Pinned:
    """Host paths opened once, ``O_PATH`` and no symlink followed, to be bound by fd.

    ``fds`` is keyed by container target (a source may be mounted twice, and
    bwrap closes each fd it binds); the caller owns and closes them.
    """

    fds: dict[str, int] = field(default_factory=dict)
    kinds: dict[Path, Kind] = field(default_factory=dict)
    bound: list[int] = field(default_factory=list)
    """The fds the planned arguments bind, filled by ``plan_mounts``.

    Exactly these may be passed to bwrap, which closes each once bound: any
    other fd would reach the container's command, and an open directory of
    the host is a way out of it.
    """


def pin(sources: Iterable[tuple[str, Path, str]], into: Pinned) -> None:
    """Open each ``(target, source, label)`` into ``into``, refusing symlinks.

    Sources are canonical paths (the squishfile's reader resolved them), so
    the path the kernel gives the open file must be the source itself: any
    difference is a symlink that appeared since. Fds opened before a refusal
    stay in ``into`` for the caller to close.
    """
    for target, source, why in sources:
        try:
            fd = os.open(source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise RuntimeFailure(f"{why}: {source} does not exist") from exc
        except OSError as exc:
            raise RuntimeFailure(f"{why}: cannot open {source}: {exc.strerror}") from exc
        into.fds[target] = fd
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            raise RuntimeFailure(
                f"{why}: {source} is a symlink now; it was not when it was checked, "
                "and a layer's path is not followed again"
            )
        actual = os.readlink(f"/proc/self/fd/{fd}")
        if actual != os.fspath(source):
            raise RuntimeFailure(
                f"{why}: {source} leads through a symlink now (to {actual}); "
                "it did not when it was checked, and a layer's path is not followed again"
            )
        kind = Kind.DIR if stat.S_ISDIR(mode) else Kind.FILE if stat.S_ISREG(mode) else Kind.OTHER
        into.kinds[source] = kind


class PinnedHost(RealHost):
    """The host, but a pinned source is what its open file is."""

    def __init__(self, pinned: Pinned) -> None:
        self.pinned = pinned

    def kind(self, path: Path) -> Kind:
        known = self.pinned.kinds.get(path)
        return known if known is not None else super().kind(path)


@dataclass(frozen=True)
class Special:
    """A kernel filesystem mounted fresh in the container."""

    target: str
    kind: Literal["proc", "dev", "tmpfs"]
    size: int | None = None


@dataclass(frozen=True)
class _Bind:
    source: Path
    rw: bool
    # A bind created by exploding a directory may point at a symlink, which
    # is recreated as a symlink instead of being mounted.
    symlink: str | None = None


@dataclass(frozen=True)
class _Tmpfs:
    """A writable-at-setup directory: an exploded one, or /tmp."""

    remount_ro: bool


_Owner = _Bind | _Tmpfs | Special


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


class _Planner:
    def __init__(self, rootfs: Path, host: HostView, pinned: Pinned | None) -> None:
        self.host = host
        self.pinned = pinned
        self.owners: dict[str, _Owner] = {"/": _Bind(rootfs, rw=False)}
        # Mount points bwrap will create inside tmpfs owners: path -> kind.
        self.created: dict[str, Kind] = {}

    def owner_of(self, path: str) -> tuple[str, _Owner]:
        probe = path
        while probe not in self.owners:
            probe = _parent(probe)
        return probe, self.owners[probe]

    def kind_in_view(self, path: str) -> Kind:
        mount_point, owner = self.owner_of(path)
        if isinstance(owner, _Bind):
            if owner.symlink is not None:
                return Kind.SYMLINK
            rel = os.path.relpath(path, mount_point)
            host_path = owner.source if rel == "." else owner.source / rel
            return self.host.kind(host_path)
        if path == mount_point:
            return Kind.DIR
        if isinstance(owner, Special) and owner.kind != "tmpfs":
            return Kind.OTHER
        return self.created.get(path, Kind.MISSING)

    def make_dir_creatable(self, path: str, *, why: str) -> None:
        """Make ``path`` a directory in which bwrap can create mount points."""
        kind = self.kind_in_view(path)
        if kind is Kind.MISSING:
            self.make_dir_creatable(_parent(path), why=why)
            self.created[path] = Kind.DIR
            return
        if kind is not Kind.DIR:
            raise RuntimeFailure(
                f"{why}: {path} is a {kind.value} in the container, not a directory"
            )
        mount_point, owner = self.owner_of(path)
        if isinstance(owner, _Tmpfs) or (isinstance(owner, Special) and owner.kind == "tmpfs"):
            return
        if isinstance(owner, Special):
            raise RuntimeFailure(f"{why}: cannot mount inside {mount_point}")
        self.explode(path, mount_point, owner, why=why)

    def explode(self, path: str, mount_point: str, owner: _Bind, *, why: str) -> None:
        rel = os.path.relpath(path, mount_point)
        source = owner.source if rel == "." else owner.source / rel
        if owner.rw:
            # A tmpfs over part of a writable layer would swallow writes that
            # belong on the host.
            where = "a writable layer" if rel == "." else f"in the writable layer {mount_point}"
            raise RuntimeFailure(
                f"{why}: {path} is {where}; create the mount point in {source} on the host"
            )
        self.owners[path] = _Tmpfs(remount_ro=True)
        for name in self.host.entries(source):
            child = _join(path, name)
            if child in self.owners:
                continue  # already a mount point of its own; it stays on top
            child_source = source / name
            link = None
            if self.host.kind(child_source) is Kind.SYMLINK:
                link = self.host.readlink(child_source)
            self.owners[child] = _Bind(child_source, owner.rw, symlink=link)

    def place(self, target: str, owner: _Owner, want: Kind, *, why: str) -> None:
        # Top down, so that each lstat() sees real directories above it: the
        # first symlink on the way is found as itself, never followed.
        for ancestor in reversed(PurePosixPath(target).parents):
            if str(ancestor) != "/" and self.kind_in_view(str(ancestor)) is Kind.SYMLINK:
                raise RuntimeFailure(
                    f"{why}: {ancestor} is a symlink in the container; use the real path"
                )
        kind = self.kind_in_view(target)
        if kind is Kind.SYMLINK:
            raise RuntimeFailure(
                f"{why}: {target} is a symlink in the container; use the real path"
            )
        if kind is Kind.MISSING:
            self.make_dir_creatable(_parent(target), why=why)
            self.created[target] = want
        elif kind is Kind.OTHER or (want is Kind.DIR) != (kind is Kind.DIR):
            raise RuntimeFailure(
                f"{why}: {target} is a {kind.value} in the container, the layer is a {want.value}"
            )
        self.owners[target] = owner

    def argv(self) -> list[str]:
        args: list[str] = []
        remount: list[str] = []
        order = sorted(self.owners.items(), key=lambda item: _depth(item[0]))
        for target, owner in order:
            if isinstance(owner, _Bind):
                if owner.symlink is not None:
                    args += ["--symlink", owner.symlink, target]
                elif self.pinned is not None and target in self.pinned.fds:
                    fd = self.pinned.fds[target]
                    self.pinned.bound.append(fd)
                    args += ["--bind-fd" if owner.rw else "--ro-bind-fd", str(fd), target]
                else:
                    args += ["--bind" if owner.rw else "--ro-bind", str(owner.source), target]
            elif isinstance(owner, _Tmpfs):
                if target != "/":  # bwrap's root is a tmpfs already
                    args += ["--tmpfs", target]
                if owner.remount_ro:
                    remount.append(target)
            elif owner.kind == "tmpfs":
                if owner.size is not None:
                    args += ["--size", str(owner.size)]
                args += ["--tmpfs", target]
            else:
                args += [f"--{owner.kind}", target]
        for target in remount:
            args += ["--remount-ro", target]
        return args


def plan_mounts(
    rootfs: Path,
    mounts: Sequence[Mount],
    specials: Sequence[Special] = (),
    host: HostView | None = None,
    pinned: Pinned | None = None,
) -> list[str]:
    """Return the bwrap arguments that build the container's filesystem.

    A target pinned in ``pinned`` whose source is bound as a whole is bound
    from its fd (see ``pin``), which is added to ``pinned.bound``.
    Raises ``RuntimeFailure`` when a layer cannot be placed (its target is a
    symlink, or a file where the layer is a directory, or the reverse).
    """
    view = host or (RealHost() if pinned is None else PinnedHost(pinned))
    if view.kind(rootfs) is not Kind.DIR:
        raise RuntimeFailure(f"rootfs {rootfs} is not a directory")
    planner = _Planner(rootfs, view, pinned)
    placed: list[tuple[str, _Owner, Kind, str]] = []
    for special in specials:
        placed.append((special.target, special, Kind.DIR, special.target))
    for mount in mounts:
        kind = view.kind(mount.source)
        if kind is Kind.MISSING:
            raise RuntimeFailure(f"layer for {mount.target}: {mount.source} does not exist")
        if kind not in (Kind.DIR, Kind.FILE):
            raise RuntimeFailure(
                f"layer for {mount.target}: {mount.source} is a {kind.value}, "
                "expected a file or directory"
            )
        placed.append((mount.target, _Bind(mount.source, mount.rw), kind, f"layer {mount.target}"))
    # Parents first: a target's mount point may only be created once
    # everything above it is in place.
    for target, owner, want, why in sorted(placed, key=lambda p: _depth(p[0])):
        planner.place(target, owner, want, why=why)
    return planner.argv()
