"""What operators deploy (deploy/): systemd units, Prometheus rules, Grafana dashboard.

The real tools judge the files: ``promtool`` checks the scrape config and the
rules and runs the rules' unit tests, ``systemd-analyze verify`` checks both
units. Both come from Debian packages that ``scripts/setup --test`` installs,
so a missing tool fails these tests rather than skipping them.

The rest keeps the files honest against the code they describe: every metric
and label the rules and the dashboard query is one the real exporter
exports, every flag and variable the units pass is one ``squish daemon``
reads, and the Prometheus target is the daemon's default exporter address.
Renaming a metric or a flag without updating deploy/ fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from squish import main as cli
from squish.daemon.metrics import (
    CONTAINER_PHASES,
    CONTAINER_STATES,
    LAYER_KINDS,
    LAYER_RESULTS,
    RECONCILE_RESULTS,
    SYNC_RESULTS,
    Metrics,
)
from squish.reconcile.status import Phase

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "squish.rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "squish.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "squish-dashboard.json"
USER_UNIT = DEPLOY / "systemd" / "user" / "squish.service"
SYSTEM_UNIT = DEPLOY / "systemd" / "system" / "squish.service"

# Labels Prometheus adds at scrape time: never in the exposition itself.
TARGET_LABELS = {"job", "instance"}
# Dashboard variables stand for label values chosen at view time.
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$container": ".*"}

# squish's own metrics, and the daemon's process metrics (process_*) that
# prometheus_client's ProcessCollector exports beside them.
METRIC = re.compile(r"\b((?:squish|process)_[a-z0-9_]+)\b(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup --test (as root) first")
    return path


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=50, check=False, **kwargs)


# -- what the exporter really exports ------------------------------------------------


def exported() -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> the values seen, with every labelled series present."""
    metrics = Metrics(version="test")
    metrics.set_manifests(valid=1, invalid=1)
    metrics.set_containers(dict.fromkeys(CONTAINER_STATES, 1))
    for result in RECONCILE_RESULTS:
        metrics.observe_reconcile(0.01, result, full=True)
    metrics.container_started(0.01)
    metrics.container_seen("web")
    metrics.set_container_phases({f"c-{phase.value}": phase for phase in Phase})
    metrics.container_restarted("web")
    metrics.container_start_failed("web")
    for kind in LAYER_KINDS:
        for result in LAYER_RESULTS:
            metrics.layer_fetched(kind, result, downloaded=1)
    for result in SYNC_RESULTS:
        metrics.source_synced("infra", result, revision="abc123")
    metrics.track_process("web", os.getpid())

    names: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            labels = names.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return names


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, set[str]]]:
    return exported()


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def dashboard_queries() -> list[str]:
    """Every PromQL the dashboard runs: panel targets and variable queries."""
    queries = [value for key, value in walk(dashboard()) if key == "expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def check_references(where: str, expr: str, samples: dict[str, dict[str, set[str]]]) -> None:
    for match in METRIC.finditer(expr):
        name, selector = match.group(1), match.group(2) or ""
        assert name in samples, (
            f"{where}: {name} is not exported (exported: {', '.join(sorted(samples))})"
        )
        labels = samples[name]
        for key, op, value in MATCHER.findall(selector):
            if key in TARGET_LABELS or "$" in value:
                continue
            assert key in labels, f"{where}: {name} has no label {key!r} (has {sorted(labels)})"
            if op == "=":
                wanted = {value}
            elif op == "=~" and re.fullmatch(r"[\w|]+", value):
                wanted = set(value.split("|"))
            else:
                continue
            missing = wanted - labels[key]
            assert not missing, f"{where}: {name}{{{key}}} is never {sorted(missing)}"


# -- Prometheus ---------------------------------------------------------------------


def test_prometheus_config_and_the_rules_it_loads_are_valid() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_the_daemons_default_exporter_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SQUISH_METRICS_ADDR", raising=False)
    default = cli.build_parser().parse_args(["daemon"]).metrics_addr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "squish"
    assert [c["targets"] for c in job["static_configs"]] == [[default]]
    assert [PROMETHEUS_CONFIG.parent / f for f in config["rule_files"]] == [RULES]


def test_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # A file whose tests never ran (an empty tests: list) also says SUCCESS.
    assert yaml.safe_load(RULES_TESTS.read_text())["tests"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    healthy = next(case for case in tests if case["name"] == "healthy")
    assert {check["alertname"] for check in healthy["alert_rule_test"]} == names
    assert all(check["exp_alerts"] == [] for check in healthy["alert_rule_test"])


def test_every_alert_explains_itself_and_names_what_it_is_about(
    samples: dict[str, dict[str, set[str]]],
) -> None:
    for alert in alerts():
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), f"{alert['alert']}: no summary"
        assert annotations.get("description"), f"{alert['alert']}: no description"
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}
        referenced = {m.group(1) for m in METRIC.finditer(alert["expr"])}
        for label in ("container", "source"):
            if any(label in samples.get(name, {}) for name in referenced):
                for field in ("summary", "description"):
                    assert f"$labels.{label}" in annotations[field], (
                        f"{alert['alert']}: its {field} does not name the {label}"
                    )


