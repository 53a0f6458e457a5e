"""Tests of the squishfile model (squish.model.squishfile) and ``squish validate``.

Table-driven: each bad squishfile must give a ManifestError naming the file
and the field, listing every problem with the line of its field; the spec
hash must follow what defines the container and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from squish.errors import ManifestError
from squish.main import main
from squish.model.host import host_paths, load_squishfile
from squish.model.squishfile import (
    Change,
    HostPath,
    HttpCheck,
    Layer,
    LayerPathError,
    Placement,
    Port,
    Squishfile,
    diff_specs,
    parse_squishfile,
)
from squish.model.toml_lines import KeyLines

EXAMPLE = """\
network = "none"
[layers]
alpine = "3.14"
python = "3.11"
app = "./test/http-asm"
conf = { path = "./app.toml", target = "/etc/app.toml" }
scratch = { path = "./scratch", target = "/app/scratch", rw = true }
[run]
command = "/app/http-asm"
args = ["2000", "/app"]
[env]
KEY = "value"
[[ports]]
container = 2000
host = 42069
protocol = "tcp"
host_ip = "127.0.0.1"
"""

MINIMAL = '[run]\ncommand = "/bin/true"\n'


def run(*lines: str) -> str:
    """A ``[run]`` table with these lines."""
    return "[run]\n" + "".join(f"{line}\n" for line in lines)


def layers(*lines: str) -> str:
    """A ``[layers]`` table with these lines, plus a valid ``[run]``."""
    return "[layers]\n" + "".join(f"{line}\n" for line in lines) + MINIMAL


def target(path: str) -> str:
    """A path layer ``c`` mounted at ``path``."""
    return layers(f'c = {{ path = "./scratch", target = "{path}" }}')


def env(*lines: str) -> str:
    return MINIMAL + "[env]\n" + "".join(f"{line}\n" for line in lines)


def ports(*tables: str) -> str:
    """A valid ``[run]`` and one ``[[ports]]`` table per argument."""
    return MINIMAL + "".join(f"[[ports]]\n{table}\n" for table in tables)


def placement(*lines: str) -> str:
    """A valid ``[run]`` and a ``[placement]`` table with these lines."""
    return MINIMAL + "[placement]\n" + "".join(f"{line}\n" for line in lines)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with the files the example squishfile's path layers name."""
    (tmp_path / "test" / "http-asm").mkdir(parents=True)
    (tmp_path / "app.toml").write_text("")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def write(directory: Path, text: str | bytes, name: str = "web.toml") -> Path:
    path = directory / name
    if isinstance(text, str):
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def parse(text: str, *, name: str = "web", base_dir: Path = Path("/")) -> Squishfile:
    return parse_squishfile(
        textwrap.dedent(text).encode(), file=f"{name}.toml", paths=host_paths(base_dir), name=name
    )


# -- the good path ------------------------------------------------------------


def test_example_parses_with_the_right_targets(project: Path) -> None:
    squishfile = load_squishfile(write(project, EXAMPLE))

    assert squishfile.file == project / "web.toml"
    assert squishfile.name == "web"
    assert squishfile.network == "none"
    assert squishfile.base == Layer("alpine", "3.14", None, "/")
    assert squishfile.base.is_base
    assert squishfile.layers == (
        Layer("python", "3.11", None, "/sdk/python"),
        Layer("app", None, project / "test" / "http-asm", "/app/http-asm"),
        Layer("conf", None, project / "app.toml", "/etc/app.toml"),
        Layer("scratch", None, project / "scratch", "/app/scratch", rw=True),
    )
    assert not any(layer.is_base for layer in squishfile.layers)
    assert squishfile.command == "/app/http-asm"
    assert squishfile.args == ("2000", "/app")
    assert dict(squishfile.env) == {"KEY": "value"}
    assert squishfile.ports == (Port(2000, 42069, "tcp", "127.0.0.1"),)


def test_minimal_squishfile_gets_the_defaults() -> None:
    squishfile = parse(MINIMAL)

    assert squishfile.file is None
    assert squishfile.base is None
    assert squishfile.layers == ()
    assert squishfile.args == ()
    assert dict(squishfile.env) == {}
    assert squishfile.ports == ()
    assert squishfile.network == "slirp4netns"
    assert squishfile.networks == ()
    assert squishfile.placement == Placement()
    assert squishfile.placement.everywhere


def test_health_durations_and_defaults() -> None:
    health = parse(
        MINIMAL + '[health]\ncommand = ["/bin/check", "-q"]\ninterval = "1m30s"\n'
        'timeout = 2.5\nstart_period = "500ms"\non_failure = "restart"\n'
    ).health
    assert health is not None
    assert health.command == ("/bin/check", "-q")
    assert (health.interval, health.timeout, health.start_period) == (90.0, 2.5, 0.5)
    assert (health.retries, health.on_failure) == (3, "restart")
    assert parse(MINIMAL).health is None
    plain = parse(MINIMAL + '[health]\ncommand = ["x"]\n').health
    assert plain is not None and (plain.interval, plain.timeout, plain.start_period) == (30, 30, 0)
    assert (plain.http, plain.tcp) == (None, None)


def test_health_by_http_and_tcp() -> None:
    tcp = parse(MINIMAL + "[health]\ntcp = 5432\n").health
    assert tcp is not None and (tcp.command, tcp.http, tcp.tcp) == ((), None, 5432)
    short = parse(MINIMAL + "[health]\nhttp = 8080\n").health
    assert short is not None and short.http == HttpCheck(8080, "/", ())
    full = parse(
        MINIMAL + '[health]\nhttp = { port = 80, path = "/healthz?full=1", '
        'headers = { Host = "app.example", X-Probe = "squish" } }\n'
    ).health
    assert full is not None and full.http == HttpCheck(
        80, "/healthz?full=1", (("Host", "app.example"), ("X-Probe", "squish"))
    )


