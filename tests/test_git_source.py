"""The git source against real git and bare repositories on local disk.

Each test has its own remote (``file://`` URL), a work tree that pushes to
it, and a ``GitSource`` with its own clone and layer cache, all under
``tmp_path``. Git's identity and config come from the environment, so the
tests never read or write the user's own configuration. Grouped by
behaviour: following the remote, layers, broken input, failures, untrusted
repositories, the change stream.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from squish.daemon.metrics import Metrics
from squish.errors import SquishError
from squish.layers import LayerCache
from squish.model.manifest import Manifest
from squish.sources import Source
from squish.sources.directory import DirectorySource
from squish.sources.git import GitLimits, GitSource, redact_url
from tests.git_repo import Remote, git
from tests.source_changes import watching

pytestmark = pytest.mark.usefixtures("git_env")

RUN = '[run]\ncommand = "/app/server"\n'


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(version="test")


class MakeSource(Protocol):
    def __call__(self, url: str, **options: Any) -> GitSource: ...


@pytest.fixture
def make_source(tmp_path: Path, metrics: Metrics) -> MakeSource:
    """``make_source(url, **options)``: a GitSource with the test's directories."""

    def make(url: str, **options: Any) -> GitSource:
        options.setdefault("work_dir", tmp_path / "state" / "git")
        options.setdefault("cache", LayerCache(tmp_path / "state" / "layers"))
        options.setdefault("metrics", metrics)
        options.setdefault("interval", 0.2)
        return GitSource(url, **options)

    return make