def test_container_down_alert_covers_every_phase_but_running_stopped_and_exited() -> None:
    # stopped (squish stop) and exited (done, by its restart policy) are what
    # the manifest asked for; any other phase is a container that should run
    # and does not. A phase added to squish.reconcile.status.Phase must be placed here.
    [down] = [alert for alert in alerts() if alert["alert"] == "SquishContainerDown"]
    matchers = {
        key: (op, value)
        for match in METRIC.finditer(down["expr"])
        if match.group(1) == "squish_container_state"
        for key, op, value in MATCHER.findall(match.group(2) or "")
    }
    op, value = matchers["state"]
    assert op == "=~"
    assert set(value.split("|")) == set(CONTAINER_PHASES) - {"running", "stopped", "exited"}


def test_rules_query_only_what_the_exporter_exports(
    samples: dict[str, dict[str, set[str]]],
) -> None:
    for rule in rules():
        check_references(rule.get("alert") or rule["record"], rule["expr"], samples)


# -- Grafana ------------------------------------------------------------------------


def test_dashboard_queries_only_what_the_exporter_exports(
    samples: dict[str, dict[str, set[str]]],
) -> None:
    queries = dashboard_queries()
    for expr in queries:
        check_references("dashboard", expr, samples)
    used = {m.group(1) for expr in queries for m in METRIC.finditer(expr)}
    wanted = {
        "squish_containers",
        "squish_container_restarts_total",
        "squish_container_start_duration_seconds_bucket",
        "squish_reconcile_duration_seconds_bucket",
        "squish_reconciles_total",
        "squish_manifests",
        "squish_container_cpu_seconds_total",
        "squish_container_memory_rss_bytes",
        "squish_layer_fetches_total",
        "squish_layer_download_bytes_total",
        "squish_source_syncs_total",
        "squish_source_revision_info",
        "squish_source_last_sync_timestamp_seconds",
        "squish_container_state",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    }
    assert wanted - used == set(), "the dashboard shows none of these"