def test_networks_keep_the_files_order() -> None:
    assert parse('networks = ["front", "back"]\n' + MINIMAL).networks == ("front", "back")


@pytest.mark.parametrize(
    ("layer", "target"),
    [
        ('app = "./test/http-asm"', "/app/http-asm"),
        ('tools = "./test/http-asm"', "/app/test/http-asm"),
        ('tools = "../lib/y"', "/app/lib/y"),
        ('tools = "./test/../test/http-asm"', "/app/test/http-asm"),
        ('tools = { path = "app.toml" }', "/app/app.toml"),
        ('app = { path = "./app.toml" }', "/app/app.toml"),
        ('node = "20"', "/sdk/node"),
        ('node = { version = "20", target = "/opt/node" }', "/opt/node"),
        ('conf = { path = "./app.toml", target = "/etc/app.toml" }', "/etc/app.toml"),
        ('conf = { path = "./app.toml", target = "/process" }', "/process"),
    ],
)
def test_layer_targets(tmp_path: Path, layer: str, target: str) -> None:
    directory = tmp_path / "project"
    (directory / "test" / "http-asm").mkdir(parents=True)
    (directory / "app.toml").write_text("")
    (tmp_path / "lib" / "y").mkdir(parents=True)

    squishfile = load_squishfile(write(directory, f"[layers]\n{layer}\n{MINIMAL}"))

    assert [layer.target for layer in squishfile.layers] == [target]


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ('alpine = "3.14"', Layer("alpine", "3.14", None, "/")),
        ('alpine = { version = "3.19", sha256 = "' + "AB" * 32 + '" }', None),
        ('base = "busybox"', Layer("base", "busybox", None, "/")),
        ('base = "./rootfs"', None),
    ],
)
def test_base_layer(project: Path, layer: str, expected: Layer | None) -> None:
    squishfile = load_squishfile(write(project, f"[layers]\n{layer}\n{MINIMAL}"))

    assert squishfile.layers == ()
    assert squishfile.base is not None
    assert squishfile.base.target == "/"
    if expected is not None:
        assert squishfile.base == expected
    if squishfile.base.name == "base" and squishfile.base.version is None:
        assert squishfile.base.path == project / "rootfs"
    if squishfile.base.sha256 is not None:
        assert squishfile.base.sha256 == "ab" * 32


def test_ports_may_share_a_host_port_across_protocols_and_addresses() -> None:
    squishfile = parse(
        MINIMAL
        + """
        [[ports]]
        container = 53
        host = 5353
        protocol = "udp"
        [[ports]]
        container = 53
        host = 5353
        [[ports]]
        container = 54
        host = 5353
        host_ip = "127.0.0.2"
        """
    )

    assert squishfile.ports == (
        Port(53, 5353, "udp", None),
        Port(53, 5353, "tcp", None),
        Port(54, 5353, "tcp", "127.0.0.2"),
    )


def test_env_keeps_file_order_and_is_read_only() -> None:
    squishfile = parse(MINIMAL + '[env]\nB = "2"\nA = "1"\nC = ""\n')

    assert list(squishfile.env.items()) == [("B", "2"), ("A", "1"), ("C", "")]
    with pytest.raises(TypeError):
        squishfile.env["B"] = "3"  # type: ignore[index]


def test_squishfile_is_immutable_and_hashable(project: Path) -> None:
    squishfile = load_squishfile(write(project, EXAMPLE))

    with pytest.raises(dataclasses.FrozenInstanceError):
        squishfile.command = "/bin/sh"  # type: ignore[misc]
    assert hash(squishfile) == hash(load_squishfile(project / "web.toml"))
    assert squishfile == load_squishfile(project / "web.toml")


# -- every bad input is a ManifestError naming file and field --------------------