def syncs(metrics: Metrics, result: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "squish_source_syncs_total" and sample.labels == {
                "source": "git",
                "result": result,
            }:
                return sample.value
    return 0.0


def valid(manifests: Mapping[str, Manifest], name: str) -> Manifest:
    manifest = manifests[name]
    assert manifest.error is None, manifest.error
    assert manifest.squishfile is not None
    return manifest


def spec_hash(manifest: Manifest) -> str:
    assert manifest.squishfile is not None
    return manifest.squishfile.spec_hash()


def layer_path(manifest: Manifest, name: str) -> Path:
    assert manifest.squishfile is not None
    layers = {layer.name: layer for layer in manifest.squishfile.layers}
    path = layers[name].path
    assert path is not None
    return path


# -- following the remote ------------------------------------------------------


def test_a_pushed_commit_is_fetched_and_applied(
    remote: Remote, make_source: MakeSource, metrics: Metrics
) -> None:
    remote.write("web.toml", RUN)
    remote.write("README.md", "not a squishfile")
    remote.write(".hidden.toml", RUN)
    commit = remote.push()
    source: Source = make_source(remote.url)  # what the reconciler takes
    assert isinstance(source, GitSource) and source.snapshot() == {}

    status = source.sync_now()

    assert status.error is None
    assert status.applied_revision == status.attempted_revision == commit
    assert status.kind == "git" and status.ref == "main" and status.path == "."
    assert status.last_sync is not None and status.last_attempt == status.last_sync
    assert set(source.snapshot()) == {"web"}
    web = valid(source.snapshot(), "web")
    assert web.file == f"web.toml@{commit[:12]}"
    assert syncs(metrics, "success") == 1
    assert f'revision="{commit}"' in metrics.exposition().decode()


def test_an_edit_gives_a_new_spec_hash_and_a_no_op_sync_keeps_it(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    source = make_source(remote.url)
    source.sync_now()
    before = valid(source.snapshot(), "web")

    source.sync_now()  # nothing new: the very same snapshot
    assert source.snapshot()["web"] is before

    remote.write("web.toml", RUN + 'args = ["--verbose"]\n')
    remote.push()
    source.sync_now()
    after = valid(source.snapshot(), "web")
    assert spec_hash(after) != spec_hash(before)
    assert after.squishfile is not None and after.squishfile.args == ("--verbose",)


def test_a_deleted_squishfile_is_gone(remote: Remote, make_source: MakeSource) -> None:
    remote.write("web.toml", RUN)
    remote.write("db.toml", RUN)
    remote.push()
    source = make_source(remote.url)
    source.sync_now()
    assert set(source.snapshot()) == {"web", "db"}

    remote.remove("db.toml")
    remote.push()
    source.sync_now()
    assert set(source.snapshot()) == {"web"}


def test_a_force_push_to_an_older_commit_applies_that_state(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN)
    old = remote.push("one")
    source = make_source(remote.url)
    source.sync_now()
    old_hash = spec_hash(valid(source.snapshot(), "web"))
    remote.write("web.toml", RUN + 'args = ["two"]\n')
    remote.write("db.toml", RUN)
    remote.push("two")
    source.sync_now()
    assert set(source.snapshot()) == {"web", "db"}

    git(remote.work, "reset", "-q", "--hard", old)
    git(remote.work, "push", "-q", "--force", "origin", "HEAD:main")
    status = source.sync_now()

    assert status.error is None and status.applied_revision == old
    assert set(source.snapshot()) == {"web"}
    assert spec_hash(valid(source.snapshot(), "web")) == old_hash


def test_only_the_toml_files_directly_under_path_count(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN)  # outside the path
    remote.write("deploy/apps/api.toml", RUN)
    remote.write("deploy/apps/nested/deeper.toml", RUN)
    remote.push()
    source = make_source(remote.url, path="deploy/apps")

    assert source.sync_now().error is None
    assert set(source.snapshot()) == {"api"}
    assert source.snapshot()["api"].file.startswith("deploy/apps/api.toml@")
    assert source.status().path == "deploy/apps"


def test_a_tag_can_be_followed(remote: Remote, make_source: MakeSource) -> None:
    remote.write("web.toml", RUN)
    commit = remote.push()
    git(remote.work, "tag", "-a", "-m", "release", "v1")
    git(remote.work, "push", "-q", "origin", "v1")
    source = make_source(remote.url, ref="v1")

    assert source.sync_now().applied_revision == commit


# -- layers ------------------------------------------------------------------


def test_a_directory_layer_is_exported_with_its_content(
    remote: Remote, make_source: MakeSource, tmp_path: Path
) -> None:
    remote.write("apps/web.toml", RUN + '[layers]\napp = "../build/web"\n')
    remote.write("build/web/server", "#!/bin/sh\necho hi\n", executable=True)
    remote.write("build/web/static/index.html", "<h1>hi</h1>")
    remote.symlink("build/web/static/home.html", "index.html")
    remote.push()
    source = make_source(remote.url, path="apps")
    source.sync_now()

    web = valid(source.snapshot(), "web")
    path = layer_path(web, "app")
    assert path.is_relative_to(tmp_path / "state" / "layers")
    assert (path / "server").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((path / "server").stat().st_mode) == 0o755
    assert stat.S_IMODE((path / "static" / "index.html").stat().st_mode) == 0o644
    assert os.readlink(path / "static" / "home.html") == "index.html"
    assert web.squishfile is not None
    assert [layer.target for layer in web.squishfile.layers] == ["/app/web"]


def test_an_unchanged_layer_keeps_its_path_and_a_changed_one_gets_a_new_one(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN + '[layers]\napp = "./web"\n')
    remote.write("web/index.html", "v1")
    remote.write("api.toml", RUN + '[layers]\napp = "./api"\n')
    remote.write("api/main.py", "print(1)")
    remote.push()
    source = make_source(remote.url)
    source.sync_now()
    web1, api1 = valid(source.snapshot(), "web"), valid(source.snapshot(), "api")

    remote.write("README.md", "an unrelated change")
    remote.write("api/main.py", "print(2)")
    remote.push()
    source.sync_now()
    web2, api2 = valid(source.snapshot(), "web"), valid(source.snapshot(), "api")

    assert layer_path(web2, "app") == layer_path(web1, "app")
    assert spec_hash(web2) == spec_hash(web1)
    assert layer_path(api2, "app") != layer_path(api1, "app")
    assert spec_hash(api2) != spec_hash(api1)
    assert (layer_path(api2, "app") / "main.py").read_text() == "print(2)"
    assert (layer_path(api1, "app") / "main.py").read_text() == "print(1)"


def test_a_file_layer_is_a_one_file_entry_with_its_mode(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write(
        "web.toml",
        RUN
        + '[layers]\nconf = { path = "./conf/app.toml", target = "/etc/app.toml" }\n'
        + 'tool = "./bin/tool"\n',
    )
    remote.write("conf/app.toml", "port = 1\n")
    remote.write("bin/tool", "#!/bin/sh\n", executable=True)
    remote.push()
    source = make_source(remote.url)
    source.sync_now()

    web = valid(source.snapshot(), "web")
    conf, tool = layer_path(web, "conf"), layer_path(web, "tool")
    assert conf.name == "app.toml" and conf.read_text() == "port = 1\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert sorted(os.listdir(conf.parent)) == ["app.toml"]
    assert tool.name == "tool" and stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert web.squishfile is not None
    targets = {layer.name: layer.target for layer in web.squishfile.layers}
    assert targets == {"conf": "/etc/app.toml", "tool": "/app/bin/tool"}


def test_targets_are_those_of_a_checkout_read_by_the_directory_source(
    remote: Remote, make_source: MakeSource, tmp_path: Path
) -> None:
    layers = (
        '[layers]\napp = "../"\nbase = "../rootfs"\nlib = "../lib/y"\n'
        'conf = { path = "./conf.ini" }\nsame = { path = "../lib", target = "/opt/lib" }\n'
    )
    remote.write("apps/web.toml", RUN + layers)
    remote.write("apps/conf.ini", "x = 1\n")
    remote.write("rootfs/bin/sh", "")
    remote.write("lib/y/z", "")
    remote.push()
    source = make_source(remote.url, path="apps")
    source.sync_now()
    checkout = tmp_path / "checkout" / "remote"  # named like the repository
    git(tmp_path, "clone", "-q", str(remote.bare), str(checkout))

    from_git = valid(source.snapshot(), "web").squishfile
    from_dir = valid(DirectorySource(checkout / "apps").snapshot(), "web").squishfile
    assert from_git is not None and from_dir is not None
    assert [(x.name, x.target) for x in from_git.layers] == [
        (x.name, x.target) for x in from_dir.layers
    ]
    assert from_git.base is not None and from_git.base.target == "/"
    assert ("app", "/app/remote") in [(x.name, x.target) for x in from_git.layers]


# -- broken input --------------------------------------------------------------


def test_a_broken_squishfile_is_an_error_naming_file_and_field(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN)
    remote.write("bad.toml", RUN + '[[ports]]\ncontainer = 80\nhost = "eighty"\n')
    remote.write("missing.toml", RUN + '[layers]\napp = "./nope"\n')
    remote.write("syntax.toml", "[run\n")
    commit = remote.push()
    source = make_source(remote.url)

    assert source.sync_now().error is None  # the sync itself is fine

    valid(source.snapshot(), "web")
    bad = source.snapshot()["bad"]
    assert bad.squishfile is None and bad.error is not None
    assert bad.error.field == "ports[0].host"
    assert str(bad.error).startswith(f"bad.toml@{commit[:12]}:5: ports[0].host: ")
    missing = source.snapshot()["missing"].error
    assert missing is not None and missing.field == "layers.app"
    assert "does not exist" in str(missing) and "\n" not in str(missing)
    syntax = source.snapshot()["syntax"].error
    assert syntax is not None and syntax.line == 1


def test_paths_leaving_the_repository_are_refused(remote: Remote, make_source: MakeSource) -> None:
    remote.write("apps/up.toml", RUN + '[layers]\napp = "../../etc"\n')
    remote.write("apps/sneaky.toml", RUN + '[layers]\napp = "./x/../../../etc"\n')
    remote.write("apps/abs.toml", RUN + '[layers]\nlib = { path = "/etc", target = "/opt" }\n')
    remote.write("apps/x/y", "")
    remote.push()
    source = make_source(remote.url, path="apps")
    source.sync_now()

    for name, field, words in (
        ("up", "layers.app", "leaves the repository"),
        ("sneaky", "layers.app", "leaves the repository"),
        ("abs", "layers.lib.path", "absolute path"),
    ):
        error = source.snapshot()[name].error
        assert error is not None, name
        assert error.field == field and words in error.message, str(error)


def test_a_bad_layer_path_is_reported_with_the_other_problems_and_their_lines(
    remote: Remote, make_source: MakeSource
) -> None:
    # The one parser reads git's squishfiles too: a path the repository
    # does not have is one problem among the file's others, each on its line.
    remote.write(
        "web.toml", RUN + '[layers]\napp = "./nope"\n[[ports]]\ncontainer = 80\nhost = 0\n'
    )
    remote.push()
    source = make_source(remote.url)
    source.sync_now()

    error = source.snapshot()["web"].error
    assert error is not None
    found = {problem.field: problem for problem in error.errors}
    assert set(found) == {"layers.app", "ports[0].host"}
    assert "does not exist" in found["layers.app"].message
    assert found["layers.app"].line == RUN.count("\n") + 2
    assert found["ports[0].host"].line == RUN.count("\n") + 5


def test_symlinks_in_the_repository_are_never_followed(
    remote: Remote, make_source: MakeSource, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.toml"
    secret.write_text(RUN + '[env]\nTOKEN = "hunter2-very-secret"\n')
    remote.symlink("leak.toml", str(secret))
    remote.symlink("linked", "/etc")
    remote.write("real/file", "x")
    remote.symlink("alias", "real")
    remote.write("direct.toml", RUN + '[layers]\napp = "./linked"\n')
    remote.write("through.toml", RUN + '[layers]\napp = "./alias/file"\n')
    remote.push()
    source = make_source(remote.url)
    status = source.sync_now()

    leak = source.snapshot()["leak"]
    assert leak.squishfile is None and leak.error is not None
    assert "is a symlink" in str(leak.error)
    shown = repr(dict(source.snapshot())) + repr(status)
    assert "hunter2" not in shown and str(secret) not in shown
    direct = source.snapshot()["direct"].error
    assert direct is not None and direct.field == "layers.app"
    assert "is a symlink in the repository" in direct.message
    through = source.snapshot()["through"].error
    assert through is not None and "passes through 'alias'" in through.message


def test_a_symlink_out_of_a_layer_tree_is_refused_by_the_unpacker(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN + '[layers]\napp = "./web"\n')
    remote.write("web/index.html", "hi")
    remote.symlink("web/passwd", "../../../etc/passwd")
    remote.write("ok.toml", RUN)
    remote.push()
    source = make_source(remote.url)
    source.sync_now()

    error = source.snapshot()["web"].error
    assert error is not None and error.field == "layers.app"
    assert "outside the layer" in error.message
    valid(source.snapshot(), "ok")


def test_a_submodule_in_a_layer_is_refused(remote: Remote, make_source: MakeSource) -> None:
    remote.write("web.toml", RUN + '[layers]\napp = "./web"\n')
    remote.write("web/index.html", "hi")
    git(remote.work, "add", "-A")
    fake_commit = "1" * 40
    git(remote.work, "update-index", "--add", "--cacheinfo", f"160000,{fake_commit},web/vendor")
    remote.push(add=False)
    source = make_source(remote.url)
    source.sync_now()

    error = source.snapshot()["web"].error
    assert error is not None and error.field == "layers.app"
    assert "submodule 'web/vendor'" in error.message


# -- failures ------------------------------------------------------------------


def test_a_vanished_remote_fails_the_sync_and_changes_nothing(
    remote: Remote, make_source: MakeSource, metrics: Metrics
) -> None:
    remote.write("web.toml", RUN)
    commit = remote.push()
    source = make_source(remote.url)
    source.sync_now()
    before = source.snapshot()
    first_sync = source.status().last_sync

    remote.bare.rename(remote.bare.with_name("moved.git"))
    status = source.sync_now()

    assert source.snapshot() is before
    assert status.applied_revision == commit and status.last_sync == first_sync
    assert status.error is not None and "\n" not in status.error
    assert "cannot fetch 'main'" in status.error and "remote.git" in status.error
    assert status.last_attempt is not None and first_sync is not None
    assert status.last_attempt >= first_sync and not status.ready
    assert syncs(metrics, "error") == 1

    remote.bare.with_name("moved.git").rename(remote.bare)
    assert source.sync_now().error is None


def test_a_missing_ref_fails_the_sync(
    remote: Remote, make_source: MakeSource, metrics: Metrics
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    source = make_source(remote.url, ref="release")

    status = source.sync_now()

    assert status.error is not None and "release" in status.error
    assert status.applied_revision is None and source.snapshot() == {}
    assert syncs(metrics, "error") == 1 and syncs(metrics, "success") == 0


def test_a_missing_path_fails_the_sync(remote: Remote, make_source: MakeSource) -> None:
    remote.write("web.toml", RUN)
    commit = remote.push()
    source = make_source(remote.url, path="deploy")

    status = source.sync_now()

    assert status.error is not None and "'deploy'" in status.error
    assert "does not exist" in status.error
    assert status.attempted_revision == commit and status.applied_revision is None


def test_exceeding_the_size_limit_fails_the_sync_and_changes_nothing(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN + '[layers]\napp = "./web"\n')
    remote.write("web/small", "x")
    first = remote.push()
    source = make_source(remote.url, limits=GitLimits(max_bytes=64 * 1024))
    source.sync_now()
    before = source.snapshot()

    remote.write("web/big", os.urandom(80 * 1024))  # does not compress
    remote.push()
    status = source.sync_now()

    assert status.error is not None
    assert "the repository takes more than 65536 bytes, the limit (max_bytes)" in status.error
    assert status.applied_revision == first and source.snapshot() is before

    # The clone was discarded; once the remote is small again, all is well.
    git(remote.work, "reset", "-q", "--hard", first)
    git(remote.work, "push", "-q", "--force", "origin", "HEAD:main")
    status = source.sync_now()
    assert status.error is None and status.applied_revision == first


def test_a_layer_over_the_size_limit_is_named(remote: Remote, make_source: MakeSource) -> None:
    remote.write("web.toml", RUN + '[layers]\napp = "./web"\n')
    remote.write("web/big", b"\0" * (256 * 1024))  # compresses to nothing in the clone
    commit = remote.push()
    source = make_source(remote.url, limits=GitLimits(max_bytes=128 * 1024))

    status = source.sync_now()

    assert status.error is not None
    assert status.error.startswith(f"web.toml@{commit[:12]}: layers.app: 'web' holds")
    assert "more than the limit of 131072 (max_bytes)" in status.error
    assert source.snapshot() == {}


def test_a_restarted_daemon_recovers_a_clone_left_locked(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    source = make_source(remote.url)
    source.sync_now()
    # What a daemon killed in the middle of a fetch leaves behind.
    (source.work_dir / "repo.git" / "refs" / "squish" / "fetched.lock").write_text("")
    (source.work_dir / "repo.git" / "shallow.lock").write_text("")
    remote.write("db.toml", RUN)
    commit = remote.push()

    restarted = make_source(remote.url)
    status = restarted.sync_now()

    assert status.error is None and status.applied_revision == commit


def test_credentials_in_the_url_never_show(
    make_source: MakeSource, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    url = "http://user:secret@127.0.0.1:1/repo.git"
    source = make_source(url, limits=GitLimits(timeout=20))

    status = source.sync_now()

    assert status.error is not None
    assert status.url == "http://user:***@127.0.0.1:1/repo.git"
    everything = repr(status) + metrics.exposition().decode() + caplog.text + source.url
    assert "secret" not in everything
    assert "***" in status.error or "127.0.0.1" in status.error


def test_redact_url() -> None:
    assert redact_url("https://u:p%40ss@h/x.git") == "https://u:***@h/x.git"
    assert redact_url("https://ghp_token@github.com/o/r") == "https://***@github.com/o/r"
    assert redact_url("ssh://git@host/o/r.git") == "ssh://git@host/o/r.git"
    assert redact_url("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert redact_url("file:///srv/r.git") == "file:///srv/r.git"
    assert redact_url("user:secret@127.0.0.1:1/r.git") == "user:***@127.0.0.1:1/r.git"


def test_git_messages_are_scrubbed_of_credentials(
    make_source: MakeSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A git that repeats the URL it was given, as some versions and helpers do.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text(
        '#!/bin/sh\necho "fatal: cannot reach $GIT_CONFIG_VALUE_0 as p@ss" >&2\nexit 128\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    source = make_source("https://user:p%40ss@example.invalid/r.git")

    status = source.sync_now()

    assert status.error is not None
    assert "cannot reach https://user:***@example.invalid/r.git as ***" in status.error
    assert "p%40ss" not in repr(status) and "p@ss" not in repr(status)


def test_bad_settings_are_refused_up_front(make_source: MakeSource) -> None:
    with pytest.raises(SquishError, match="ref"):
        make_source("file:///x", ref="--upload-pack=touch /tmp/pwned")
    with pytest.raises(SquishError, match="path"):
        make_source("file:///x", path="../elsewhere")


# -- untrusted repositories ----------------------------------------------------


def test_no_hook_ever_runs(
    remote: Remote, make_source: MakeSource, git_env: Path, tmp_path: Path
) -> None:
    # Each hook notes the directory it runs in: the work tree's commit and
    # push run them (so they are real), the source's fetches never.
    log = tmp_path / "hooks-ran"
    hook = f"#!/bin/sh\npwd >> {log}\n"
    hooks = tmp_path / "global-hooks"
    names = ("reference-transaction", "post-checkout", "post-merge", "pre-auto-gc")
    state = tmp_path / "state"
    remote.write("web.toml", RUN + '[layers]\napp = "./web"\n')
    remote.write("web/index.html", "v1")
    remote.push()
    git_env.write_text(f"[core]\n\thooksPath = {hooks}\n")
    for where in (hooks, state / "git" / "repo.git" / "hooks"):
        where.mkdir(parents=True)
        for name in names:
            (where / name).write_text(hook)
            (where / name).chmod(0o755)
    source = make_source(remote.url)

    assert source.sync_now().error is None
    remote.write("web/index.html", "v2")
    remote.push()  # runs the global hooks in the work tree
    assert source.sync_now().error is None

    ran = log.read_text().splitlines()
    assert str(remote.work) in ran
    assert not any(line.startswith(str(state)) for line in ran)


def slow_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a git first on PATH whose fetch hangs; returns where it notes its pid."""
    real = subprocess.run(
        ["sh", "-c", "command -v git"], capture_output=True, text=True, check=True
    ).stdout.strip()
    pid_file = tmp_path / "fetch.pid"
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        # Written aside and renamed: the test must never read a half-written file.
        f'  if [ "$arg" = fetch ]; then echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file};'
        " exec sleep 30; fi\n"
        "done\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return pid_file


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_git_over_its_timeout_is_killed(
    remote: Remote, make_source: MakeSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    pid_file = slow_git(tmp_path, monkeypatch)
    source = make_source(remote.url, limits=GitLimits(timeout=0.5))

    started = time.monotonic()
    status = source.sync_now()

    assert time.monotonic() - started < 5
    assert status.error is not None and "longer than 0.5 s" in status.error
    assert gone(int(pid_file.read_text()))


@pytest.mark.anyio
async def test_cancelling_a_sync_kills_git_and_records_nothing(
    remote: Remote, make_source: MakeSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    pid_file = slow_git(tmp_path, monkeypatch)
    source = make_source(remote.url, limits=GitLimits(timeout=60))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.sync)
            while not pid_file.exists():
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    assert gone(int(pid_file.read_text()))
    assert source.status().last_attempt is None and source.status().error is None


# -- the change stream -----------------------------------------------------------


@pytest.mark.anyio
async def test_changes_yields_after_the_first_sync_and_after_a_push(
    remote: Remote, make_source: MakeSource
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    source = make_source(remote.url, interval=0.2)
    async with watching(source) as changes:
        with anyio.fail_after(10):
            await changes.next()
        assert set(source.snapshot()) == {"web"}

        remote.write("db.toml", RUN)
        remote.push()
        pushed = time.monotonic()
        with anyio.fail_after(10):
            await changes.next()
        assert time.monotonic() - pushed < 2.0
        assert set(source.snapshot()) == {"web", "db"}


@pytest.mark.anyio
async def test_request_sync_wakes_changes_at_once(remote: Remote, make_source: MakeSource) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    source = make_source(remote.url, interval=60)
    async with watching(source) as changes:
        with anyio.fail_after(10):
            await changes.next()
        remote.write("db.toml", RUN)
        commit = remote.push()

        source.request_sync()
        with anyio.fail_after(5):
            await changes.next()
        assert source.status().applied_revision == commit


@pytest.mark.anyio
async def test_changes_is_quiet_when_nothing_changes(
    remote: Remote, make_source: MakeSource, metrics: Metrics
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    source = make_source(remote.url, interval=0.05)
    async with watching(source) as changes:
        with anyio.fail_after(10):
            await changes.next()
        with anyio.move_on_after(0.5) as quiet:
            await changes.next()
        assert quiet.cancelled_caught
    assert syncs(metrics, "success") >= 2  # it kept fetching


@pytest.mark.anyio
async def test_sync_in_a_thread_and_a_guard_holds_a_revision(
    remote: Remote, make_source: MakeSource, metrics: Metrics
) -> None:
    remote.write("web.toml", RUN)
    remote.write("db.toml", RUN)
    first = remote.push()

    def guard(current: Mapping[str, Manifest], proposed: Mapping[str, Manifest]) -> str | None:
        if current and len(proposed) < len(current):
            return "would remove containers"
        return None

    source = make_source(remote.url, guard=guard)
    assert (await source.sync()).applied_revision == first
    remote.remove("db.toml")
    second = remote.push()

    status = await source.sync()

    assert status.held == "would remove containers" and status.error is None
    assert status.applied_revision == first and status.attempted_revision == second
    assert set(source.snapshot()) == {"web", "db"}
    assert syncs(metrics, "held") == 1


@pytest.mark.anyio
async def test_a_failed_sync_is_retried_well_before_the_interval(
    remote: Remote, make_source: MakeSource, tmp_path: Path
) -> None:
    remote.write("web.toml", RUN)
    remote.push()
    away = tmp_path / "away.git"
    remote.bare.rename(away)  # the server is down (or busy) at the first sync
    source = make_source(remote.url, interval=60)

    async def come_back() -> None:
        await anyio.sleep(0.5)
        away.rename(remote.bare)

    async with watching(source) as changes, anyio.create_task_group() as tg:
        tg.start_soon(come_back)
        with anyio.fail_after(10):
            await changes.next()
    assert set(source.snapshot()) == {"web"}
    assert source.status().error is None


def test_host_paths_under_an_allowed_directory_are_mounted_as_named(
    remote: Remote, make_source: MakeSource, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (allowed / "out").symlink_to(elsewhere)  # under the allowed one, leading out of it
    remote.write("ok.toml", RUN + f'[layers]\nd = {{ path = "{allowed}/data", target = "/d" }}\n')
    remote.write("out.toml", RUN + f'[layers]\nd = {{ path = "{allowed}/out", target = "/d" }}\n')
    remote.write("far.toml", RUN + f'[layers]\nd = {{ path = "{elsewhere}", target = "/d" }}\n')
    remote.write("none.toml", RUN + f'[layers]\nd = {{ path = "{allowed}/no", target = "/d" }}\n')
    remote.push()
    source = make_source(remote.url, host_paths=(allowed.resolve(),))
    source.sync_now()
    snapshot = source.snapshot()
    ok = snapshot["ok"].squishfile
    assert ok is not None
    assert [layer.path for layer in ok.layers] == [(allowed / "data").resolve()]
    for name, words in (
        ("out", f"is not under a host path this node allows (it leads to {elsewhere.resolve()})"),
        ("far", "is not under a host path this node allows; allowed: "),
        ("none", "does not exist on this host"),
    ):
        error = snapshot[name].error
        assert error is not None and error.field == "layers.d.path", name
        assert words in error.message, error.message
    # Without any allowed, the hint says how.
    plain = make_source(remote.url, name="plain", work_dir=tmp_path / "state" / "git2")
    plain.sync_now()
    error = plain.snapshot()["ok"].error
    assert error is not None
    assert "(or allow host paths on the node with --allow-host-path DIR)" in error.message
