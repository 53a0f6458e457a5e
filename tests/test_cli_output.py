"""How the CLI shows answers (squish.cli.output): pure, so tested with tables."""

from __future__ import annotations

import pytest

from squish import api_schema as schema
from squish.cli.output import PS_COLUMNS, fit, print_table, ps_row, reason, render, status_summary
from squish.errors import SquishError

HEADER = [*PS_COLUMNS, "REASON"]


def row(name: str, ports: str = "-", why: str = "-") -> list[str]:
    return ["abc1234", name, "4242", "running", "3s", "0", ports, why]


@pytest.mark.parametrize(
    ("rows", "width", "cut"),
    [
        ([row("web")], 80, []),  # fits: nothing cut
        ([row("web", why="x" * 200)], 80, ["REASON"]),
        ([row("web", ports="127.0.0.1:8080->80/tcp," * 4, why="y" * 40)], 80, ["PORTS", "REASON"]),
        ([row("n" * 60, why="z" * 60)], 80, ["NAME", "REASON"]),
    ],
)
def test_fit_cuts_the_free_text_columns_first(
    rows: list[list[str]], width: int, cut: list[str]
) -> None:
    fitted = fit(HEADER, rows, width)
    for before, after in zip(rows, fitted, strict=True):
        line = "  ".join(after)
        assert len(line) <= width or not cut
        for column, old, new in zip(HEADER, before, after, strict=True):
            if column in cut:
                assert new.endswith("…") and len(new) < len(old)
            else:
                assert new == old


def test_a_terminal_table_drops_an_empty_reason_and_honours_no_color(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    print_table(HEADER, [row("web")], terminal=True, width=80)
    out = capsys.readouterr().out
    assert "REASON" not in out
    assert "\x1b[" not in out
    monkeypatch.delenv("NO_COLOR")
    print_table(HEADER, [row("web", why="crashed")], terminal=True, width=80)
    out = capsys.readouterr().out
    assert "REASON" in out and "\x1b[32mrunning\x1b[0m" in out
    # Piped: plain, whole, every column.
    print_table(HEADER, [row("web", why="w" * 300)], terminal=False)
    assert capsys.readouterr().out.rstrip().endswith("w" * 300)


def container(**fields: object) -> schema.Container:
    base: dict[str, object] = {
        "name": "web",
        "phase": "running",
        "manifest": "/m/web.toml",
        "id": "f" * 64,
        "pid": 7,
        "started_at": 100.0,
        "restarts": 1,
        "ports": [{"host": 8080, "container": 80, "protocol": "tcp", "host_ip": "127.0.0.1"}],
        "exit_code": None,
        "reason": "",
        "manifest_error": None,
        "next_restart_at": None,
        "spec_hash": None,
    }
    base.update(fields)
    return base  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ""),
        ({"reason": "exited with code 3"}, "exited with code 3"),
        ({"manifest_error": "web.toml:1: run: bad"}, "manifest invalid: web.toml:1: run: bad"),
        # An invalid manifest's reason is its error: said once, not twice.
        (
            {"reason": "web.toml:1: run: bad", "manifest_error": "web.toml:1: run: bad"},
            "web.toml:1: run: bad",
        ),
        ({"reason": "line\n  two"}, "line two"),
    ],
)
def test_reason_says_each_thing_once(fields: dict[str, object], expected: str) -> None:
    assert reason(container(**fields)) == expected


def test_ps_row_shows_the_bind_address_and_the_short_id() -> None:
    cells = ps_row(container(), with_reason=False, now=165.0)
    assert cells == ["fffffff", "web", "7", "running", "1m5s", "1", "127.0.0.1:8080->80/tcp"]
    v6 = container(ports=[{"host": 53, "container": 53, "protocol": "udp", "host_ip": "::1"}])
    assert ps_row(v6, with_reason=True, now=100.0, full_id=True)[0] == "f" * 64
    assert ps_row(v6, with_reason=True, now=100.0)[6] == "[::1]:53->53/udp"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{name} {pid}", "web 7"),
        ("{ports[0].host}/{ports[0].protocol}", "8080/tcp"),
        ("{ports[3].host}", "-"),  # this item lacks it
        ("{exit_code}", "-"),
        ("{name:>5}|", "  web|"),
        ("{ports}", '[{"host": 8080, "container": 80, "protocol": "tcp", "host_ip": "127.0.0.1"}]'),
        ("{name}\\t{phase}", "web\trunning"),
    ],
)
def test_format_templates(template: str, expected: str) -> None:
    assert render(template, container()) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{nope}", "--format: no field 'nope' (fields: exit_code, id,"),
        ("{name", "--format: "),
        ("{pid:q}", "--format: "),
    ],
)
def test_bad_templates_are_one_line_errors(template: str, message: str) -> None:
    with pytest.raises(SquishError) as caught:
        render(template, container())
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_status_summary_is_a_few_labelled_lines() -> None:
    status: schema.DaemonStatus = {
        "version": "1.2.3",
        "pid": 42,
        "uptime": 3725.4,
        "manifests": "/srv/squish",
        "containers": {"running": 3, "stopped": 1, "failed": 0},
        "node": "web-1",
        "labels": {"role": "web", "az": "b"},
        "default_base": "busybox",
    }
    assert status_summary(status).splitlines() == [
        "squish 1.2.3, daemon pid 42, up 1h2m",
        "node:         web-1 (az=b, role=web)",
        "manifests:    /srv/squish",
        "default base: busybox",
        "containers:   3 running, 1 stopped",
    ]
