"""Health checks: the status each result leads to (pure), and the reconciler running them.

The reconciler's part runs on the real reconciler with the fake runtime,
whose ``exec`` answers what the test says; tests/test_exec.py and the e2e
suite run real checks in real containers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from squish import api_schema as schema
from squish.model.squishfile import Health
from squish.reconcile.health import CheckResult, HealthState, first_lines
from squish.runtime import ExecResult
from tests.control_plane import Plane, real_plane, squishfile, until

pytestmark = pytest.mark.anyio

OK, FAIL = 0, 1


def state(*, retries: int = 3, start_period: float = 0.0) -> HealthState:
    return HealthState("id", Health(("true",), retries=retries, start_period=start_period), 100.0)


def at(when: float, code: int) -> CheckResult:
    return CheckResult(when, when + 0.01, code, "")


@pytest.mark.parametrize(
    ("results", "statuses"),
    [
        # (time, exit code) of each check -> the status after each
        ([(130, OK)], ["healthy"]),
        ([(130, FAIL), (160, FAIL), (190, FAIL)], ["starting", "starting", "unhealthy"]),
        ([(130, OK), (160, FAIL), (190, FAIL), (220, OK)], ["healthy"] * 4),
        (
            [(130, OK), (160, FAIL), (190, FAIL), (220, FAIL), (250, OK)],
            ["healthy", "healthy", "healthy", "unhealthy", "healthy"],
        ),
        ([(130, FAIL), (160, OK), (190, FAIL)], ["starting", "healthy", "healthy"]),
    ],
    ids=["first-success", "three-failures", "a-success-ends-the-streak", "back", "in-between"],
)
def test_a_status_from_results(results: list[tuple[float, int]], statuses: list[str]) -> None:
    health = state()
    seen = []
    for when, code in results:
        health.record(at(when, code))
        seen.append(health.status)
    assert seen == statuses


def test_failures_in_the_start_period_do_not_count_but_a_success_does() -> None:
    health = state(retries=1, start_period=30)  # started at 100: until 130
    assert not health.record(at(110, FAIL)) and health.status == "starting"
    assert health.failing_streak == 0
    assert health.record(at(120, OK)) and health.status == "healthy"
    # Once healthy, a failure counts even inside the start period.
    assert health.record(at(125, FAIL)) and health.status == "unhealthy"
    late = state(retries=1, start_period=30)
    assert late.record(at(131, FAIL)) and late.status == "unhealthy"


def test_the_last_five_results_are_kept_and_outputs_cut() -> None:
    health = state()
    for index in range(7):
        health.record(CheckResult(100 + index, 101 + index, index, f"run {index}"))
    assert [r.exit_code for r in health.log] == [2, 3, 4, 5, 6]
    assert first_lines("a\nb\nc\nd\ne\nf\ng") == "a\nb\nc\nd\ne"
    assert len(first_lines("x" * 10000).encode()) == 4096


# -- on the real reconciler ---------------------------------------------------------

CHECKED = squishfile() + '[health]\ncommand = ["/bin/check"]\ninterval = "50ms"\nretries = 2\n'


def row(plane: Plane, name: str) -> dict[str, Any]:
    """``name``'s row of ``ps -a`` (empty before the reconciler has seen it)."""
    return next((dict(r) for r in plane.control.containers() if r["name"] == name), {})