BAD = [
    # (id, squishfile text, field, words in the message)
    ("unknown-top-level", 'colour = "red"\n' + MINIMAL, None, "unknown key 'colour'"),
    (
        "unknown-run",
        run('command = "x"', 'cmd = "x"'),
        "run",
        "unknown key 'cmd' (allowed: command, args, workdir, user)",
    ),
    (
        "unknown-layer-table",
        layers('conf = { path = "./app.toml", trget = "/etc/app.toml" }'),
        "layers.conf",
        "unknown key 'trget' (allowed: version, path, target, rw, sha256)",
    ),
    (
        "unknown-port",
        ports("container = 1\nhost = 2\nproto = 'tcp'"),
        "ports[0]",
        "unknown key 'proto'",
    ),
    ("args-not-array", run('command = "x"', 'args = "a b"'), "run.args", "must be an array"),
    ("arg-not-string", run('command = "x"', "args = [1]"), "run.args[0]", "must be a string"),
    ("command-not-string", run("command = 5"), "run.command", "must be a string"),
    ("run-not-table", 'run = "x"\n', "run", "must be a table"),
    ("env-value-int", env("KEY = 1"), "env.KEY", "must be a string, got integer 1"),
    ("env-key-digit", env('"1BAD" = "x"'), "env.1BAD", "environment variable names"),
    ("env-key-dash", env('"A-B" = "x"'), "env.A-B", "environment variable names"),
    ("env-nul", env('KEY = "a\\u0000b"'), "env.KEY", "NUL"),
    (
        "rw-not-bool",
        layers('s = { path = "./scratch", rw = "yes" }'),
        "layers.s.rw",
        "true or false",
    ),
    (
        "port-too-big",
        ports("container = 1\nhost = 70000"),
        "ports[0].host",
        "must be an integer between 1 and 65535, got integer 70000",
    ),
    ("port-zero", ports("container = 0\nhost = 1"), "ports[0].container", "between 1 and 65535"),
    ("port-bool", ports("container = true\nhost = 1"), "ports[0].container", "got boolean true"),
    ("port-string", ports('container = 1\nhost = "80"'), "ports[0].host", "got string '80'"),
    ("port-float", ports("container = 1\nhost = 80.0"), "ports[0].host", "got float 80.0"),
    ("port-missing-host", ports("container = 1"), "ports[0].host", "is required"),
    ("ports-not-array", MINIMAL + "[ports]\ncontainer = 1\n", "ports", "must be an array"),
    (
        "protocol",
        ports('container = 1\nhost = 2\nprotocol = "sctp"'),
        "ports[0].protocol",
        "must be 'tcp' or 'udp', got string 'sctp'",
    ),
    (
        "host-ip",
        ports('container = 1\nhost = 2\nhost_ip = "localhost"'),
        "ports[0].host_ip",
        "must be an IPv4 address such as 127.0.0.1",
    ),
    (
        "host-ip-v6",
        ports('container = 1\nhost = 2\nhost_ip = "::1"'),
        "ports[0].host_ip",
        "IPv6 addresses cannot be forwarded yet (slirp4netns binds IPv4 only), got string "
        "'::1'; use an IPv4 address such as 127.0.0.1 or 0.0.0.0",
    ),
    (
        "duplicate-host-port",
        ports("container = 1\nhost = 80", "container = 2\nhost = 80"),
        "ports[1].host",
        "already used by ports[0]",
    ),
    (
        "duplicate-container-port",
        ports("container = 1\nhost = 80", "container = 1\nhost = 81"),
        "ports[1].container",
        "already published by ports[0]",
    ),
    ("target-relative", target("etc/app.toml"), "layers.c.target", "absolute"),
    ("target-dotdot", target("/app/../etc/x"), "layers.c.target", "normalised"),
    ("target-dot", target("/app/./x"), "layers.c.target", "normalised"),
    ("target-trailing-slash", target("/app/x/"), "layers.c.target", "normalised"),
    ("target-double-slash", target("//app"), "layers.c.target", "normalised"),
    ("target-root", target("/"), "layers.c.target", "must not be '/'"),
    ("target-proc", target("/proc"), "layers.c.target", "inside /proc"),
    ("target-sys", target("/sys/fs/x"), "layers.c.target", "inside /sys"),
    ("target-dev", target("/dev/null"), "layers.c.target", "inside /dev"),
    ("empty-command", run('command = ""'), "run.command", "must not be empty"),
    ("blank-command", run('command = "  "'), "run.command", "must not be empty"),
    ("nul-command", run('command = "/bin/a\\u0000"'), "run.command", "NUL"),
    ("nul-arg", run('command = "x"', 'args = ["\\u0000"]'), "run.args[0]", "NUL"),
    ("missing-command", run("args = []"), "run.command", "is required"),
    ("missing-run", '[env]\nA = "b"\n', "run", "is required"),
    ("missing-path-short", layers('app = "./nope"'), "layers.app", "'./nope' does not exist"),
    (
        "missing-path-table",
        layers('c = { path = "nope" }'),
        "layers.c.path",
        "'nope' does not exist",
    ),
    ("empty-path", layers('c = { path = "" }'), "layers.c.path", "must not be empty"),
    (
        "two-bases",
        layers('alpine = "3.14"', 'base = "busybox"'),
        "layers.base",
        "only one base layer",
    ),
    ("alpine-path", layers('alpine = "./rootfs"'), "layers.alpine", "Alpine version"),
    (
        "base-target",
        layers('base = { version = "busybox", target = "/x" }'),
        "layers.base.target",
        "not allowed on the base layer",
    ),
    (
        "base-rw",
        layers('base = { path = "./rootfs", rw = true }'),
        "layers.base.rw",
        "not allowed on the base layer",
    ),
    (
        "rw-versioned",
        layers('python = { version = "3.11", rw = true }'),
        "layers.python.rw",
        "only allowed on path layers",
    ),
    (
        "duplicate-targets",
        layers(
            'a = { path = "./app.toml", target = "/etc/x" }',
            'b = { path = "./scratch", target = "/etc/x" }',
        ),
        "layers.b.target",
        "already used by layers.a",
    ),
    (
        "duplicate-default-targets",
        layers(
            'app = "./test/http-asm"', 'other = { path = "./scratch", target = "/app/http-asm" }'
        ),
        "layers.other.target",
        "already used by layers.app",
    ),
    (
        "both-version-and-path",
        layers('x = { version = "1", path = "./scratch" }'),
        "layers.x",
        "exactly one of 'version' or 'path', got both",
    ),
    ("neither-version-nor-path", layers('x = { target = "/x" }'), "layers.x", "got neither"),
    ("layer-int", layers("x = 3"), "layers.x", "got integer 3"),
    (
        "layer-bad-version",
        layers('python = "3.11/../../etc"'),
        "layers.python",
        "must be a version",
    ),
    (
        "layer-bad-version-table",
        layers('python = { version = "" }'),
        "layers.python.version",
        "must be a version",
    ),
    ("layer-bad-name", layers('"bad name" = "1"'), 'layers."bad name"', "layer names"),
    ("layer-dotdot-name", layers('".." = "1"'), 'layers.".."', "must not be '.' or '..'"),
    ("layers-not-table", 'layers = "x"\n' + MINIMAL, "layers", "must be a table"),
    ("sha256", layers('x = { version = "1", sha256 = "abc" }'), "layers.x.sha256", "64 hex digits"),
    (
        "network",
        'network = "host"\n' + MINIMAL,
        "network",
        "must be 'slirp4netns' or 'none', got string 'host'",
    ),
    ("network-type", "network = false\n" + MINIMAL, "network", "got boolean false"),
    ("placement-not-table", MINIMAL + "[[placement]]\n", "placement", "must be a table"),
    (
        "placement-unknown-key",
        placement('node = ["web-1"]'),
        "placement",
        "unknown key 'node' (allowed: nodes, labels)",
    ),
    ("nodes-not-array", placement('nodes = "web-*"'), "placement.nodes", "must be an array"),
    ("nodes-empty", placement("nodes = []"), "placement.nodes", "at least one node"),
    ("node-not-string", placement("nodes = [1]"), "placement.nodes[0]", "must be a string"),
    ("node-empty", placement('nodes = ["web-*", ""]'), "placement.nodes[1]", "must not be empty"),
    ("node-nul", placement('nodes = ["web\\u0000"]'), "placement.nodes[0]", "NUL"),
    ("node-comma", placement('nodes = ["web-1,web-2"]'), "placement.nodes[0]", "one per string"),
    ("node-space", placement('nodes = ["web-1 "]'), "placement.nodes[0]", "glob characters"),
    ("labels-not-table", placement('labels = "role=web"'), "placement.labels", "must be a table"),
    (
        "label-value-int",
        placement("labels = { replicas = 3 }"),
        "placement.labels.replicas",
        "must be a string, got integer 3",
    ),
    (
        "label-value-empty",
        placement('labels = { role = "" }'),
        "placement.labels.role",
        "must not be empty",
    ),
    (
        "label-value-slash",
        placement('labels = { zone = "eu/1" }'),
        "placement.labels.zone",
        "label values are letters",
    ),
    (
        "label-key-space",
        placement('labels = { "my role" = "web" }'),
        'placement.labels."my role"',
        "label keys are letters",
    ),
    (
        "label-key-two-slashes",
        placement('labels = { "a/b/c" = "web" }'),
        'placement.labels."a/b/c"',
        "label keys are letters",
    ),
    (
        "label-key-too-long",
        placement(f'labels = {{ {"k" * 64} = "web" }}'),
        f"placement.labels.{'k' * 64}",
        "at most 63 characters",
    ),
    (
        "workdir-relative",
        run('command = "x"\nworkdir = "app"'),
        "run.workdir",
        "must be an absolute, normalised container path",
    ),
    (
        "workdir-not-normal",
        run('command = "x"\nworkdir = "/app/../etc"'),
        "run.workdir",
        "must be an absolute, normalised container path",
    ),
    ("networks-not-a-list", 'networks = "backend"\n' + MINIMAL, "networks", "must be an array"),
    (
        "networks-bad-name",
        'networks = ["backend", "-x"]\n' + MINIMAL,
        "networks[1]",
        "network names may contain only letters",
    ),
    (
        "networks-twice",
        'networks = ["a", "b", "a"]\n' + MINIMAL,
        "networks",
        "names 'a' more than once",
    ),
    (
        "health-without-a-check",
        MINIMAL + "[health]\ninterval = 1\n",
        "health",
        "must have exactly one of 'command' (run inside), 'http' (a GET of a port) or 'tcp' "
        "(a connection to a port), got none",
    ),
    (
        "health-two-checks",
        MINIMAL + '[health]\ncommand = ["x"]\ntcp = 80\n',
        "health",
        "exactly one of 'command'",
    ),
    ("health-tcp-port", MINIMAL + "[health]\ntcp = 0\n", "health.tcp", "between 1 and 65535"),
    (
        "health-http-not-a-port",
        MINIMAL + '[health]\nhttp = "/healthz"\n',
        "health.http",
        'must be a port or a table such as { port = 8080, path = "/healthz" }',
    ),
    (
        "health-http-path",
        MINIMAL + '[health]\nhttp = { port = 80, path = "healthz" }\n',
        "health.http.path",
        'must be a path such as "/healthz"',
    ),
    (
        "health-http-no-port",
        MINIMAL + '[health]\nhttp = { path = "/" }\n',
        "health.http.port",
        "is required",
    ),
    (
        "health-http-header-name",
        MINIMAL + '[health]\nhttp = { port = 80, headers = { "X Y" = "1" } }\n',
        'health.http.headers."X Y"',
        "is not a header name",
    ),
    (
        "health-http-header-value",
        MINIMAL + '[health]\nhttp = { port = 80, headers = { X = "a\\r\\nB: c" } }\n',
        "health.http.headers.X",
        "must be one line",
    ),
    (
        "health-http-unknown-key",
        MINIMAL + '[health]\nhttp = { port = 80, scheme = "https" }\n',
        "health.http",
        "unknown key 'scheme' (allowed: port, path, headers)",
    ),
    ("health-empty-command", MINIMAL + "[health]\ncommand = []\n", "health.command", "must name"),
    (
        "health-bad-duration",
        MINIMAL + '[health]\ncommand = ["x"]\ninterval = "10 s"\n',
        "health.interval",
        'must be a duration such as "500ms"',
    ),
    (
        "health-zero-timeout",
        MINIMAL + '[health]\ncommand = ["x"]\ntimeout = "0s"\n',
        "health.timeout",
        "must be more than 0",
    ),
    (
        "health-retries",
        MINIMAL + '[health]\ncommand = ["x"]\nretries = 1.5\n',
        "health.retries",
        "must be an integer between 1 and 1000",
    ),
    (
        "health-on-failure",
        MINIMAL + '[health]\ncommand = ["x"]\non_failure = "kill"\n',
        "health.on_failure",
        "must be 'none' or 'restart'",
    ),
    (
        "networks-with-network-none",
        'network = "none"\nnetworks = ["a"]\n' + MINIMAL,
        "networks",
        'cannot join networks with network = "none"',
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [pytest.param(text, field, words, id=case) for case, text, field, words in BAD],
)
def test_bad_squishfile(project: Path, text: str, field: str | None, words: str) -> None:
    path = write(project, text)

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    error = caught.value
    assert error.file == str(path)
    assert error.field == field
    assert words in error.message
    assert_one_readable_line(str(error), path)
    if field is not None:
        assert f": {field}: " in str(error)


def assert_one_readable_line(message: str, path: Path) -> None:
    assert message.startswith(str(path))
    assert "\n" not in message
    assert "pydantic" not in message
    assert "Input should" not in message
    assert "Value error" not in message


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, b'[run]\ncommand = "caf\xe9"\n')

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    assert caught.value.line == 2
    assert "UTF-8" in caught.value.message
    assert_one_readable_line(str(caught.value), path)


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    assert (
        load_squishfile(write(tmp_path, b"\xef\xbb\xbf" + MINIMAL.encode())).command == "/bin/true"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[run]\ncommand = "x"\nargs = [\n', 3),
        ('[run]\ncommand = "x"\ncommand = "y"\n', 3),
        ('[run]\ncommand = "x"\n\nargs = ]\n', 4),
        ("= 1\n", 1),
    ],
)
def test_toml_syntax_error_gives_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    assert caught.value.line == line
    assert caught.value.message.startswith("invalid TOML: ")
    assert f"{path}:{line}: invalid TOML" in str(caught.value)
    assert_one_readable_line(str(caught.value), path)


