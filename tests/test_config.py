"""The daemon's layer settings (``squish.daemon.config``): flags > environment > file."""

from __future__ import annotations

from pathlib import Path

import pytest

from squish.daemon.config import (
    GuardSettings,
    LayerSettings,
    allowed_host_paths,
    config_path,
    guard_settings,
    layer_settings,
    read_config,
)
from squish.errors import SquishError

TEMPLATE = "https://layers.example.com/{name}/{version}/{arch}.tar.gz"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "SQUISH_CONFIG",
        "SQUISH_DEFAULT_BASE",
        "SQUISH_ALPINE_MIRROR",
        "SQUISH_REGISTRY",
        "SQUISH_PRUNE_GUARD",
        "SQUISH_ALLOW_PRUNE_ALL",
        "SQUISH_ALLOW_HOST_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = layer_settings(read_config(None))

    assert settings == LayerSettings()
    assert settings.default_base == "busybox" and settings.default_alpine is None
    assert settings.alpine_mirror == "https://dl-cdn.alpinelinux.org/alpine"


def test_the_file_is_read(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""
[layers]
default_base = "alpine:3.20"
alpine_mirror = "http://mirror.example/alpine"
download_timeout = 5
download_deadline = 60.5

[layers.registries]
default = "{TEMPLATE}"
python = "https://py.example/{{version}}.tgz"
""",
    )

    settings = layer_settings(read_config(config))

    assert settings.default_alpine == "3.20"
    assert settings.alpine_mirror == "http://mirror.example/alpine"
    assert settings.registries == {
        "default": TEMPLATE,
        "python": "https://py.example/{version}.tgz",
    }
    assert (settings.download_timeout, settings.download_deadline) == (5.0, 60.5)


def test_flags_beat_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path,
        '[layers]\ndefault_base = "alpine:3.18"\nalpine_mirror = "http://file/alpine"\n',
    )
    monkeypatch.setenv("SQUISH_DEFAULT_BASE", "alpine:3.19")
    monkeypatch.setenv("SQUISH_ALPINE_MIRROR", "http://env/alpine")
    monkeypatch.setenv("SQUISH_REGISTRY", "http://env/{name}/{version}")

    from_env = layer_settings(read_config(config))
    from_flags = layer_settings(
        read_config(config),
        default_base="alpine:3.20",
        alpine_mirror="http://flag/alpine",
        registries=["http://flag/{name}/{version}", "go=http://go/{version}"],
    )

    assert (from_env.default_base, from_env.alpine_mirror) == ("alpine:3.19", "http://env/alpine")
    assert from_env.registries == {"default": "http://env/{name}/{version}"}
    assert from_flags.default_base == "alpine:3.20"
    assert from_flags.alpine_mirror == "http://flag/alpine"
    assert from_flags.registries == {
        "default": "http://flag/{name}/{version}",
        "go": "http://go/{version}",
    }


def test_the_xdg_file_is_found_only_if_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config_path(None) is None
    xdg = tmp_path / "xdg" / "squish" / "config.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert config_path(None) == xdg
    monkeypatch.setenv("SQUISH_CONFIG", "/etc/squish.toml")
    assert config_path(None) == Path("/etc/squish.toml")
    assert config_path(Path("/given.toml")) == Path("/given.toml")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[layers\n", "not valid TOML"),
        ("[layers]\nmirror = 1\n", r"layers\.mirror is not a setting \(allowed: alpine_mirror"),
        ("[other]\n", r"\[other\] is not a section"),
        ('[layers]\ndefault_base = "ubuntu"\n', r"default base 'ubuntu': must be 'busybox'"),
        ('[layers]\ndefault_base = "alpine:edge"\n', "default base 'alpine:edge'"),
        ('[layers]\nalpine_mirror = "ftp://x"\n', "must be an http:// or https:// URL"),
        ("[layers]\ndownload_timeout = -1\n", "layers.download_timeout must be a positive"),
        ("[layers]\nregistries = 3\n", "layers.registries must be a table"),
        ('[layers.registries]\npython = "https://x/{os}"\n', r"registries\.python: .*\{os\}"),
    ],
)
def test_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, text: str, why: str) -> None:
    config = write(tmp_path, text)

    with pytest.raises(SquishError, match=why) as caught:
        layer_settings(read_config(config))
    message = str(caught.value)
    assert "\n" not in message
    if "default base" not in message and "Alpine mirror" not in message:
        assert message.startswith(str(config))


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SquishError, match="the config file does not exist"):
        layer_settings(read_config(tmp_path / "nope.toml"))


def test_the_prune_guard_from_flags_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, "[sources]\nprune_guard = 50\n")

    assert guard_settings(read_config(None)) == GuardSettings(percent=100.0, enabled=True)
    assert guard_settings(read_config(config)) == GuardSettings(percent=50.0, enabled=True)
    monkeypatch.setenv("SQUISH_PRUNE_GUARD", "75")
    assert guard_settings(read_config(config)).percent == 75.0
    assert guard_settings(read_config(config), percent=25.0).percent == 25.0
    assert not guard_settings(read_config(config), allow_prune_all=True).enabled
    monkeypatch.setenv("SQUISH_ALLOW_PRUNE_ALL", "1")
    assert not guard_settings(read_config(config)).enabled
    off = write(tmp_path, "[sources]\nallow_prune_all = true\n")
    monkeypatch.delenv("SQUISH_ALLOW_PRUNE_ALL")
    assert not guard_settings(read_config(off)).enabled


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[sources]\nprune_guard = 0\n", "0 is not a percentage above 0"),
        ("[sources]\nprune_guard = 150\n", "150 is not a percentage"),
        ('[sources]\nprune_guard = "all"\n', "sources.prune_guard must be a percentage"),
        ('[sources]\nallow_prune_all = "yes"\n', "sources.allow_prune_all must be true or false"),
        ("[sources]\nguard = 1\n", r"sources\.guard is not a setting"),
    ],
)
def test_prune_guard_mistakes_are_one_line(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(SquishError, match=why):
        guard_settings(read_config(write(tmp_path, text)))


def test_allowed_host_paths_from_flags_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c", "real"):
        (tmp_path / name).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = tmp_path / "config.toml"
    path.write_text(f'[sources]\nallow_host_paths = ["{tmp_path / "c"}", "{tmp_path / "a"}"]\n')
    monkeypatch.setenv("SQUISH_ALLOW_HOST_PATH", f"{tmp_path / 'b'}:{tmp_path / 'link'}")
    found = allowed_host_paths(read_config(path), [str(tmp_path / "a")])
    # All of them, each once, resolved.
    assert found == tuple(tmp_path.resolve() / name for name in ("a", "b", "real", "c"))


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("relative/dir", "--allow-host-path: 'relative/dir' must be an absolute path"),
        ("/no/such/dir", "--allow-host-path: '/no/such/dir': "),
        ("/", "--allow-host-path: allowing '/' would allow every path of the host"),
    ],
)
def test_allowed_host_path_mistakes(tmp_path: Path, given: str, why: str) -> None:
    with pytest.raises(SquishError) as caught:
        allowed_host_paths(read_config(None), [given])
    assert str(caught.value).startswith(why)
    path = tmp_path / "config.toml"
    path.write_text('[sources]\nallow_host_paths = "/srv"\n')
    with pytest.raises(SquishError, match=r"sources\.allow_host_paths must be an array of paths"):
        allowed_host_paths(read_config(path))