async def test_the_reconciler_reports_health_as_checks_say(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.runtime.exec_results["web"] = ExecResult(1, "not yet\n", 0.001)
        with plane.reconciler.subscribe() as events:
            plane.write("web", CHECKED)
            await until(lambda: row(plane, "web").get("phase") == "running")
            assert row(plane, "web").get("health") == "starting"
            await until(lambda: row(plane, "web").get("health") == "unhealthy")
            plane.runtime.exec_results["web"] = ExecResult(0, "fine\n", 0.001)
            await until(lambda: row(plane, "web").get("health") == "healthy")
            await anyio.sleep(0.2)  # more checks, no more changes
            seen = []
            while True:
                try:
                    event = events.receive_nowait()
                except anyio.WouldBlock:
                    break
                if event.kind == "container.health":
                    seen.append(event.message)
        assert seen == ["unhealthy: the check exited with 1: not yet", "healthy"]
        detail = plane.control.inspect("web")
        checks = detail["health_checks"]
        assert checks is not None
        assert checks["status"] == "healthy" and checks["failing_streak"] == 0
        assert len(checks["log"]) == 5 and checks["log"][-1]["output"] == "fine"
        assert all(call == ("exec", plane.ids()["web"]) for call in plane.runtime.calls[-5:])
        scrape = plane.metrics.exposition().decode()
        assert 'squish_container_health{container="web",status="healthy"} 1.0' in scrape
        assert 'squish_container_health{container="web",status="unhealthy"} 0.0' in scrape
        assert "squish_health_check_duration_seconds_count" in scrape
        # Stopped, it has no health (and no checks run).
        await plane.control.stop("web")
        assert row(plane, "web")["health"] is None
        assert plane.control.inspect("web")["health_checks"] is None


async def test_on_failure_restart_replaces_an_unhealthy_process_as_a_crash(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.runtime.exec_results["web"] = ExecResult(1, "", 0.001)
        plane.write("web", CHECKED + 'on_failure = "restart"\n')
        await until(lambda: row(plane, "web").get("phase") == "running")
        first = plane.ids()["web"]
        await until(lambda: plane.ids().get("web", first) != first)
        plane.runtime.exec_results["web"] = ExecResult(0, "", 0.001)
        await until(lambda: row(plane, "web").get("health") == "healthy")
        web = row(plane, "web")
        assert web["restarts"] == 1
        assert "restarted: unhealthy" in plane.reconciler.records["web"].exit_reason


async def test_a_container_without_health_has_none(tmp_path: Path) -> None:
    async with real_plane(tmp_path) as plane:
        plane.write("web", squishfile())
        await until(lambda: row(plane, "web").get("phase") == "running")
        web: schema.Container = plane.control.containers()[0]
        assert web["health"] is None
        assert not [call for call in plane.runtime.calls if call[0] == "exec"]


async def test_a_check_that_cannot_run_is_a_failure(tmp_path: Path) -> None:
    from squish.errors import RuntimeFailure

    async with real_plane(tmp_path) as plane:
        plane.runtime.exec_results["web"] = RuntimeFailure("cannot exec: Too many open files")
        plane.write("web", CHECKED)
        await until(lambda: row(plane, "web").get("health") == "unhealthy")
        checks = plane.control.inspect("web")["health_checks"]
        assert checks is not None
        assert checks["log"][-1]["exit_code"] == 125
        assert (
            "the check could not run: cannot exec: Too many open files"
            in checks["log"][-1]["output"]
        )


PROBED = squishfile() + '[health]\nhttp = 8080\ninterval = "50ms"\nretries = 1\n'


async def test_http_and_tcp_checks_are_the_runtimes_probes_not_execs(tmp_path: Path) -> None:
    from squish.runtime import Probe

    async with real_plane(tmp_path) as plane:
        plane.runtime.probe_results["web"] = ExecResult(
            1, "HTTP 503 Service Unavailable\ndraining\n", 0.001
        )
        with plane.reconciler.subscribe() as events:
            plane.write("web", PROBED)
            await until(lambda: row(plane, "web").get("health") == "unhealthy")
            event = await events.receive()
            while event.kind != "container.health":
                event = await events.receive()
        # A probe's first line says what happened (a command's last).
        assert event.message == "unhealthy: HTTP 503 Service Unavailable"
        web = plane.ids()["web"]
        assert ("probe", web) in plane.runtime.calls
        assert ("exec", web) not in plane.runtime.calls
        checks = plane.control.inspect("web")["health_checks"]
        assert checks is not None
        assert checks["log"][-1]["output"] == "HTTP 503 Service Unavailable\ndraining"
        applied = plane.control.inspect("web")["applied"]
        assert applied is not None and (health := applied["health"]) is not None
        assert health["http"] == {"port": 8080, "path": "/", "headers": {}}
        assert (health["command"], health["tcp"]) == ([], None)
        plane.runtime.probe_results.pop("web")
        await until(lambda: row(plane, "web").get("health") == "healthy")

    squishfile_health = Health(tcp=5432)
    from squish.reconcile.reconciler import _probe

    assert _probe(squishfile_health) == Probe(5432)
    assert _probe(Health(("true",))) is None