def test_deeply_nested_toml_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n" + MINIMAL)

    with pytest.raises(ManifestError, match="nested too deeply"):
        load_squishfile(path)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "web.toml"
    if make == "directory":
        path.mkdir()

    with pytest.raises(ManifestError) as caught:
        load_squishfile(str(path))

    assert caught.value.file == str(path)
    assert "cannot read the file" in caught.value.message
    assert_one_readable_line(str(caught.value), path)


def test_container_name_comes_from_the_file_stem(tmp_path: Path) -> None:
    assert load_squishfile(write(tmp_path, MINIMAL, "my-app.v2.toml")).name == "my-app.v2"

    path = write(tmp_path, MINIMAL, "my app.toml")
    with pytest.raises(ManifestError, match="rename the file") as caught:
        load_squishfile(path)
    assert caught.value.field is None


# Several problems in one file: every one is reported, in file order, with the
# line of its field (or, for a missing key, of the table lacking it).
SEVERAL = """\
network = "host"
[layers]
app = "./missing"
conf = { path = "./app.toml", trget = "/etc/x" }
[run]
command = ""
cmd = "x"
[[ports]]
container = 1
host = 70000
[[ports]]
container = 2
host = 8080
[[ports]]
container = 3
host = 8080
[[ports]]
container = 4
"""

