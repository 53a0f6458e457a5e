"""Tests of the bwrap command line (squish.runtime.bwrap): pure, no bwrap needed.

Every argv is parsed back with bwrap's option arities, so a test fails if an
option lost or gained an argument, and the command is whatever follows the
``--`` in option position. The host is a dictionary behind ``HostView``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from squish.layers import Mount
from squish.runtime import DEFAULT_PATH, DEFAULT_TMP_SIZE, ContainerSpec
from squish.runtime.bwrap import HandshakeFds, bwrap_argv, container_env
from squish.runtime.mounts import Kind

FDS = HandshakeFds(info=7, userns_block=8, block=9)

# bwrap options squish may use, with how many arguments each takes.
ARITY = {
    "--unshare-user": 0,
    "--unshare-ipc": 0,
    "--unshare-pid": 0,
    "--unshare-uts": 0,
    "--unshare-net": 0,
    "--unshare-cgroup-try": 0,
    "--uid": 1,
    "--gid": 1,
    "--cap-drop": 1,
    "--die-with-parent": 0,
    "--new-session": 0,
    "--info-fd": 1,
    "--userns-block-fd": 1,
    "--userns": 1,
    "--sync-fd": 1,
    "--block-fd": 1,
    "--hostname": 1,
    "--ro-bind": 2,
    "--bind": 2,
    "--symlink": 2,
    "--size": 1,
    "--tmpfs": 1,
    "--proc": 1,
    "--dev": 1,
    "--remount-ro": 1,
    "--chdir": 1,
    "--clearenv": 0,
    "--setenv": 2,
}


class FakeHost:
    """A base with empty /app, /proc, /dev and /tmp, plus one directory layer."""

    dirs = frozenset(
        map(Path, ["/base", "/base/app", "/base/proc", "/base/dev", "/base/tmp", "/layers/app"])
    )

    def kind(self, path: Path) -> Kind:
        return Kind.DIR if path in self.dirs else Kind.MISSING

    def entries(self, path: Path) -> list[str]:
        return []

    def readlink(self, path: Path) -> str:
        raise AssertionError(f"readlink({path}): the fake host has no symlinks")


Option = tuple[str, tuple[str, ...]]


def parse(argv: list[str]) -> tuple[list[Option], list[str]]:
    """Split an argv the way bwrap reads it: (options with their arguments, command)."""
    options: list[Option] = []
    rest = argv[1:]
    while rest:
        option = rest.pop(0)
        if option == "--":
            return options, rest
        assert option in ARITY, f"unknown option or misplaced argument {option!r}"
        assert len(rest) >= ARITY[option], f"{option} is missing arguments"
        options.append((option, tuple(rest.pop(0) for _ in range(ARITY[option]))))
    raise AssertionError("no '--' before the command")


def argv_of(spec: ContainerSpec) -> list[str]:
    return bwrap_argv(spec, FDS, host=FakeHost())


MINIMAL = ContainerSpec(name="web", rootfs=Path("/base"), command="/bin/true")


def spec(**changes: Any) -> ContainerSpec:
    return dataclasses.replace(MINIMAL, **changes)


SPECS = [
    pytest.param(spec(), id="minimal"),
    pytest.param(spec(network=False), id="no network"),
    pytest.param(spec(name="db-1", env={"PATH": "/opt/bin", "A": "1"}), id="env with PATH"),
    pytest.param(
        spec(command="/app/run", args=("--", "a b", "--hostname", "", "-c")),
        id="args that look like options",
    ),
    pytest.param(
        spec(mounts=(Mount(Path("/layers/app"), "/app", rw=True),), tmp_size=4096),
        id="a layer and a small /tmp",
    ),
]


# -- the whole command line ------------------------------------------------------


def test_full_command_line_for_one_container() -> None:
    argv = bwrap_argv(
        spec(
            command="/app/run",
            args=("2000",),
            env={"KEY": "value"},
            mounts=(Mount(Path("/layers/app"), "/app", rw=False),),
        ),
        FDS,
        bwrap="/usr/bin/bwrap",
        host=FakeHost(),
    )

    assert argv == [
        "/usr/bin/bwrap",
        *["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts"],
        *["--unshare-net", "--unshare-cgroup-try"],
        *["--uid", "0", "--gid", "0", "--cap-drop", "ALL"],
        *["--die-with-parent", "--new-session"],
        *["--info-fd", "7", "--userns-block-fd", "8", "--block-fd", "9"],
        *["--hostname", "web"],
        *["--ro-bind", "/base", "/"],
        *["--proc", "/proc", "--dev", "/dev"],
        *["--size", str(DEFAULT_TMP_SIZE), "--tmpfs", "/tmp"],
        *["--ro-bind", "/layers/app", "/app"],
        *["--chdir", "/", "--clearenv"],
        *["--setenv", "PATH", DEFAULT_PATH, "--setenv", "KEY", "value"],
        *["--", "/app/run", "2000"],
    ]


@pytest.mark.parametrize("container", SPECS)
def test_every_option_is_well_formed(container: ContainerSpec) -> None:
    argv = argv_of(container)
    assert argv[0] == "bwrap"
    parse(argv)  # raises on an unknown option or a missing argument


# -- isolation -----------------------------------------------------------------


@pytest.mark.parametrize("container", SPECS)
def test_every_namespace_is_unshared(container: ContainerSpec) -> None:
    options, _ = parse(argv_of(container))
    flags = {name for name, _ in options}

    assert {
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-net",  # also without a network: the container sees only its loopback
        "--unshare-cgroup-try",
    } <= flags


@pytest.mark.parametrize("container", SPECS)
def test_root_inside_without_capabilities_tied_to_the_daemon(container: ContainerSpec) -> None:
    options, _ = parse(argv_of(container))

    assert ("--uid", ("0",)) in options
    assert ("--gid", ("0",)) in options
    assert ("--cap-drop", ("ALL",)) in options
    assert ("--die-with-parent", ()) in options
    assert ("--new-session", ()) in options


@pytest.mark.parametrize("container", SPECS)
def test_handshake_fds_each_go_to_their_own_option(container: ContainerSpec) -> None:
    options, _ = parse(argv_of(container))

    assert [(name, args) for name, args in options if name.endswith("-fd")] == [
        ("--info-fd", ("7",)),
        ("--userns-block-fd", ("8",)),
        ("--block-fd", ("9",)),
    ]


def test_on_a_named_network_the_network_hosts_user_namespace_is_joined_not_made() -> None:
    fds = HandshakeFds(info=7, block=9, userns=11)
    options, _ = parse(bwrap_argv(spec(networks=("backend",)), fds, host=FakeHost()))
    flags = [name for name, _ in options]

    assert "--unshare-user" not in flags
    assert ("--userns", ("11",)) in options
    # bwrap never closes a --userns fd: as --sync-fd too, the sandbox closes it
    # before the command runs (tests/faults/test_stray_fds.py checks it for real).
    assert ("--sync-fd", ("11",)) in options
    assert {"--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"} <= set(flags)
    assert ("--cap-drop", ("ALL",)) in options


@pytest.mark.parametrize("container", SPECS)
def test_hostname_is_the_container_name(container: ContainerSpec) -> None:
    options, _ = parse(argv_of(container))

    assert [args for name, args in options if name == "--hostname"] == [(container.name,)]


@pytest.mark.parametrize("container", SPECS)
def test_filesystem_is_the_planned_mounts_from_the_working_directory_root(
    container: ContainerSpec,
) -> None:
    options, _ = parse(argv_of(container))
    mounts = {args[-1]: name for name, args in options if name in ("--ro-bind", "--bind")}

    assert mounts["/"] == "--ro-bind"
    assert ("--proc", ("/proc",)) in options
    assert ("--dev", ("/dev",)) in options
    tmpfs = options.index(("--tmpfs", ("/tmp",)))
    assert options[tmpfs - 1] == ("--size", (str(container.tmp_size),))
    for mount in container.mounts:
        assert mounts[mount.target] == ("--bind" if mount.rw else "--ro-bind")
    assert ("--chdir", ("/",)) in options


# -- environment -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"PATH": DEFAULT_PATH}),
        ({"KEY": "value", "EMPTY": ""}, {"PATH": DEFAULT_PATH, "KEY": "value", "EMPTY": ""}),
        ({"PATH": "/opt/bin"}, {"PATH": "/opt/bin"}),
        ({"A": "x=y --z", "PATH": "/opt/bin"}, {"PATH": "/opt/bin", "A": "x=y --z"}),
    ],
)
def test_environment_is_exactly_the_spec_plus_a_default_path(
    env: dict[str, str], expected: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUISH_HOST_ONLY", "leak")
    container = spec(env=env)
    options, _ = parse(argv_of(container))
    names = [name for name, _ in options]
    setenv = [(args[0], args[1]) for name, args in options if name == "--setenv"]

    assert container_env(container) == expected
    assert dict(setenv) == expected
    assert len(setenv) == len(expected)  # each variable set once
    # The host's environment is cleared before the container's is set.
    assert names.count("--clearenv") == 1
    assert names.index("--clearenv") < names.index("--setenv")


# -- the command -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("/bin/true", ()),
        ("/app/run", ("2000", "/app")),
        ("/bin/sh", ("-c", "echo a  b; exit 3")),
        ("/app/run", ("--", "--setenv", "X", "y")),
        ("/app/my tool", ("", " ", "--")),
    ],
)
def test_command_and_args_come_last_verbatim(command: str, args: tuple[str, ...]) -> None:
    argv = argv_of(spec(command=command, args=args))
    _, tail = parse(argv)

    assert tail == [command, *args]
    assert argv[-len(tail) - 1 :] == ["--", command, *args]
