"""The daemon and downloaded layers: a mirror that is down, then up; a prefetched base.

Real daemon processes with the real runtime (rootless) and a fake Alpine
mirror on 127.0.0.1 serving a minirootfs that runs (the host's busybox).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_daemon import daemon, wait_for_socket
from test_registry import sdk
from test_runtime import real_minirootfs

from squish.cli.client import Client, JSONObject
from tests.conftest import eventually, free_port
from tests.fake_http import Mirror, Registry

SLEEPER = '[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n'


def metrics_port(process: subprocess.Popen[bytes]) -> int:
    argv = process.args
    assert isinstance(argv, list)
    return int(str(argv[argv.index("--metrics-addr") + 1]).rsplit(":", 1)[1])


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_an_unreachable_mirror_backs_off_and_leaves_others_alone(
    tmp_path: Path, rootless: None, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    process = daemon(
        tmp_path,
        "d",
        "--backoff-initial",
        "1",
        "--backoff-max",
        "2",
        state=tmp_path / "state",
        SQUISH_ALPINE_MIRROR=f"http://127.0.0.1:{port}/alpine",
    )
    stop_later.append(process)
    sock = tmp_path / "d.sock"
    wait_for_socket(sock, process)
    events: list[JSONObject] = []

    listening = threading.Event()

    def listen() -> None:
        with Client(sock) as client:
            for event in client.events():
                events.append(event)
                listening.set()
                if event.get("kind") == "container.started" and event.get("name") == "alpine":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # Change a probe container until its events arrive: then the
    # subscription is surely open before the events that matter happen.
    for generation in range(30):
        (manifests / "probe.toml").write_text(
            f'network = "none"\n[env]\nGENERATION = "{generation}"\n' + SLEEPER
        )
        if listening.wait(1):
            break
    (manifests / "plain.toml").write_text('network = "none"\n' + SLEEPER)
    (manifests / "alpine.toml").write_text(
        'network = "none"\n[layers]\nalpine = "3.19"\n' + SLEEPER
    )

    def row(name: str) -> JSONObject:
        with Client(sock) as client:
            rows = {status["name"]: status for status in client.containers()}
        return rows.get(name) or {"phase": "absent"}

    def in_phase(name: str, *phases: str) -> Callable[[], JSONObject | None]:
        return lambda: status if (status := row(name))["phase"] in phases else None

    failing = eventually(in_phase("alpine", "backoff", "failed"))
    assert "the Alpine mirror is unreachable" in failing["reason"]
    assert "nothing is cached" in failing["reason"]
    plain = eventually(in_phase("plain", "running"))

    # ps -a shows the reason, in one line (between retries).
    def ps_line() -> str | None:
        ps = subprocess.run(
            [sys.executable, "-m", "squish", "--socket", str(sock), "ps", "-a"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        (line,) = [line for line in ps.stdout.splitlines() if " alpine " in f" {line} "]
        return line if "Alpine mirror is unreachable" in line else None

    eventually(ps_line)

    # Retried with backoff: the failures add up in the metrics.
    def failures() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{metrics_port(process)}/metrics").text
        found = re.search(
            r'squish_container_start_failures_total\{container="alpine"\} (\S+)', text
        )
        errors = re.search(
            r'squish_layer_fetches_total\{kind="alpine",result="error"\} (\S+)', text
        )
        if found and errors and float(found.group(1)) >= 2 and float(errors.group(1)) >= 2:
            return float(found.group(1))
        return None

    eventually(failures, timeout=40)

    # The mirror comes back: the container starts at its next retry.
    mirror = Mirror(port)
    try:
        mirror.publish("3.19", "3.19.4", real_minirootfs("3.19.4"))
        eventually(in_phase("alpine", "running"), 60)
    finally:
        mirror.stop()
    listener.join(timeout=10)
    failed = [e for e in events if e["kind"] == "container.failed" and e["name"] == "alpine"]
    assert failed and "the Alpine mirror is unreachable" in failed[0]["message"]
    assert row("plain")["id"] == plain["id"]  # untouched all along


def test_the_default_alpine_base_is_prefetched_and_used(
    tmp_path: Path, rootless: None, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    mirror = Mirror()
    try:
        mirror.publish("3.19", "3.19.4", real_minirootfs("3.19.4"))
        process = daemon(
            tmp_path,
            "d",
            state=tmp_path / "state",
            SQUISH_ALPINE_MIRROR=mirror.url,
            SQUISH_DEFAULT_BASE="alpine:3.19",
        )
        stop_later.append(process)
        sock = tmp_path / "d.sock"
        wait_for_socket(sock, process)

        def prefetched() -> list[JSONObject] | None:
            with Client(sock) as client:
                layers = [layer for layer in client.layers() if layer["kind"] == "alpine"]
            return layers or None

        (layer,) = eventually(prefetched)
        assert (layer["version"], layer["used_by"]) == ("3.19.4", ["(default base)"])
        downloads = [r for r in mirror.requests if r.endswith(".tar.gz")]
        assert len(downloads) == 1
    finally:
        mirror.stop()

    # Offline from now on: a squishfile with no base runs on the prefetched Alpine.
    (tmp_path / "manifests" / "release.toml").write_text(
        'network = "none"\n[run]\ncommand = "/bin/sh"\n'
        'args = ["-c", "cat /etc/alpine-release; sleep 1000"]\n'
    )
    log = tmp_path / "state" / "logs" / "release.log"
    eventually(lambda: (log.exists() and "3.19.4" in log.read_text()) or None)
    with Client(sock) as client:
        layers = {f"{item['name']} {item['version']}": item["used_by"] for item in client.layers()}
    assert layers["alpine 3.19.4"] == ["(default base)", "release"]


def test_a_registry_layer_runs_from_sdk_name(
    tmp_path: Path, rootless: None, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    registry = Registry()
    try:
        registry.publish("python", "3.11", sdk("py311"))
        process = daemon(tmp_path, "d", "--registry", registry.template, state=tmp_path / "state")
        stop_later.append(process)
        sock = tmp_path / "d.sock"
        wait_for_socket(sock, process)
        (tmp_path / "manifests" / "tool.toml").write_text(
            'network = "none"\n[layers]\npython = "3.11"\n'
            '[run]\ncommand = "/bin/sh"\n'
            'args = ["-c", "/sdk/python/bin/tool; cat /sdk/python/lib/1.txt; '
            'touch /sdk/python/x || echo read-only; sleep 1000"]\n'
        )
        log = tmp_path / "state" / "logs" / "tool.log"
        text = eventually(
            lambda: t if log.exists() and "read-only" in (t := log.read_text()) else None
        )
    finally:
        registry.stop()
    assert text.splitlines()[:2] == ["py311", "py311 1"]
    with Client(sock) as client:
        (layer,) = [item for item in client.layers() if item["kind"] == "registry"]
    assert (layer["name"], layer["version"], layer["used_by"]) == ("python", "3.11", ["tool"])


def test_squish_run_uses_the_config_files_registries(tmp_path: Path, rootless: None) -> None:
    registry = Registry()
    try:
        registry.publish("python", "3.11", sdk("py311"))
        config = tmp_path / "config.toml"
        config.write_text(f'[layers.registries]\ndefault = "{registry.template}"\n')
        squishfile = tmp_path / "tool.toml"
        squishfile.write_text(
            'network = "none"\n[layers]\npython = "3.11"\n[run]\ncommand = "/sdk/python/bin/tool"\n'
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "squish",
                "run",
                str(squishfile),
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
    finally:
        registry.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "py311"  # after the container id