SEVERAL_PROBLEMS = [
    # (line, field, words in the message)
    (1, "network", "must be 'slirp4netns' or 'none'"),
    (3, "layers.app", "'./missing' does not exist"),
    (4, "layers.conf", "unknown key 'trget'"),
    (6, "run.command", "must not be empty"),
    (7, "run", "unknown key 'cmd'"),
    (10, "ports[0].host", "between 1 and 65535"),
    # Checked among the ports that are right in themselves.
    (16, "ports[2].host", "host port 8080/tcp is already used by ports[1]"),
    (17, "ports[3].host", "is required"),
]


def test_every_problem_is_reported_with_its_line(project: Path) -> None:
    path = write(project, SEVERAL)

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    problems = caught.value.errors
    assert [(p.line, p.field) for p in problems] == [(n, f) for n, f, _ in SEVERAL_PROBLEMS]
    for problem, (_, _, words) in zip(problems, SEVERAL_PROBLEMS, strict=True):
        assert words in problem.message
        assert_one_readable_line(problem.describe(str(path)), path)
    # One line where one is shown (ps, events): the first problem, and a count.
    first = problems[0]
    assert str(caught.value) == f"{path}:1: network: {first.message} (and 7 more errors)"
    assert (caught.value.field, caught.value.line) == ("network", 1)


def test_one_problem_is_one_line_without_a_count(project: Path) -> None:
    path = write(project, '[run]\ncommand = ""\n')

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    (problem,) = caught.value.errors
    assert str(caught.value) == f"{path}:2: run.command: {problem.message}"


def test_a_bad_file_name_is_reported_with_the_fields(project: Path) -> None:
    path = write(project, 'network = "host"\n[run]\ncommand = "/x"\n', "my app.toml")

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    assert [(p.line, p.field) for p in caught.value.errors] == [(None, None), (1, "network")]
    assert "rename the file" in caught.value.errors[0].message


# -- the line of a field -------------------------------------------------------------

