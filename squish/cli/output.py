"""How the ``squish`` command shows what the daemon answers: tables, templates, summaries.

Called by :mod:`squish.cli.commands`. Everything here is pure formatting of the
shapes of :mod:`squish.api_schema` into text, so it is tested with tables:

- ``ps`` rows, as a table that fits the terminal (long cells end in ``…``;
  ``--no-trunc`` shows everything) or, when stdout is not a terminal, as
  plain whitespace-separated columns for scripts;
- ``--format TEMPLATE``, podman's habit in Python's own syntax: ``{name}``,
  ``{ports[0].host}`` or ``{layers.rootfs}`` take fields of each answer;
  ``--format json`` prints JSON;
- the ``status`` summary.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from squish.errors import SquishError

if TYPE_CHECKING:
    # Types only: `squish ps` does not load the schema's TypedDicts.
    from squish import api_schema as schema

PS_COLUMNS = ("ID", "NAME", "PID", "STATUS", "UPTIME", "RESTARTS", "PORTS")
SHORT_ID = 7  # the original squish's id column; scripts cut it so
_PHASE_STYLES = {
    "running": "green",
    "pending": "cyan",
    "backoff": "yellow",
    "waiting": "cyan",
    "failed": "red",
    "invalid": "red",
    "stopped": "dim",
    "exited": "dim",
}


def duration(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``1m30s``, ``12s``: the two largest units."""
    left = max(int(seconds), 0)
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def port(forward: schema.Port) -> str:
    """``127.0.0.1:8080->80/tcp``, as podman shows a published port."""
    ip = forward.get("host_ip")
    where = "" if not ip else (f"[{ip}]:" if ":" in ip else f"{ip}:")
    return f"{where}{forward['host']}->{forward['container']}/{forward['protocol']}"


def reason(status: schema.Container) -> str:
    """Why a container is as it is, once: the reason, and a manifest error not already in it."""
    text = status.get("reason") or ""
    error = status.get("manifest_error")
    if error and error not in text:
        text = f"{text}; manifest invalid: {error}" if text else f"manifest invalid: {error}"
    return " ".join(text.split())


def ps_row(
    status: schema.Container, *, with_reason: bool, now: float, full_id: bool = False
) -> list[str]:
    """One ``ps`` row. No cell holds a space (scripts split on them) but the trailing
    REASON and the STATUS of a container with health checks (``running (healthy)``)."""
    container_id = status.get("id")
    pid = status.get("pid")
    started = status.get("started_at")
    running = status.get("phase") == "running"
    shown_id = "-"
    if container_id:
        shown_id = container_id if full_id else container_id[:SHORT_ID]
    row = [
        shown_id,
        status["name"],
        str(pid) if running and pid is not None else "-",
        # podman's way: "running (healthy)" for a container with health checks.
        f"{status['phase']} ({status['health']})"
        if running and status.get("health")
        else status["phase"],
        duration(now - started) if running and started is not None else "-",
        str(status.get("restarts", 0)),
        ",".join(port(forward) for forward in status.get("ports") or []) or "-",
    ]
    if with_reason:
        row.append(reason(status) or "-")
    return row


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded with spaces, for scripts and pipes; nothing is cut."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fit(header: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[list[str]]:
    """``rows`` with cells cut (ending in ``…``) so that every line fits ``width``.

    The wide, free-text columns give way first, each down to a floor:
    REASON, then PORTS, then NAME; the short ones (ID, PID, STATUS) never.
    """
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    for column, floor in (("REASON", 12), ("PORTS", 14), ("NAME", 10), ("REASON", 1)):
        if over <= 0:
            break
        if column in header:
            i = list(header).index(column)
            give = min(over, max(widths[i] - max(floor, len(column)), 0))
            widths[i] -= give
            over -= give
    return [
        [
            cell if len(cell) <= w else cell[: max(w - 1, 0)] + "…"
            for cell, w in zip(row, widths, strict=True)
        ]
        for row in rows
    ]


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    terminal: bool,
    no_trunc: bool = False,
    width: int | None = None,
) -> None:
    """``rows`` on stdout: plain when not a ``terminal``; else one line each, fitted to it.

    On a terminal, cells that do not fit end in ``…`` (``no_trunc`` keeps them
    whole), a REASON column with nothing in it is left out, and the status
    is coloured (unless ``$NO_COLOR`` is set).
    """
    if not terminal:
        print(plain_table(header, rows))
        return
    if header and header[-1] == "REASON" and all(row[-1] == "-" for row in rows):
        # Nothing to say: the room goes to the other columns.
        header, rows = header[:-1], [row[:-1] for row in rows]
    if not no_trunc:
        rows = fit(header, rows, width or shutil.get_terminal_size().columns)
    text = plain_table(header, rows)
    lines = text.split("\n")
    if os.environ.get("NO_COLOR"):  # https://no-color.org
        print(text)
        return
    if "STATUS" in header:
        lines = [
            _bold(lines[0]),
            *(_coloured(line, header, row) for line, row in zip(lines[1:], rows, strict=True)),
        ]
    else:
        lines[0] = _bold(lines[0])
    print("\n".join(lines))


