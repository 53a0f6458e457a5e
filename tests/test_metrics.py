"""Tests of the Prometheus exporter (squish.daemon.metrics).

Every check reads the exposition the way Prometheus would, through
prometheus_client's own text parser, rather than peeking at metric objects.
The process collectors are checked against a real process tree spawned here
and against this test process itself,
``serve()`` against a real HTTP scrape, and the names and types against the
real ``promtool check metrics`` (Debian's ``prometheus`` package, installed by
``scripts/setup``). Nothing needs privileges.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from squish.daemon.metrics import CONTAINER_PHASES, Metrics
from squish.errors import SquishError
from squish.reconcile.status import Phase
from tests.conftest import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CONTAINER_STATES = ("running", "stopped", "failed", "backoff")
RECONCILE_RESULTS = ("success", "error", "requeue")


FAMILIES = {
    "squish_build_info",
    "squish_manifests",
    "squish_containers",
    "squish_reconcile_duration_seconds",
    "squish_reconciles",  # the parser drops a counter's _total from the family name
    "squish_container_starts",
    "squish_container_start_duration_seconds",
    "squish_container_restarts",
    "squish_container_cpu_seconds",
    "squish_container_memory_rss_bytes",
    "squish_container_state",
    # The daemon's own process, from prometheus_client's ProcessCollector.
    "process_resident_memory_bytes",
    "process_cpu_seconds",
    "process_open_fds",
}


def families(metrics: Metrics) -> set[str]:
    return {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}


def samples(text: bytes | str) -> Samples:
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics.exposition()).get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(version="1.2.3")


# -- what a first scrape shows -------------------------------------------------


def test_initial_exposition_has_every_family(metrics: Metrics) -> None:
    assert families(metrics) >= FAMILIES


def test_initial_exposition_has_every_known_label_value_at_zero(metrics: Metrics) -> None:
    got = samples(metrics.exposition())
    expected = {
        **{("squish_containers", (("state", s),)): 0.0 for s in CONTAINER_STATES},
        **{("squish_reconciles_total", (("result", r),)): 0.0 for r in RECONCILE_RESULTS},
        **{("squish_manifests", (("state", s),)): 0.0 for s in ("valid", "invalid")},
        ("squish_container_starts_total", ()): 0.0,
        ("squish_reconcile_duration_seconds_count", (("scope", "full"),)): 0.0,
        ("squish_reconcile_duration_seconds_count", (("scope", "names"),)): 0.0,
        ("squish_container_start_duration_seconds_count", ()): 0.0,
    }
    assert {key: got.get(key) for key in expected} == expected


def test_build_info_carries_the_version(metrics: Metrics) -> None:
    assert value(metrics, "squish_build_info", version="1.2.3") == 1.0


def test_registry_is_private() -> None:
    # Two in one process (two daemons in a test) must not clash or share.
    first, second = Metrics(version="a"), Metrics(version="b")
    first.container_started(0.1)
    assert value(first, "squish_container_starts_total") == 1.0
    assert value(second, "squish_container_starts_total") == 0.0


# -- what the reconciler and runtime report ----------------------------------


def test_set_manifests(metrics: Metrics) -> None:
    metrics.set_manifests(valid=3, invalid=1)
    assert value(metrics, "squish_manifests", state="valid") == 3.0
    assert value(metrics, "squish_manifests", state="invalid") == 1.0


def test_set_containers_zeroes_states_not_given(metrics: Metrics) -> None:
    metrics.set_containers({"running": 2, "failed": 1, "backoff": 4})
    metrics.set_containers({"running": 3})
    got = {s: value(metrics, "squish_containers", state=s) for s in CONTAINER_STATES}
    assert got == {"running": 3.0, "stopped": 0.0, "failed": 0.0, "backoff": 0.0}


def test_set_containers_rejects_an_unknown_state(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="crashed"):
        metrics.set_containers({"crashed": 1})


def test_observe_reconcile_counts_by_result_and_times(metrics: Metrics) -> None:
    metrics.observe_reconcile(0.002, "success", full=True)
    metrics.observe_reconcile(0.004, "success", full=False)
    metrics.observe_reconcile(3.0, "error", full=True)
    got = samples(metrics.exposition())
    counts = {r: got[("squish_reconciles_total", (("result", r),))] for r in RECONCILE_RESULTS}
    assert counts == {"success": 2.0, "error": 1.0, "requeue": 0.0}
    full, names = (("scope", "full"),), (("scope", "names"),)
    assert got[("squish_reconcile_duration_seconds_count", full)] == 2.0
    assert got[("squish_reconcile_duration_seconds_count", names)] == 1.0
    assert got[("squish_reconcile_duration_seconds_sum", full)] == pytest.approx(3.002)
    assert got[("squish_reconcile_duration_seconds_sum", names)] == pytest.approx(0.004)
    assert got[("squish_reconcile_duration_seconds_bucket", (("le", "0.0025"), *full))] == 1.0
    assert got[("squish_reconcile_duration_seconds_bucket", (("le", "0.0025"), *names))] == 0.0
    assert got[("squish_reconcile_duration_seconds_bucket", (("le", "+Inf"), *full))] == 2.0


def test_observe_reconcile_rejects_an_unknown_result(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="sucess"):
        metrics.observe_reconcile(0.1, "sucess", full=True)
    assert ("squish_reconciles_total", (("result", "sucess"),)) not in samples(metrics.exposition())
    assert value(metrics, "squish_reconcile_duration_seconds_count", scope="full") == 0.0


def test_container_started_counts_and_times(metrics: Metrics) -> None:
    metrics.container_started(0.0015)
    metrics.container_started(7.0)
    got = samples(metrics.exposition())
    assert got[("squish_container_starts_total", ())] == 2.0
    bucket = "squish_container_start_duration_seconds_bucket"
    # The buckets span 1 ms .. 10 s.
    assert got[(bucket, (("le", "0.001"),))] == 0.0
    assert got[(bucket, (("le", "0.0025"),))] == 1.0
    assert got[(bucket, (("le", "5.0"),))] == 1.0
    assert got[(bucket, (("le", "10.0"),))] == 2.0


def test_container_restarted_counts_per_container(metrics: Metrics) -> None:
    metrics.container_restarted("web")
    metrics.container_restarted("web")
    metrics.container_restarted("db")
    assert value(metrics, "squish_container_restarts_total", container="web") == 2.0
    assert value(metrics, "squish_container_restarts_total", container="db") == 1.0


def test_a_seen_container_has_its_counters_at_zero(metrics: Metrics) -> None:
    # increase() counts from a series' first sample: one born at 1 hides
    # the first restart.
    assert value(metrics, "squish_container_restarts_total", container="web") is None
    metrics.container_seen("web")
    assert value(metrics, "squish_container_restarts_total", container="web") == 0.0
    assert value(metrics, "squish_container_start_failures_total", container="web") == 0.0


def test_seeing_a_container_again_keeps_its_counts(metrics: Metrics) -> None:
    metrics.container_seen("web")
    metrics.container_restarted("web")
    metrics.container_start_failed("web")
    metrics.container_seen("web")
    assert value(metrics, "squish_container_restarts_total", container="web") == 1.0
    assert value(metrics, "squish_container_start_failures_total", container="web") == 1.0


def container_states(metrics: Metrics) -> dict[str, dict[str, float]]:
    """squish_container_state as container -> state -> value."""
    got: dict[str, dict[str, float]] = {}
    for (name, labels), sample in samples(metrics.exposition()).items():
        if name == "squish_container_state":
            label = dict(labels)
            got.setdefault(label["container"], {})[label["state"]] = sample
    return got


def test_container_state_has_every_phase_and_one_is_current(metrics: Metrics) -> None:
    assert set(CONTAINER_PHASES) == {p.value for p in Phase} >= {"running", "backoff"}
    metrics.set_container_phases({"web": Phase.RUNNING, "db": Phase.BACKOFF})
    got = container_states(metrics)
    assert set(got) == {"web", "db"}
    for container, current in (("web", "running"), ("db", "backoff")):
        assert set(got[container]) == set(CONTAINER_PHASES)
        assert {s for s, v in got[container].items() if v == 1.0} == {current}
        assert {v for s, v in got[container].items() if s != current} == {0.0}


def test_container_state_follows_the_last_set_and_drops_the_missing(metrics: Metrics) -> None:
    metrics.set_container_phases({"web": Phase.PENDING, "db": Phase.RUNNING})
    metrics.set_container_phases({"web": Phase.FAILED})
    got = container_states(metrics)
    assert set(got) == {"web"}
    assert got["web"]["failed"] == 1.0
    assert got["web"]["pending"] == 0.0


def test_one_containers_state_changes_alone(metrics: Metrics) -> None:
    metrics.set_container_phases({"web": Phase.PENDING, "db": Phase.RUNNING})
    metrics.set_container_phase("web", Phase.RUNNING)
    metrics.set_container_phase("new", Phase.BACKOFF)
    got = container_states(metrics)
    current = {name: {s for s, v in states.items() if v == 1.0} for name, states in got.items()}
    assert current == {"web": {"running"}, "db": {"running"}, "new": {"backoff"}}


def test_forget_container_drops_its_series(metrics: Metrics) -> None:
    metrics.container_restarted("web")
    metrics.container_restarted("db")
    metrics.container_start_failed("web")
    metrics.set_container_phases({"web": Phase.RUNNING, "db": Phase.RUNNING})
    metrics.track_process("web", os.getpid())
    metrics.track_process("db", os.getpid())
    metrics.forget_container("web")
    labelled = {
        (name, dict(labels).get("container")) for name, labels in samples(metrics.exposition())
    }
    assert {container for _, container in labelled} - {None} == {"db"}
    assert ("squish_container_cpu_seconds_total", "db") in labelled
    assert ("squish_container_memory_rss_bytes", "db") in labelled
    assert ("squish_container_state", "db") in labelled
    assert ("squish_container_restarts_total", "db") in labelled


def test_forget_container_that_never_restarted_is_fine(metrics: Metrics) -> None:
    metrics.forget_container("never-seen")
    assert families(metrics) >= FAMILIES


# -- the process collector, on real processes ---------------------------------


@pytest.fixture
def busy_tree() -> Iterator[subprocess.Popen[bytes]]:
    """A tree whose root (sleep) burns no CPU; only a grandchild does.

    root: sleep  ->  sh (waits)  ->  sh (busy loop)
    So any CPU reported for the root's pid proves descendants are summed.
    """
    proc = subprocess.Popen(
        ["sh", "-c", "(while :; do :; done & wait) & exec sleep 30"],
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def own_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_process_tree_cpu_and_rss_include_descendants(
    metrics: Metrics, busy_tree: subprocess.Popen[bytes]
) -> None:
    metrics.track_process("busy", busy_tree.pid)
    deadline = time.monotonic() + 10
    cpu = 0.0
    while time.monotonic() < deadline:
        cpu = value(metrics, "squish_container_cpu_seconds_total", container="busy") or 0.0
        if cpu >= 0.1:
            break
        time.sleep(0.05)
    assert cpu >= 0.1, "the busy grandchild's CPU time is not in the container's total"
    rss = value(metrics, "squish_container_memory_rss_bytes", container="busy")
    assert rss is not None
    assert rss > own_rss(busy_tree.pid) > 0


def test_a_child_forked_by_a_thread_is_part_of_the_tree(metrics: Metrics) -> None:
    """A child forked by a thread other than the main one is listed only under that
    thread's children file; the tree still counts it.

    root: python (sleeps; a thread of it forks and waits)  ->  sh (busy loop)
    """
    script = (
        "import subprocess, threading, time\n"
        "def fork():\n"
        "    subprocess.Popen(['sh', '-c', 'while :; do :; done'])\n"
        "    time.sleep(30)\n"
        "threading.Thread(target=fork).start()\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        metrics.track_process("threaded", proc.pid)
        deadline = time.monotonic() + 10
        cpu = 0.0
        while time.monotonic() < deadline:
            cpu = value(metrics, "squish_container_cpu_seconds_total", container="threaded") or 0
            if cpu >= 0.1:
                break
            time.sleep(0.05)
        assert cpu >= 0.1, "the busy child of a non-main thread is not in the container's total"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_process_cpu_is_monotonic_while_running(
    metrics: Metrics, busy_tree: subprocess.Popen[bytes]
) -> None:
    metrics.track_process("busy", busy_tree.pid)
    readings = []
    for _ in range(5):
        readings.append(value(metrics, "squish_container_cpu_seconds_total", container="busy"))
        time.sleep(0.05)
    assert readings == sorted(readings)


def test_a_dead_pid_is_skipped(metrics: Metrics) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    metrics.track_process("gone", dead.pid)
    metrics.track_process("alive", os.getpid())
    got = samples(metrics.exposition())
    containers = {dict(labels).get("container") for _, labels in got}
    assert "gone" not in containers
    assert got[("squish_container_cpu_seconds_total", (("container", "alive"),))] > 0


def test_a_process_that_exits_after_tracking_disappears(metrics: Metrics) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    metrics.track_process("short", proc.pid)
    assert value(metrics, "squish_container_memory_rss_bytes", container="short")
    proc.kill()
    proc.wait()
    assert value(metrics, "squish_container_memory_rss_bytes", container="short") is None
    assert value(metrics, "squish_container_cpu_seconds_total", container="short") is None


def test_tracking_again_replaces_the_pid(metrics: Metrics) -> None:
    # A restarted container gets a new process: the old one's exit must not
    # make the container's series disappear.
    first = subprocess.Popen(["sleep", "30"])
    metrics.track_process("web", first.pid)
    second = subprocess.Popen(["sleep", "30"])
    try:
        metrics.track_process("web", second.pid)
        first.kill()
        first.wait()
        assert value(metrics, "squish_container_memory_rss_bytes", container="web")
    finally:
        first.kill()
        second.kill()
        first.wait()
        second.wait()


# -- the daemon's own process ---------------------------------------------------


def test_the_daemons_own_memory_is_this_process(metrics: Metrics) -> None:
    # Within 8 MiB: the interpreter allocates a little while it parses.
    rss = value(metrics, "process_resident_memory_bytes")
    assert rss == pytest.approx(own_rss(os.getpid()), abs=8 * 1024 * 1024)


def test_the_daemons_own_cpu_is_this_process(metrics: Metrics) -> None:
    before = os.times()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass  # burn some CPU of our own
    cpu = value(metrics, "process_cpu_seconds_total")
    after = os.times()
    assert cpu is not None
    # Both read the kernel's tick counts; allow a tick or two either side.
    assert before.user + before.system - 0.05 <= cpu <= after.user + after.system + 0.05
    assert cpu >= 0.2


def test_the_daemons_open_fds_count_what_it_opens(metrics: Metrics) -> None:
    before = value(metrics, "process_open_fds")
    assert before is not None
    files = [open(os.devnull, "rb") for _ in range(20)]  # noqa: SIM115
    try:
        during = value(metrics, "process_open_fds")
    finally:
        for f in files:
            f.close()
    assert during is not None
    assert during - before >= 20


# -- serving over HTTP ---------------------------------------------------------


def scrape(port: int) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.headers["Content-Type"], response.read()


def test_serve_answers_a_scrape(metrics: Metrics) -> None:
    metrics.container_restarted("web")
    port = free_port()
    stop = metrics.serve("127.0.0.1", port)
    try:
        content_type, body = scrape(port)
    finally:
        stop()
    assert content_type.startswith("text/plain")
    assert "version=0.0.4" in content_type
    assert samples(body)[("squish_container_restarts_total", (("container", "web"),))] == 1.0


def test_serve_shutdown_frees_the_port(metrics: Metrics) -> None:
    port = free_port()
    metrics.serve("127.0.0.1", port)()
    with pytest.raises(OSError):
        scrape(port)
    stop = metrics.serve("127.0.0.1", port)
    stop()
    stop()  # a second call is harmless


def test_serve_on_a_port_in_use_is_a_squish_error(metrics: Metrics) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(SquishError) as caught:
            metrics.serve("127.0.0.1", port)
    message = str(caught.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message
    assert "in use" in message


# -- Prometheus' own linter ------------------------------------------------------


def test_promtool_finds_nothing_to_complain_about(
    metrics: Metrics, busy_tree: subprocess.Popen[bytes]
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run scripts/setup as root (installs Debian's prometheus)")
    # Every family with samples, so the linter sees each kind of series.
    metrics.set_manifests(valid=2, invalid=1)
    metrics.set_containers({"running": 1})
    metrics.observe_reconcile(0.01, "success", full=True)
    metrics.container_started(0.02)
    metrics.container_seen("busy")
    metrics.container_restarted("busy")
    metrics.container_start_failed("busy")
    metrics.set_container_phases({"busy": Phase.RUNNING})
    metrics.track_process("busy", busy_tree.pid)
    port = free_port()
    stop = metrics.serve("127.0.0.1", port)
    try:
        _, body = scrape(port)
    finally:
        stop()
    assert b"squish_container_cpu_seconds_total{" in body
    assert b"squish_container_state{" in body
    assert b"process_open_fds " in body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