# Line numbers are in the comments; lines 8 to 11 are one string.
LOCATED = """\
network = "none"                                # 1
[layers]                                        # 2
app = "./app"                                   # 3
"my.layer" = { path = "./x", target = "/x" }    # 4
tools.path = "./bin"                            # 5
tools . "target" = "/t"                         # 6
[ run ]                                         # 7
command = \"\"\"
[not.a.table]
key = "not a key \\\" [x]"
\"\"\"                                             # 11
args = [                                        # 12
  "a",                                          # 13
  "b", # ] [x] = "c"                            # 14
]                                               # 15
[[ports]]                                       # 16
container = 1                                   # 17
host = 2                                        # 18
[[ports]]                                       # 19
host = 3                                        # 20
[layers.'lit.key']                              # 21
path = './y'                                    # 22
[env]                                           # 23
"KEY" = 'v'                                     # 24
[placement]                                     # 25
nodes = ["a", [                                 # 26
  "b"], "c"]                                    # 27
labels = { role = "web", zone = "x" }           # 28
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("network",), 1),
        (("layers",), 2),
        (("layers", "app"), 3),
        (("layers", "my.layer"), 4),
        (("layers", "my.layer", "target"), 4),  # inside an inline table on one line
        (("layers", "tools"), 5),  # a table made of dotted keys: its first
        (("layers", "tools", "target"), 6),
        (("layers", "tools", "version"), None),  # not written anywhere
        (("run",), 7),
        (("run", "command"), 8),
        (("not",), None),  # a header inside a string is no header
        (("not", "a", "table", "key"), None),
        (("run", "key"), None),
        (("run", "args"), 12),
        (("run", "args", 0), 13),
        (("run", "args", 1), 14),
        (("run", "args", 2), None),
        (("ports",), 16),
        (("ports", 0), 16),
        (("ports", 0, "host"), 18),
        (("ports", 1), 19),
        (("ports", 1, "host"), 20),
        (("ports", 1, "container"), None),
        (("ports", 2), None),
        (("layers", "lit.key"), 21),
        (("layers", "lit.key", "path"), 22),
        (("env", "KEY"), 24),
        (("env", "KEY", "[key]"), 24),  # pydantic's marker for the key itself
        (("placement", "nodes", 0), 26),
        (("placement", "nodes", 1), 26),  # where the element starts
        (("placement", "nodes", 1, 0), None),  # somewhere in two lines: unsure
        (("placement", "nodes", 2), 27),
        (("placement", "labels", "zone"), 28),
        (("absent",), None),
        ((), None),
    ],
)
def test_the_line_of_a_field(path: tuple[int | str, ...], line: int | None) -> None:
    text = textwrap.dedent(LOCATED)
    tomllib.loads(text)  # the locator only ever reads what tomllib accepted
    assert KeyLines(text).line(path) == line
    assert KeyLines(text.replace("\n", "\r\n")).line(path) == line


def test_a_source_the_locator_does_not_follow_has_no_lines() -> None:
    assert KeyLines('[run]\ncommand = "x\n').line(("run",)) is None


# -- the spec hash and what a change means -------------------------------------------


def test_spec_hash_ignores_whitespace_comments_and_key_order(project: Path) -> None:
    reordered = """\
        # same container, written differently
        [run]
        args    = [ "2000",  "/app" ]
        command = "/app/http-asm"

        [[ports]]
        host_ip = "127.0.0.1"
        host = 42069
        container = 2000

        [layers]
        scratch = { target = "/app/scratch", rw = true, path = "scratch" }
        conf = { target = "/etc/app.toml", path = "./app.toml" }
        app = { path = "./test/../test/http-asm" }
        python = { version = "3.11" }
        alpine = "3.14"

        [env]
        KEY = 'value'
    """
    original = load_squishfile(write(project, EXAMPLE))
    rewritten = load_squishfile(write(project, 'network = "none"\n' + textwrap.dedent(reordered)))

    assert rewritten.spec_hash() == original.spec_hash()
    assert diff_specs(original, rewritten) is Change.SAME


def test_spec_hash_ignores_env_order() -> None:
    first = parse(MINIMAL + '[env]\nA = "1"\nB = "2"\n')
    second = parse(MINIMAL + '[env]\nB = "2"\nA = "1"\n')

    assert list(first.env) != list(second.env)
    assert first.spec_hash() == second.spec_hash()


def test_spec_hash_is_pinned() -> None:
    # The hash decides whether a running container is replaced, so it must be
    # the same in every process and Python version; a deliberate change of the
    # hashed spec must update this value (and bump the schema number).
    squishfile = parse(
        """\
        [layers]
        alpine = "3.14"
        python = "3.11"
        [run]
        command = "/bin/sh"
        args = ["-c", "echo hi"]
        [env]
        B = "2"
        A = "ü"
        [[ports]]
        container = 80
        host = 8080
        """,
        name="pinned",
    )

    assert squishfile.spec_hash() == PINNED_HASH
    assert len(squishfile.spec_hash_without_ports()) == 64
    assert squishfile.spec_hash_without_ports() != squishfile.spec_hash()


PINNED_HASH = "2c765edb0933758cfb53821a5f38738ffbfdc95a0e150fc646064fe4da81f570"


CHANGES = [
    # (id, old, new, change)
    ("same", MINIMAL, MINIMAL, Change.SAME),
    (
        "port-host",
        ports("container = 1\nhost = 80"),
        ports("container = 1\nhost = 81"),
        Change.PORTS,
    ),
    ("port-added", MINIMAL, ports("container = 1\nhost = 80"), Change.PORTS),
    (
        "port-protocol",
        ports("container = 1\nhost = 80"),
        ports("container = 1\nhost = 80\nprotocol = 'udp'"),
        Change.PORTS,
    ),
    (
        "port-order",
        ports("container = 1\nhost = 80", "container = 2\nhost = 81"),
        ports("container = 2\nhost = 81", "container = 1\nhost = 80"),
        Change.SAME,
    ),
    ("command", MINIMAL, run('command = "/bin/false"'), Change.REPLACE),
    ("args", MINIMAL, MINIMAL + 'args = ["x"]\n', Change.REPLACE),
    ("env", MINIMAL, env('A = "1"'), Change.REPLACE),
    ("network", MINIMAL, 'network = "none"\n' + MINIMAL, Change.REPLACE),
    ("network-default", MINIMAL, 'network = "slirp4netns"\n' + MINIMAL, Change.SAME),
    ("layer-version", layers('node = "20"'), layers('node = "22"'), Change.REPLACE),
    (
        "layer-target",
        layers('node = "20"'),
        layers('node = { version = "20", target = "/opt/node" }'),
        Change.REPLACE,
    ),
    (
        "layer-order",
        layers('node = "20"', 'go = "1.22"'),
        layers('go = "1.22"', 'node = "20"'),
        Change.SAME,
    ),
    ("base", layers('alpine = "3.14"'), layers('alpine = "3.19"'), Change.REPLACE),
    ("networks-added", MINIMAL, 'networks = ["a"]\n' + MINIMAL, Change.REPLACE),
    (
        "networks-reordered",
        'networks = ["a", "b"]\n' + MINIMAL,
        'networks = ["b", "a"]\n' + MINIMAL,
        Change.REPLACE,
    ),
    ("networks-empty-is-none", MINIMAL, "networks = []\n" + MINIMAL, Change.SAME),
    (
        "workdir-default-is-root",
        MINIMAL,
        run('command = "/bin/true"', 'workdir = "/"'),
        Change.SAME,
    ),
    ("workdir-changed", MINIMAL, run('command = "/bin/true"', 'workdir = "/app"'), Change.REPLACE),
    ("health-added", MINIMAL, MINIMAL + '[health]\ncommand = ["x"]\n', Change.REPLACE),
    (
        "health-by-another-way",
        MINIMAL + "[health]\ntcp = 80\n",
        MINIMAL + "[health]\nhttp = 80\n",
        Change.REPLACE,
    ),
    (
        "health-http-path",
        MINIMAL + "[health]\nhttp = 80\n",
        MINIMAL + '[health]\nhttp = { port = 80, path = "/x" }\n',
        Change.REPLACE,
    ),
    (
        "ports-and-command",
        MINIMAL,
        run('command = "/bin/false"') + "[[ports]]\ncontainer = 1\nhost = 80\n",
        Change.REPLACE,
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "change"),
    [pytest.param(old, new, change, id=case) for case, old, new, change in CHANGES],
)
def test_diff_specs(old: str, new: str, change: Change) -> None:
    assert diff_specs(parse(old), parse(new)) is change


def test_name_is_part_of_the_spec() -> None:
    assert diff_specs(parse(MINIMAL, name="a"), parse(MINIMAL, name="b")) is Change.REPLACE


def test_file_location_is_not_part_of_the_spec(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = load_squishfile(write(tmp_path / "one", MINIMAL))
    second = load_squishfile(write(tmp_path / "two", MINIMAL))

    assert first.file != second.file
    assert diff_specs(first, second) is Change.SAME


def test_a_moved_path_layer_is_a_replace(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    old = load_squishfile(
        write(tmp_path, '[layers]\napp = { path = "./v1", target = "/app/x" }\n' + MINIMAL)
    )
    new = load_squishfile(
        write(tmp_path, '[layers]\napp = { path = "./v2", target = "/app/x" }\n' + MINIMAL)
    )

    assert diff_specs(old, new) is Change.REPLACE


# -- squish validate ---------------------------------------------------------------


def test_validate_ok(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(project, EXAMPLE)

    assert main(["validate", str(path)]) == 0

    out, err = capsys.readouterr()
    assert out == f"{path}: ok\n"
    assert err == ""


def test_validate_reports_every_bad_file_and_fails(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(project, EXAMPLE, "good.toml")
    bad = write(project, MINIMAL + "[[ports]]\ncontainer = 1\nhost = 70000\n", "bad.toml")
    missing = project / "missing.toml"
    also_good = write(project, MINIMAL, "also-good.toml")

    assert main(["validate", str(good), str(bad), str(missing), str(also_good)]) == 1

    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{good}: ok", f"{also_good}: ok"]
    errors = err.splitlines()
    assert errors == [
        f"{bad}:5: ports[0].host: must be an integer between 1 and 65535, got integer 70000",
        f"{missing}: cannot read the file: No such file or directory",
    ]


def test_validate_prints_a_line_per_problem(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(project, SEVERAL)

    assert main(["validate", str(path)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == len(SEVERAL_PROBLEMS)
    for text, (line, field, words) in zip(lines, SEVERAL_PROBLEMS, strict=True):
        assert text.startswith(f"{path}:{line}: {field}: ")
        assert words in text


def test_validate_json(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(project, MINIMAL, "good.toml")
    bad = write(project, '[run]\ncommand = ""\n', "bad.toml")
    several = write(project, SEVERAL, "several.toml")

    assert main(["validate", "--json", str(good), str(bad), str(several)]) == 1

    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)["files"]
    assert report[0] == {
        "file": str(good),
        "ok": True,
        "name": "good",
        "spec_hash": load_squishfile(good).spec_hash(),
    }
    assert report[1]["ok"] is False
    assert report[1]["error"]["field"] == "run.command"
    assert report[1]["errors"] == [report[1]["error"]]
    errors = report[2]["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(n, f) for n, f, _ in SEVERAL_PROBLEMS]
    assert errors[0] == report[2]["error"]
    for error in errors:
        assert error["message"] == f"{several}:{error['line']}: {error['field']}: {error['reason']}"


@pytest.mark.parametrize("argv", [[], ["validate"], ["no-such-command"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_python_dash_m_squish(project: Path) -> None:
    path = write(project, MINIMAL)
    result = subprocess.run(
        [sys.executable, "-m", "squish", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok\n"


# -- placement ------------------------------------------------------------------


def test_placement_is_read_in_file_order_and_frozen() -> None:
    squishfile = parse(
        placement(
            'nodes = ["web-*", "db-1"]',
            'labels = { zone = "eu-1", "example.com/role" = "web" }',
        )
    )

    assert squishfile.placement.nodes == ("web-*", "db-1")
    assert list(squishfile.placement.labels.items()) == [
        ("zone", "eu-1"),
        ("example.com/role", "web"),
    ]
    assert not squishfile.placement.everywhere
    with pytest.raises(TypeError):
        squishfile.placement.labels["zone"] = "us-1"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        squishfile.placement.nodes = ()  # type: ignore[misc]
    assert isinstance(hash(squishfile), int)


@pytest.mark.parametrize(
    "table",
    [
        "",
        "[placement]\n",
        "[placement]\nlabels = {}\n",
    ],
)
def test_an_empty_placement_is_every_node(table: str) -> None:
    assert parse(MINIMAL + table).placement.everywhere


def test_placement_errors_are_one_line_naming_file_and_field(project: Path) -> None:
    path = write(project, placement('nodes = ["web-1", "db 2"]'))

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    assert str(caught.value) == (
        f"{path}:4: placement.nodes[1]: node patterns are node names (letters, digits, '-', "
        "'_' and '.') with the glob characters '*', '?', '[', ']' and '!'; write one per "
        "string, got 'db 2'"
    )


def test_a_syntax_error_in_placement_gives_the_line(project: Path) -> None:
    path = write(project, placement('nodes = ["web-1",', 'labels = { role = "web" }'))

    with pytest.raises(ManifestError) as caught:
        load_squishfile(path)

    # MINIMAL is two lines and [placement] the third: the array is on line 4
    # and tomllib notices on line 5.
    assert caught.value.line == 5
    assert_one_readable_line(str(caught.value), path)


EXAMPLE_NO_PATHS = MINIMAL + '[env]\nKEY = "value"\n[[ports]]\ncontainer = 80\nhost = 8080\n'
PLACEMENTS = [
    "",
    placement('nodes = ["web-*"]')[len(MINIMAL) :],
    placement('nodes = ["db-1"]', 'labels = { role = "db" }')[len(MINIMAL) :],
    placement('labels = { zone = "eu-1" }')[len(MINIMAL) :],
]


@pytest.mark.parametrize("old", PLACEMENTS)
@pytest.mark.parametrize("new", PLACEMENTS)
def test_placement_is_not_part_of_the_spec(old: str, new: str) -> None:
    # Moving where a container may run does not change the container: a node
    # that runs it before and after the edit must leave it alone.
    before = parse(EXAMPLE_NO_PATHS + old)
    after = parse(EXAMPLE_NO_PATHS + new)

    assert before.spec_hash() == after.spec_hash()
    assert before.spec_hash_without_ports() == after.spec_hash_without_ports()
    assert diff_specs(before, after) is Change.SAME
    assert (before == after) is (old == new)


def test_the_pinned_hash_holds_with_a_placement() -> None:
    pinned = """\
        [layers]
        alpine = "3.14"
        python = "3.11"
        [run]
        command = "/bin/sh"
        args = ["-c", "echo hi"]
        [env]
        B = "2"
        A = "ü"
        [[ports]]
        container = 80
        host = 8080
        [placement]
        nodes = ["web-*"]
        labels = { role = "web" }
        """
    assert parse(pinned, name="pinned").spec_hash() == PINNED_HASH


def test_the_hash_of_a_command_check_is_as_before_http_and_tcp_checks() -> None:
    # Squishfiles written before [health] knew http and tcp keep their hash:
    # a new daemon does not replace their containers.
    text = '[run]\ncommand = "/bin/sh"\n[health]\ncommand = ["/bin/check"]\ninterval = "5s"\n'
    assert parse(text, name="pinned").spec_hash() == (
        "96a422e7f1b358404e0e32085850657510ec6ddcd05fe977ff506415a8885709"
    )


# -- restart policy -------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "policy"),
    [
        ("", "always"),
        ('[restart]\npolicy = "on-failure"\n', "on-failure"),
        ('[restart]\npolicy = "never"\n', "never"),
    ],
)
def test_restart_policy_defaults_to_always(table: str, policy: str) -> None:
    squishfile = parse('[run]\ncommand = "/bin/true"\n' + table)
    assert squishfile.restart == policy


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ('[restart]\npolicy = "sometimes"\n', "restart.policy", "'always', 'on-failure'"),
        ('[restart]\npolcy = "never"\n', "restart", "unknown key 'polcy'"),
    ],
)
def test_bad_restart_policy_is_named(table: str, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse('[run]\ncommand = "/bin/true"\n' + table)
    assert caught.value.field == field
    assert message in str(caught.value)


# -- the parser is pure: paths are asked of the lookup it is given ---------------


class Lookup:
    """A ``PathLookup`` over a dictionary; remembers what it was asked."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[tuple[str, str]] = []

    def __call__(self, raw: str, field: str) -> HostPath:
        self.asked.append((raw, field))
        if raw not in self.known:
            raise LayerPathError(f"{raw!r} is not known here")
        path = Path(self.known[raw])
        return HostPath(path, path.name)


