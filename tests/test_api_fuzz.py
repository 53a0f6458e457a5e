"""Property-based fuzzing of every API route against a real daemon, from its own OpenAPI document.

A real ``squish daemon`` (rootless, real bwrap) runs one container. The
document it serves at ``/v1/openapi.json`` is loaded with schemathesis, and
for every operation hypothesis generates requests, valid and invalid, sent
over the daemon's unix socket. Every answer must conform to the document
(status, content type, body shape) and none may be a 500; after each
request the daemon still answers, and at the end the container that was
running runs on, untouched.

The two never-ending streams are bounded here: events is read for a moment
(its shape is tested elsewhere), and logs are asked without ``follow``.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from squish.cli.client import Client
from tests.test_daemon import REPO, wait_for_socket

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 60  # per operation and mode: about 2,000 requests in all, under a minute


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "manifests").mkdir()
    (tmp / "manifests" / "sentinel.toml").write_text(
        textwrap.dedent(
            """\
            network = "none"
            [run]
            command = "/bin/sleep"
            args = ["1000"]
            """
        )
    )
    socket_path = tmp / "fuzz.sock"
    log = tmp / "daemon.log"
    with log.open("wb") as out:
        # Its log goes to a file: a pipe nobody reads would fill and stall it.
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "squish",
                "daemon",
                "--manifests",
                str(tmp / "manifests"),
                "--state-dir",
                str(tmp / "state"),
                "--socket",
                str(socket_path),
                "--metrics-addr",
                "off",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        wait_for_socket(socket_path, process)
        with Client(socket_path) as client:
            sentinel = _wait_running(client)
        yield socket_path, sentinel
        assert process.poll() is None, "the daemon died under fuzzing"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_running(client: Client) -> str:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for container in client.containers():
            if container["name"] == "sentinel" and container["phase"] == "running":
                assert container["id"] is not None
                return container["id"]
        time.sleep(0.1)
    raise AssertionError("the sentinel container never ran")


def _send(http: httpx.Client, case: schemathesis.Case) -> httpx.Response:
    kwargs: dict[str, Any] = case.as_transport_kwargs(base_url="http://squish")
    method = kwargs.pop("method")
    url = kwargs.pop("url")
    data = kwargs.pop("data", None)
    if isinstance(data, str):
        data = data.encode()
    if data is not None:
        kwargs["content"] = data
    kwargs.pop("cookies", None)
    kwargs.pop("files", None)
    if url.endswith("/v1/events"):
        # Never ends by itself: take the head of the answer and hang up.
        with http.stream(method, url, timeout=httpx.Timeout(5.0, read=0.3), **kwargs) as answer:
            try:
                for _ in answer.iter_bytes():
                    break
            except httpx.ReadTimeout:
                pass
            head = httpx.Response(
                answer.status_code, headers=answer.headers, content=b"", request=answer.request
            )
            head.elapsed = datetime.timedelta(0)
            return head
    return http.request(method, url, timeout=30.0, **kwargs)


@pytest.mark.timeout(300)
def test_every_route_answers_by_its_document_and_nothing_breaks(
    live: tuple[Path, str], rootless: None
) -> None:
    socket_path, sentinel = live
    with Client(socket_path) as client:
        document = client.openapi()
    schema = schemathesis.openapi.from_dict(document)
    transport = httpx.HTTPTransport(uds=str(socket_path))
    tried: list[str] = []
    with httpx.Client(transport=transport, base_url="http://squish") as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            tried.append(f"{operation.method.upper()} {operation.path}")
            query = {"follow": False} if operation.path.endswith("/logs") else None
            modes = [schemathesis.GenerationMode.POSITIVE]
            if len(operation.path_parameters) or len(operation.query) or operation.body.items:
                modes.append(schemathesis.GenerationMode.NEGATIVE)  # something to get wrong
            for mode in modes:
                strategy = operation.as_strategy(generation_mode=mode, query=query)

                @hypothesis.settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[hypothesis.Phase.generate],
                )
                @hypothesis.given(case=strategy)
                def fuzz(case: schemathesis.Case) -> None:
                    # A request that names the sentinel (its name, a prefix of
                    # its id) may rightly stop it; those are not sent.
                    ref = str((case.path_parameters or {}).get("ref", ""))
                    names_it = ref == "sentinel" or (ref and sentinel.startswith(ref.lower()))
                    hypothesis.assume(not names_it)
                    answer = _send(http, case)
                    case.validate_response(answer, checks=CHECKS)
                    # Still serving, whatever was asked.
                    assert http.get("/v1/status").status_code == 200

                fuzz()
    # Every route of the document was fuzzed, including these.
    assert "POST /v1/containers" in tried
    assert "POST /v1/containers/{ref}/stop" in tried
    assert "PUT /v1/layers/{name}/{version}" in tried
    with Client(socket_path) as client:
        running = {c["name"]: c for c in client.containers() if c["phase"] == "running"}
    assert running["sentinel"]["id"] == sentinel