def test_dashboard_container_picker_lists_every_container_not_only_running_ones() -> None:
    # Containers that are down have no CPU or memory series; they are exactly
    # the ones someone opening the dashboard wants to pick.
    [picker] = [v for v in dashboard()["templating"]["list"] if v["name"] == "container"]
    assert picker["definition"] == picker["query"]["query"]
    assert re.fullmatch(
        r"label_values\(squish_container_state\{[^}]*\}, container\)", picker["definition"]
    )
    assert picker["includeAll"] and picker["allValue"] == ".*"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no expression checker of its own, but it parses every
    # rule's expression: each query becomes a recording rule.
    queries = [q for q in dashboard_queries() if not q.startswith("label_values(")]
    recorded = []
    for index, query in enumerate(queries):
        expr = query
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown dashboard variable in {query}"
        recorded.append({"record": f"dashboard:query_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = run(tool("promtool"), "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_takes_its_data_source_as_an_input() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    sources = [value for key, value in walk(board) if key == "datasource"]
    assert sources
    for source in sources:
        if source.get("type") == "grafana":
            continue  # the built-in annotations
        assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_dashboard_panels_fit_the_grid_and_have_unique_ids() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"] for t in panel["targets"]), panel["title"]


# -- systemd ------------------------------------------------------------------------


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_start(unit: Path) -> list[str]:
    [command] = unit_settings(unit)["ExecStart"]
    return shlex.split(command)


def verify(unit: Path, tmp_path: Path, *, user: bool) -> None:
    """systemd-analyze verify, with ExecStart pointed at this checkout's squish.

    verify insists that ExecStart's program exists; the units name where an
    installed squish lives, so a copy runs ``python -m squish`` instead.
    """
    copy = tmp_path / ("user" if user else "system") / unit.name
    copy.parent.mkdir()
    program = exec_start(unit)[0]
    text = unit.read_text()
    assert text.count(f"ExecStart={program} ") == 1
    copy.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={sys.executable} -m squish "))
    argv = [tool("systemd-analyze")]
    env = dict(os.environ)
    if user:
        # The user manager wants a runtime directory; in CI there is no login session.
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        argv.append("--user")
    result = run(*argv, "verify", str(copy), env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys and bad values are only warnings to verify, exit status 0.
    assert unit.name not in output, output


def test_user_unit_verifies(tmp_path: Path) -> None:
    verify(USER_UNIT, tmp_path, user=True)


def test_system_unit_verifies(tmp_path: Path) -> None:
    verify(SYSTEM_UNIT, tmp_path, user=False)


@pytest.mark.parametrize("unit", [USER_UNIT, SYSTEM_UNIT], ids=["user", "system"])
def test_unit_runs_the_daemon_with_real_flags_and_variables(
    unit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SQUISH_METRICS_ADDR", "SQUISH_STATE_DIR", "SQUISH_MANIFESTS"):
        monkeypatch.delenv(name, raising=False)
    settings = unit_settings(unit)
    argv = exec_start(unit)
    assert argv[0].endswith("/squish")
    args = cli.build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown flag
    assert args.command == "daemon"
    default = cli.build_parser().parse_args(["daemon"])
    assert args.metrics_addr == default.metrics_addr  # where prometheus.yml scrapes

    assert settings["Type"] == ["notify"]
    assert settings["KillMode"] == ["mixed"]
    # systemd must not SIGKILL containers the daemon is still stopping.
    [timeout] = settings["TimeoutStopSec"]
    assert float(timeout) >= args.stop_timeout + 15

    source = "\n".join(p.read_text() for p in (REPO / "squish").rglob("*.py"))
    environment = dict(e.partition("=")[::2] for e in settings["Environment"])
    assert {"SQUISH_STATE_DIR", "SQUISH_SOCKET", "SQUISH_MANIFESTS"} <= set(environment)
    for name in environment:
        assert f'"{name}"' in source, f"{unit}: squish never reads ${name}"
    # The socket sits in the RuntimeDirectory systemd creates for it.
    assert environment["SQUISH_SOCKET"] == "%t/squish/squish.sock"
    assert settings["RuntimeDirectory"] == ["squish"]


def test_system_unit_runs_as_the_squish_user_without_breaking_bwrap() -> None:
    settings = unit_settings(SYSTEM_UNIT)
    assert settings["User"] == ["squish"]
    assert settings["StateDirectory"] == ["squish"]
    # Each of these makes bwrap fail: no user namespaces, no fresh /proc in
    # one, no sethostname, no /dev/net/tun for slirp4netns.
    for breaks_bwrap in (
        "PrivateUsers",
        "RestrictNamespaces",
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectProc",
        "ProcSubset",
        "ProtectHostname",
        "PrivateDevices",
        "ProtectClock",
        "DevicePolicy",
        "SystemCallFilter",
    ):
        assert breaks_bwrap not in settings, breaks_bwrap