def test_layer_paths_are_asked_of_the_lookup_with_their_field() -> None:
    lookup = Lookup({"./web": "/srv/releases/web-42", "./app.toml": "/srv/conf/app.toml"})
    text = (
        '[layers]\napp = "./web"\nconf = { path = "./app.toml", target = "/etc/app.toml" }\n'
        'python = "3.11"\n[run]\ncommand = "/app/web/server"\n'
    )

    squishfile = parse_squishfile(text.encode(), file="web.toml", name="web", paths=lookup)

    assert lookup.asked == [("./web", "layers.app"), ("./app.toml", "layers.conf.path")]
    assert {layer.name: (layer.path, layer.target) for layer in squishfile.layers} == {
        "app": (Path("/srv/releases/web-42"), "/app/web"),
        "conf": (Path("/srv/conf/app.toml"), "/etc/app.toml"),
        "python": (None, "/sdk/python"),
    }


def test_the_default_target_of_a_dot_path_is_the_name_the_lookup_gives() -> None:
    lookup = Lookup({"./": "/srv/checkout/site"})
    text = '[layers]\napp = "./"\n[run]\ncommand = "/app/site/run"\n'

    squishfile = parse_squishfile(text.encode(), file="web.toml", name="web", paths=lookup)

    (layer,) = squishfile.layers
    assert layer.target == "/app/site"


def test_a_path_the_lookup_refuses_is_a_problem_of_its_field_among_the_others() -> None:
    lookup = Lookup({})
    text = (
        '[layers]\nconf = { path = "./gone.toml", target = "/etc/x" }\n'
        '[run]\ncommand = "/x"\n[[ports]]\ncontainer = 0\nhost = 8080\n'
    )

    with pytest.raises(ManifestError) as caught:
        parse_squishfile(text.encode(), file="web.toml", name="web", paths=lookup)

    problems = {(p.field, p.line): p.message for p in caught.value.errors}
    assert problems[("layers.conf.path", 2)] == "'./gone.toml' is not known here"
    assert ("ports[0].container", 6) in problems
