"""Squishfiles created and deleted in a burst, a few kept among them.

Fifty names are each created and removed again within milliseconds, as a
deploy script that changes its mind or a sync tool's temporary copies do;
some are seen by the daemon and started, some are removed while they start,
most never. Five kept ones are written in the same burst. At the end
exactly the kept ones run, once each; nothing of a removed one is left in
the daemon's process tree (read from /proc: each container's ``sleep``
carries its own number), and the removed ones are gone from ``squish ps
-a``. A real daemon, rootless bwrap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.faults.daemon_under_test import Daemon

CHURNED = 50
KEPT = 5
# Each container's sleep says whose it is: churned n sleeps 10000 + n
# seconds, kept k 20000 + k (bwrap's command line ends with it too).
CHURNED_SLEEP = 10000
KEPT_SLEEP = 20000


def squishfile(seconds: int) -> str:
    return f'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["{seconds}"]\n'


@pytest.fixture
def daemon(tmp_path: Path, rootless: None) -> Iterator[Daemon]:
    running = Daemon(tmp_path, "--resync", "0.5")
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def descendants(pid: int) -> dict[int, tuple[str, list[str]]]:
    """Every live process below ``pid``: its state letter and command line."""
    parents: dict[int, int] = {}
    found: dict[int, tuple[str, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        # The command name is in parentheses and may hold spaces: split after it.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        parents[int(entry.name)] = int(ppid)
        found[int(entry.name)] = (state, cmdline.decode(errors="replace").split("\0")[:-1])

    def below(candidate: int) -> bool:
        while candidate in parents and candidate != 1:
            candidate = parents[candidate]
            if candidate == pid:
                return True
        return False

    return {child: found[child] for child in found if below(child)}


def sleeps(tree: dict[int, tuple[str, list[str]]]) -> list[int]:
    """The seconds each ``sleep`` of the tree was given (a zombie has no command line)."""
    return sorted(int(argv[-1]) for _, argv in tree.values() if argv[:1] == ["/bin/sleep"])


def test_a_burst_of_created_and_deleted_squishfiles_leaves_only_the_kept_ones(
    daemon: Daemon,
) -> None:
    kept = {f"kept{k}": KEPT_SLEEP + k for k in range(KEPT)}
    every = CHURNED // KEPT
    for n in range(CHURNED):
        path = daemon.manifests / f"churn{n}.toml"
        path.write_text(squishfile(CHURNED_SLEEP + n))
        time.sleep(0.005 * (n % 7))  # from no time at all to 30 ms
        if n % every == 0:
            name = f"kept{n // every}"
            (daemon.manifests / f"{name}.toml").write_text(squishfile(kept[name]))
        path.unlink()

    def rows() -> dict[str, str]:
        with daemon.client() as client:
            return {row["name"]: row["phase"] for row in client.containers()}

    wanted = dict.fromkeys(kept, "running")
    try:
        eventually(lambda: rows() == wanted or None, timeout=15)
        eventually(lambda: sleeps(descendants(daemon.process.pid)) == sorted(kept.values()) or None)
    except AssertionError:
        tree = descendants(daemon.process.pid)
        raise AssertionError(f"{rows()}\n{tree}\n{daemon.log_text()[-4000:]}") from None
    time.sleep(1.5)  # a few resyncs: nothing comes back, nothing more goes

    assert rows() == wanted
    tree = descendants(daemon.process.pid)
    assert sleeps(tree) == sorted(kept.values()), tree
    kept_argv = [[str(seconds)] for seconds in kept.values()]
    strays = {pid: argv for pid, (_, argv) in tree.items() if argv[-1:] not in kept_argv}
    assert strays == {}, strays  # nothing of a churned one, bwrap or sleep
    zombies = [(pid, argv) for pid, (state, argv) in tree.items() if state == "Z"]
    assert zombies == [], zombies
    ps = daemon.squish("ps", "-a")
    assert ps.returncode == 0, ps.stderr
    assert sorted(line.split()[1] for line in ps.stdout.splitlines()[1:]) == sorted(kept)
    for name in kept:
        detail = daemon.detail(name)
        assert detail is not None and detail["restarts"] == 0, detail
    log = daemon.log_text()
    assert "Traceback" not in log, log[-4000:]
    for name in kept:
        assert log.count(f"container.started {name}:") == 1, log[-4000:]
    # The burst was seen: some churned ones were started (and so had to be
    # stopped again), not all of it fell between two looks of the daemon.
    started = log.count("container.started churn")
    assert started >= 1, log[-4000:]
    assert log.count("container.stopped churn") == started, log[-4000:]
    code, _ = daemon.terminate(timeout=20)
    assert code == 0, daemon.log_text()[-4000:]
    left = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
    assert left == [], left