_ANSI = {"green": "32", "cyan": "36", "yellow": "33", "red": "31", "dim": "2"}


def _bold(line: str) -> str:
    return f"\x1b[1m{line}\x1b[0m"


def _coloured(line: str, header: Sequence[str], row: Sequence[str]) -> str:
    # The status cell is found by its column's place in the padded line.
    status = row[list(header).index("STATUS")]
    style = _PHASE_STYLES.get(status.split(" ")[0])
    if status.endswith("(unhealthy)"):
        style = "red"
    if not style:
        return line
    at = line.find(f"  {status}")
    if at < 0:
        return line
    start = at + 2
    code = _ANSI[style]
    return f"{line[:start]}\x1b[{code}m{status}\x1b[0m{line[start + len(status) :]}"


class _Template(string.Formatter):
    """``str.format`` over JSON: ``{a.b}`` and ``{a[0]}`` look into objects and lists."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        path = field_name.replace("[", ".").replace("]", "").split(".")
        if path[0] not in kwargs:
            fields = ", ".join(sorted(kwargs)) or "none"
            raise SquishError(f"--format: no field {path[0]!r} (fields: {fields})")
        value: Any = kwargs[path[0]]
        for part in path[1:]:
            # Deeper, a part this item lacks (no ports, no applied version)
            # shows as "-": another item of the same shape may have it.
            if isinstance(value, Mapping):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                value = None
        return value, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return format("-", format_spec)
        if isinstance(value, dict | list):
            return json.dumps(value, default=str)
        return format(value, format_spec)


def check_template(template: str) -> None:
    """A one-line error now, rather than a traceback at the first answer."""
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SquishError(f"--format: {exc} in {template!r}") from None


def render(template: str, item: Mapping[str, Any]) -> str:
    """``item`` through the ``--format`` ``template`` (``json``: the item as JSON)."""
    if template == "json":
        return json.dumps(item, default=str)
    try:
        return _Template().vformat(template.replace("\\t", "\t").replace("\\n", "\n"), (), item)
    except (ValueError, TypeError, IndexError) as exc:
        raise SquishError(f"--format: {exc} in {template!r}") from None


def status_summary(status: schema.DaemonStatus) -> str:
    """``squish status`` for a person: a few labelled lines, counts that matter."""
    counts = status.get("containers") or {}
    shown = [f"{count} {phase}" for phase, count in counts.items() if count]
    lines = [
        f"squish {status['version']}, daemon pid {status['pid']}, up {duration(status['uptime'])}",
    ]
    node = status.get("node")
    if node:
        labels = status.get("labels") or {}
        listed = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
        lines.append(f"node:         {node}" + (f" ({listed})" if listed else ""))
    lines.append(f"manifests:    {status['manifests']}")
    if status.get("default_base"):
        lines.append(f"default base: {status.get('default_base')}")
    lines.append(f"containers:   {', '.join(shown) if shown else 'none'}")
    return "\n".join(lines)
