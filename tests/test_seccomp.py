"""The default seccomp filter, probed from inside real containers, rootless.

``tests/probes/syscalls.c`` (static, musl) tries each system call the filter
refuses and prints the error it got. Run in a container with the default
filter and in one with ``seccomp = "unconfined"``: the first gets the
filter's EPERM (ENOSYS for what it does not know), the second the kernel's
own answers, which shows the filter is what refused. Ordinary programs
(busybox, Python, a web server) still work under it, and ``exec`` gets it
too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from squish.errors import ManifestError
from squish.model.host import load_squishfile
from squish.runtime import ContainerSpec, Mount
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime.seccomp import default_filter
from tests.conftest import musl_probe
from tests.test_runtime import run_to_exit

pytestmark = pytest.mark.anyio

REFUSED = [
    "unshare_user",
    "clone_user",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "mount",
    "fsopen",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "tiocsti",
    "tiocsti_high_bits",
    "tioclinux",
    "io_uring_setup",
]
# Where the kernel itself answers otherwise in a container without the filter:
# what shows that the filter is what refused.
KERNEL_ANSWERS_OTHERWISE = {
    "keyctl",
    "add_key",
    "tiocsti",
    "tiocsti_high_bits",
    "tioclinux",
    "io_uring_setup",
}


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return musl_probe(tmp_path_factory, "syscalls")


def answers(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)


def probe_spec(rootfs: Path, probe: Path, *, seccomp: bool, **kw: object) -> ContainerSpec:
    return ContainerSpec(
        name="probe",
        rootfs=rootfs,
        command="/probe/syscalls",
        args=(str(os.getpid()),),  # a pid outside, to try to trace
        mounts=(Mount(probe, "/probe/syscalls", rw=False),),
        seccomp=seccomp,
        **({"network": False} | kw),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("network", ["none", "slirp4netns", "named"])
async def test_the_default_filter_refuses_with_eperm_and_unknown_calls_get_enosys(
    runtime: BwrapRuntime, base_rootfs: Path, probe: Path, network: str
) -> None:
    where = {
        "none": {},
        "slirp4netns": {"network": True},
        "named": {"network": True, "networks": ("n",)},
    }
    event, log = await run_to_exit(
        runtime, probe_spec(base_rootfs, probe, seccomp=True, **where[network])
    )
    assert event.exit_code == 0, log
    got = answers(log)
    assert {name: got[name] for name in REFUSED} == dict.fromkeys(REFUSED, "EPERM")
    assert got["clone3"] == "ENOSYS"  # unknown to the filter: libc falls back to clone
    # Its own pid namespace: nothing outside to trace (ptrace itself is allowed).
    assert got["ptrace_outside"] == "ESRCH"
    assert got["getpid"] == "ok" and got["fionread"] == "ENOTTY"  # other ioctls pass
    assert got["adjtimex_query"] == "ok"  # reading the clock's state; setting it needs a cap


async def test_without_the_filter_the_kernel_answers(
    runtime: BwrapRuntime, base_rootfs: Path, probe: Path
) -> None:
    event, log = await run_to_exit(runtime, probe_spec(base_rootfs, probe, seccomp=False))
    assert event.exit_code == 0, log
    got = answers(log)
    for name in KERNEL_ANSWERS_OTHERWISE:
        assert got[name] != "EPERM", (name, got[name])
    assert got["clone3"] != "ENOSYS"


async def test_an_exec_gets_the_containers_filter(
    runtime: BwrapRuntime, base_rootfs: Path, probe: Path
) -> None:
    for seccomp in (True, False):
        spec = probe_spec(base_rootfs, probe, seccomp=seccomp)
        container = await runtime.start(
            ContainerSpec(
                name="box",
                rootfs=base_rootfs,
                command="sleep",
                args=("1000",),
                mounts=spec.mounts,
                network=False,
                seccomp=seccomp,
            )
        )
        result = await runtime.exec(container.id, ["/probe/syscalls"])
        got = answers(result.output)
        assert (got["keyctl"] == "EPERM") is seccomp, result.output
        assert (got["tiocsti"] == "EPERM") is seccomp
        await runtime.stop(container.id, grace=0)


async def test_ordinary_programs_work_under_it(
    runtime: BwrapRuntime, base_rootfs: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("served under seccomp\n")
    script = (
        "httpd -p 8080 -h /site && for i in $(seq 50); do "
        "timeout 2 wget -q -O - http://127.0.0.1:8080/ && break; sleep 0.1; done; "
        "tar -C /site -cf /tmp/site.tar . && tar -tf /tmp/site.tar | grep -c index; "
        "echo abc | sha256sum | cut -c1-8; ps -o comm | grep -c httpd"
    )
    event, log = await run_to_exit(
        runtime,
        ContainerSpec(
            name="busy",
            rootfs=base_rootfs,
            command="/bin/sh",
            args=("-c", script),
            mounts=(Mount(site, "/site", rw=False),),
            network=False,
        ),
    )
    assert event.exit_code == 0, log
    assert log.splitlines() == ["served under seccomp", "1", "edeaaff3", "1"]
    python = sys.executable if sys.executable.startswith("/usr/") else "/usr/bin/python3"
    code = (
        "import threading, subprocess, socket, json, ssl, hashlib, sqlite3, tempfile, os;"
        "t = threading.Thread(target=lambda: None); t.start(); t.join();"
        "a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x';"
        "db = sqlite3.connect(':memory:'); db.execute('create table t (x)');"
        "print(subprocess.run(['/bin/echo', 'spawned'], capture_output=True, text=True).stdout"
        ".strip(), os.cpu_count() > 0)"
    )
    event, log = await run_to_exit(
        runtime,
        ContainerSpec(
            name="py", rootfs=Path("/"), command=python, args=("-c", code), network=False
        ),
    )
    assert event.exit_code == 0, log
    assert log.strip() == "spawned True"


def test_the_filter_is_bpf_built_by_libseccomp() -> None:
    program = default_filter()
    assert len(program) % 8 == 0  # struct sock_filter, 8 bytes each
    assert 100 < len(program) // 8 < 4096  # within the kernel's limit
    assert default_filter() is program  # built once


def test_security_seccomp_in_the_squishfile(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text('[run]\ncommand = "/bin/app"\n')
    default = load_squishfile(path)
    assert default.seccomp == "default"
    path.write_text('[run]\ncommand = "/bin/app"\n[security]\nseccomp = "unconfined"\n')
    unconfined = load_squishfile(path)
    assert unconfined.seccomp == "unconfined"
    assert unconfined.spec_hash() != default.spec_hash()
    path.write_text('[run]\ncommand = "/bin/app"\n[security]\nseccomp = "strict"\n')
    with pytest.raises(
        ManifestError, match=r"security\.seccomp: must be 'default' or 'unconfined'"
    ):
        load_squishfile(path)
