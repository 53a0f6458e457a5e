"""The ``squish`` command line: the verbs that talk to the daemon, and ``validate``.

The installed command (``squish.main``) adds to :data:`SUBCOMMANDS` the verbs
that run things on this host (``daemon``, ``run``), which live in the
daemon's package: this package imports nothing of it. Each subcommand is one
:class:`Subcommand`: a function adding its arguments to its parser (called
only when the verb is used, see :class:`_VerbParser`), a function running it,
returning the exit status, and the examples that end its ``--help``. Adding a
subcommand means writing those two functions and one registry entry; ``main``
needs no change. The same parser generates the shell completion scripts
(``squish completion``) and the man page (:mod:`squish.manpage`).

Every subcommand takes ``--json`` for scripts (before or after the verb);
``ps``, ``inspect`` and ``events`` also take podman's ``--format``. Errors a
user caused (:class:`~squish.errors.SquishError`) are printed as their one
line, never as a traceback. Containers are named as podman names them: an
exact name or a unique id prefix, several at once.

``validate`` and ``completion`` work alone; every other verb here talks to the daemon
through :class:`~squish.cli.client.Client` on its unix socket (``--socket``,
``$SQUISH_SOCKET``, or the default in the runtime directory). Their output
keeps the original squish contract that scripts rely on: ``create`` prints
only the container id, ``ps`` prints plain whitespace-separated columns
starting with a 7-character id when stdout is not a terminal (a rich table
when it is), ``stop`` prints the ids it stopped.

Exit statuses (:data:`EXIT_CODES`): 0 ok, 1 an error (a bad squishfile, a
container that cannot start, no such container...), 2 a usage error, 3 the
daemon is unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from squish import __version__, paths
from squish.cli import output as cli_output
from squish.cli.client import ApiError, Client, DaemonUnreachable
from squish.errors import ManifestError, ManifestProblem, SquishError

if TYPE_CHECKING:
    import threading

    from squish import api_schema as schema
    from squish.model.squishfile import Squishfile

_T = TypeVar("_T")

# What a verb needs beyond talking to the daemon is imported inside that verb:
# imported up front, the daemon, the runtime, the layer store and the manifest
# model (pydantic) made `squish ps` take 3.5 times as long (bench/cli_latency.py).
# So are the standard library's modules that only some verbs use (threading,
# datetime, the layer verbs' rich): every `squish ps` is a fresh interpreter
# and pays for each module it loads. The API's shapes are types only
# (annotations). tests/test_cli_imports.py keeps it so.

# Conventional exit statuses.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # the daemon is not running (or not where we look)
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILURE: "an error: a bad squishfile, a failed start, no such container, ...",
    EXIT_USAGE: "a usage error (unknown option, missing argument)",
    EXIT_UNREACHABLE: "the daemon is unreachable (not running, or another socket)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

DEFAULT_WAIT = 30.0  # seconds create and start wait for a container to run


class Subcommand(NamedTuple):
    """One ``squish <name>`` verb; ``examples`` end its ``--help`` (and its man page section)."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: tuple[str, ...] = ()


# -- validate ---------------------------------------------------------------


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="squishfiles to check")


def _run_validate(args: argparse.Namespace) -> int:
    """Check every file, reporting each, a line per problem; fail if any is bad.

    Then what spans files, among those given: ``[depends_on]`` cycles, and a
    ``"healthy"`` condition on a container without ``[health]``.
    """
    from squish.model.host import load_squishfile

    loaded: dict[str, Squishfile] = {}
    errors: dict[str, ManifestError] = {}
    for file in args.files:
        try:
            loaded[file] = load_squishfile(file)
        except ManifestError as exc:
            errors[file] = exc
    errors.update(_across_files(loaded))
    results: list[dict[str, Any]] = []
    for file in args.files:
        if (error := errors.get(file)) is not None:
            problems = [
                {
                    "message": problem.describe(error.file),
                    "field": problem.field,
                    "line": problem.line,
                    "reason": problem.message,
                }
                for problem in error.errors
            ]
            # "error" is the first of "errors", as before there were several.
            results.append({"file": file, "ok": False, "error": problems[0], "errors": problems})
            if not args.json:
                for problem in problems:
                    print(problem["message"], file=sys.stderr)
        else:
            squishfile = loaded[file]
            results.append(
                {
                    "file": file,
                    "ok": True,
                    "name": squishfile.name,
                    "spec_hash": squishfile.spec_hash(),
                }
            )
            if not args.json:
                print(f"{file}: ok")
    if args.json:
        print(json.dumps({"files": results}, indent=2))
    return EXIT_FAILURE if errors else EXIT_OK


def _across_files(loaded: Mapping[str, Squishfile]) -> dict[str, ManifestError]:
    """The errors of ``loaded`` (file -> squishfile) that only the files together show."""
    from squish.model.dependencies import cycle_error, find_cycles
    from squish.model.toml_lines import KeyLines

    by_name = {squishfile.name: (file, squishfile) for file, squishfile in loaded.items()}
    problems: dict[str, list[ManifestProblem]] = {}
    cycles = find_cycles(
        {
            name: [dependency.name for dependency in squishfile.depends_on]
            for name, (_, squishfile) in by_name.items()
        }
    )
    for name, cycle in cycles.items():
        file = by_name[name][0]
        problems.setdefault(file, []).extend(cycle_error(file, cycle).errors)
    for file, squishfile in loaded.items():
        for dependency in squishfile.depends_on:
            other = by_name.get(dependency.name)
            if dependency.condition == "healthy" and other and other[1].health is None:
                problems.setdefault(file, []).append(
                    ManifestProblem(
                        f'waits for {dependency.name} to be "healthy", but {other[0]} has '
                        "no [health] check: it never will",
                        f"depends_on.{dependency.name}",
                    )
                )
    found: dict[str, ManifestError] = {}
    for file, listed in problems.items():
        try:
            lines = KeyLines(Path(file).read_text())
        except (OSError, ValueError):
            lines = None
        if lines is not None:
            listed = [  # noqa: PLW2901 (the same problems, now with their lines)
                ManifestProblem(p.message, p.field, lines.line(_field_loc(p.field))) for p in listed
            ]
        found[file] = ManifestError.of(file, listed)
    return found


def _field_loc(field: str | None) -> tuple[str, ...]:
    """``depends_on.db`` -> ``("depends_on", "db")`` (the names have no dots but in quotes)."""
    head, _, rest = (field or "").partition(".")
    return (head, rest) if rest else (head,)


# -- talking to the daemon ----------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    socket_path: Path | None = getattr(args, "socket", None)
    return Client(socket_path or paths.socket_path())


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _prepare(file: str) -> tuple[str, str]:
    """Validate ``file`` here and return (container name, TOML to send).

    As in the original squish, relative layer paths are the caller's: they
    resolve against the current directory (not the file's), and are sent as
    absolute paths, because the daemon stores the manifest elsewhere and
    runs with another working directory. A bad file fails here, at once,
    with the same one-line error ``squish validate`` gives.
    """
    import tomllib

    import tomli_w

    from squish.model.host import host_paths, read_squishfile
    from squish.model.squishfile import parse_squishfile, write_resolved_paths

    source = Path(file)
    data = read_squishfile(file)
    squishfile = parse_squishfile(data, file=file, name=source.stem, paths=host_paths(Path.cwd()))
    # parse_squishfile accepted these bytes, so they decode and parse.
    doc = tomllib.loads(data.decode("utf-8-sig"))
    write_resolved_paths(doc, squishfile)
    return squishfile.name, tomli_w.dumps(doc)


def _started_id(status: schema.Container) -> str:
    """The id of a container create or start reported, or why there is none.

    "" for one that waits for its dependencies (``[depends_on]``): accepted,
    it starts once they are ready.
    """
    phase = status.get("phase")
    container_id = status.get("id")
    if phase == "waiting":
        return ""
    if not isinstance(container_id, str) or not container_id or phase in ("failed", "invalid"):
        reason = status.get("manifest_error") or status.get("reason") or "no reason given"
        raise SquishError(f"{status.get('name')} did not start ({phase}): {reason}")
    return container_id


# -- create / apply -------------------------------------------------------------


def _configure_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the squishfile (the container is its stem)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT,
        help="seconds to wait for the container to run (default: %(default)s)",
    )


def _run_create(args: argparse.Namespace) -> int:
    """Send one squishfile to the daemon and wait until it runs; print its id."""
    name, manifest = _prepare(args.file)
    with _client(args) as client:
        status = client.create(name, manifest, wait=True, timeout=args.timeout)
    if args.json:
        _print_json(status)
        _started_id(status)
        return EXIT_OK
    _print_started(status)
    return EXIT_OK


def _print_started(status: schema.Container) -> None:
    """The id of a started container; of one that waits, what for (on stderr)."""
    if started := _started_id(status):
        print(started)
    else:
        print(f"{status['name']} is {status.get('reason')}; it starts then", file=sys.stderr)


def _configure_apply(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="squishfiles to apply")


def _run_apply(args: argparse.Namespace) -> int:
    """Hand squishfiles to the daemon without waiting; report each."""
    results: list[dict[str, Any]] = []
    failed = False
    with _client(args) as client:
        for file in args.files:
            try:
                name, manifest = _prepare(file)
                status = client.apply(name, manifest)
            except DaemonUnreachable:
                raise
            except SquishError as exc:
                failed = True
                results.append({"file": file, "ok": False, "error": str(exc)})
                if not args.json:
                    print(f"squish: {exc}", file=sys.stderr)
                continue
            results.append({"file": file, "ok": True, "status": status})
            if not args.json:
                print(f"{name} applied")
    if args.json:
        _print_json({"files": results})
    return EXIT_FAILURE if failed else EXIT_OK


# -- ps ---------------------------------------------------------------------------


def _configure_ps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="also list containers that are not running (stopped, exited, failed, ...)",
    )
    parser.add_argument(
        "--no-trunc",
        action="store_true",
        help="show whole ids and reasons (a table on a terminal cuts them to fit)",
    )
    _add_format(parser)


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        metavar="TEMPLATE",
        default=None,
        help="print each item through TEMPLATE, e.g. '{name} {pid}' or '{ports[0].host}'; "
        "'json' prints JSON",
    )


def _print_formatted(template: str, items: list[Any]) -> None:
    cli_output.check_template(template)
    for item in items:
        print(cli_output.render(template, item), flush=True)


def _run_ps(args: argparse.Namespace) -> int:
    """List the containers: running ones, or with -a every one the daemon knows."""
    with _client(args) as client:
        statuses = client.containers()
    if not args.all:
        statuses = [s for s in statuses if s.get("phase") == "running"]
    statuses.sort(key=lambda s: s["name"])
    if args.json or args.format == "json":
        _print_json(statuses)
        return EXIT_OK
    if args.format is not None:
        _print_formatted(args.format, statuses)
        return EXIT_OK
    header = [*cli_output.PS_COLUMNS, "REASON"] if args.all else list(cli_output.PS_COLUMNS)
    now = time.time()
    rows = [
        cli_output.ps_row(s, with_reason=args.all, now=now, full_id=args.no_trunc) for s in statuses
    ]
    cli_output.print_table(header, rows, terminal=sys.stdout.isatty(), no_trunc=args.no_trunc)
    if args.all:
        # Where the manifests come from, when that is worth a look: a git
        # source's revisions, or a source held back or failing. On stderr,
        # so that scripts reading the table see only the table.
        with _client(args) as client:
            try:
                sources = client.sources()
            except ApiError:
                sources = []  # a daemon without sources (an older one)
            for source in sources:
                if source.get("kind") == "git" or any(
                    source.get(key) for key in ("held", "error", "warning")
                ):
                    print(_source_line(source), file=sys.stderr)
    return EXIT_OK


def _revision(value: object) -> str:
    return str(value)[:12] if value else "-"


def _source_line(source: schema.SourceStatus) -> str:
    line = f"source {source.get('name')} ({source.get('url')}"
    if source.get("kind") == "git":
        line += f" {source.get('ref')}:{source.get('path')}"
    line += ")"
    if source.get("kind") == "git":
        line += f": applied {_revision(source.get('applied_revision'))}"
        if source.get("attempted_revision") != source.get("applied_revision"):
            line += f", attempted {_revision(source.get('attempted_revision'))}"
    if source.get("held"):
        line += f"; HELD: {source['held']}"
    if source.get("error"):
        line += f"; ERROR: {source['error']}"
    if source.get("warning"):
        line += f"; WARNING: {source['warning']}"
    return line


def _run_sources(args: argparse.Namespace) -> int:
    with _client(args) as client:
        sources = client.sources()
    if args.json:
        _print_json(sources)
        return EXIT_OK
    now = time.time()
    rows = []
    for source in sources:
        synced = source.get("last_sync")
        state = next((key for key in ("held", "error", "warning") if source.get(key)), "ok")
        rows.append(
            [
                str(source.get("name")),
                str(source.get("kind")),
                str(source.get("url")),
                str(source.get("ref") or "-"),
                _revision(source.get("applied_revision")),
                _revision(source.get("attempted_revision")),
                cli_output.duration(now - synced) + " ago" if synced is not None else "-",
                state,
            ]
        )
    _print_plain_table(
        ["NAME", "KIND", "URL", "REF", "APPLIED", "ATTEMPTED", "SYNCED", "STATE"], rows
    )
    for source in sources:
        if any(source.get(key) for key in ("held", "error", "warning")):
            print(_source_line(source))
    return EXIT_OK


def _configure_sync(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="the git source to sync (default: all)")


def _run_sync(args: argparse.Namespace) -> int:
    with _client(args) as client:
        results = client.sync(args.source)
    if args.json:
        _print_json(results)
    else:
        for source in results:
            print(_source_line(source))
    failed = any(source.get("error") or source.get("held") for source in results)
    return EXIT_FAILURE if failed else EXIT_OK


def _print_plain_table(header: list[str], rows: list[list[str]]) -> None:
    print(cli_output.plain_table(header, rows))


# -- stop / start / delete ----------------------------------------------------------


def _add_refs(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "refs",
        nargs="+",
        metavar="NAME-OR-ID",
        help=f"{what}: a container's name, or a prefix of its id that no other id has",
    )


def _each(names: Iterable[str], call: Callable[[str], _T]) -> tuple[list[_T], int]:
    """``call`` for every name in turn, as podman does: errors are reported, the rest goes on."""
    done: list[_T] = []
    status = EXIT_OK
    for name in names:
        try:
            done.append(call(name))
        except DaemonUnreachable:
            raise
        except SquishError as exc:
            print(f"squish: {exc}", file=sys.stderr)
            status = EXIT_FAILURE
    return done, status


def _each_ref(
    args: argparse.Namespace, call: Callable[[Client, str], schema.Container]
) -> tuple[list[schema.Container], int]:
    """``call`` for every ref of the command line (see ``_each``)."""
    with _client(args) as client:
        return _each(args.refs, lambda ref: call(client, ref))


def _configure_stop(parser: argparse.ArgumentParser) -> None:
    _add_refs(parser, "the containers to stop")


def _run_stop(args: argparse.Namespace) -> int:
    """Stop containers (they stay stopped until start or an edit); print their ids."""
    stopped, status = _each_ref(args, lambda client, ref: client.stop(ref))
    if args.json:
        _print_json(stopped)
    else:
        for container in stopped:
            print(container.get("id") or container["name"])
    return status


def _configure_exec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT,
        help="seconds until the command is killed, with what it started (default: %(default)s)",
    )
    parser.add_argument(
        "ref",
        metavar="NAME-OR-ID",
        help="the running container: its name, or a prefix of its id that no other id has",
    )
    parser.add_argument(
        "argv",  # not "command": that is the verb's
        nargs=argparse.REMAINDER,
        metavar="COMMAND [ARG...]",
        help="the program to run inside it (found on the container's PATH) and its arguments",
    )


def _run_exec(args: argparse.Namespace) -> int:
    """Run a command inside a running container; exit with its status, as podman exec."""
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("squish exec: name the command to run after the container", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        result = client.exec(args.ref, command, timeout=args.timeout)
    if args.json:
        _print_json(result)
        return EXIT_OK
    sys.stdout.write(result["output"])
    if result["truncated"]:
        print("squish exec: output cut at 64 KiB", file=sys.stderr)
    return result["exit_code"]


def _configure_start(parser: argparse.ArgumentParser) -> None:
    _add_refs(parser, "the stopped containers to start again")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT,
        help="seconds to wait for each to run (default: %(default)s)",
    )


def _run_start(args: argparse.Namespace) -> int:
    """Start stopped containers again; print their (new) ids."""

    def start(client: Client, ref: str) -> schema.Container:
        container = client.start(ref, timeout=args.timeout)
        _started_id(container)  # a start that did not take is an error for this ref
        return container

    started, status = _each_ref(args, start)
    if args.json:
        _print_json(started)
    else:
        for container in started:
            _print_started(container)
    return status


def _configure_delete(parser: argparse.ArgumentParser) -> None:
    _add_refs(parser, "the containers whose squishfiles to remove")


def _run_delete(args: argparse.Namespace) -> int:
    """Remove containers' squishfiles (their containers stop); print what went."""
    deleted, status = _each_ref(args, lambda client, ref: client.delete(ref))
    if args.json:
        _print_json(deleted)
    else:
        for container in deleted:
            print(container.get("id") or container["name"])
    return status


# -- inspect / logs / events / status -------------------------------------------------


def _configure_inspect(parser: argparse.ArgumentParser) -> None:
    _add_refs(parser, "the containers to describe")
    _add_format(parser)


def _run_inspect(args: argparse.Namespace) -> int:
    """Everything the daemon knows about containers: a JSON array, as podman prints."""
    with _client(args) as client:
        found, status = _each(args.refs, client.inspect)
    if args.format is not None and args.format != "json" and not args.json:
        _print_formatted(args.format, found)
    else:
        _print_json(found)
    return status


def _configure_logs(parser: argparse.ArgumentParser) -> None:
    _add_refs(
        parser, "the containers whose logs to print (each line starts with its name when several)"
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what it writes (Ctrl-C stops)"
    )
    parser.add_argument(
        "-n",
        "--tail",
        type=int,
        default=None,
        metavar="N",
        help="start with the last N lines only (-1: all)",
    )
    moment = "a time (2026-12-01T10:00:00Z, 2026-12-01), a Unix time or a duration ago (10m)"
    parser.add_argument("--since", metavar="TIME", help=f"only lines from TIME on: {moment}")
    parser.add_argument(
        "--until", metavar="TIME", help=f"only lines up to TIME (-f stops there): {moment}"
    )
    parser.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="start each line with its time (RFC 3339, UTC, to the millisecond)",
    )


def _run_logs(args: argparse.Namespace) -> int:
    """Copy containers' logs to stdout; with -f, as they grow (several at once, interleaved)."""
    import threading

    from squish.cli.timespec import parse_moment

    if args.tail is not None and args.tail < -1:
        raise SquishError(f"--tail must be 0 or more (or -1: all), got {args.tail}")
    now = time.time()
    since = None if args.since is None else parse_moment(args.since, now=now, what="--since")
    until = None if args.until is None else parse_moment(args.until, now=now, what="--until")
    several = len(args.refs) > 1
    lock = threading.Lock()

    def copy(ref: str) -> None:
        with _client(args) as client:
            chunks = client.logs(
                ref,
                follow=args.follow,
                tail=None if args.tail == -1 else args.tail,
                since=since,
                until=until,
                # JSON lines always carry their time.
                timestamps=args.timestamps or args.json,
            )
            if args.json:
                _print_log_lines(ref, chunks, lock)
            elif several:
                _print_prefixed(ref, chunks, lock)
            else:
                out = sys.stdout.buffer
                for chunk in chunks:
                    out.write(chunk)
                    out.flush()

    if not (args.follow and several):
        _, status = _each(args.refs, copy)
        return status
    # Followed, several: one reader each, lines interleaved as they come.
    failures: list[SquishError] = []

    def follow(ref: str) -> None:
        try:
            copy(ref)
        except SquishError as exc:
            with lock:
                print(f"squish: {exc}", file=sys.stderr)
                failures.append(exc)

    readers = [threading.Thread(target=follow, args=(ref,), daemon=True) for ref in args.refs]
    for reader in readers:
        reader.start()
    for reader in readers:
        while reader.is_alive():
            reader.join(0.2)  # short joins: Ctrl-C still reaches the main thread
    if any(isinstance(f, DaemonUnreachable) for f in failures):
        return EXIT_UNREACHABLE
    return EXIT_FAILURE if failures else EXIT_OK


def _print_prefixed(name: str, chunks: Iterable[bytes], lock: threading.Lock) -> None:
    """Each whole line as ``name | line``, as compose shows several services' logs."""
    pending = b""
    prefix = f"{name} | ".encode()
    out = sys.stdout.buffer
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            with lock:
                out.write(b"".join(prefix + line + b"\n" for line in lines))
                out.flush()
    if pending:
        with lock:
            out.write(prefix + pending + b"\n")
            out.flush()


def _print_log_lines(name: str, chunks: Iterable[bytes], lock: threading.Lock) -> None:
    """One JSON object a line: the name, the line, its time ``at`` (Unix seconds)."""
    from datetime import datetime

    def show(line: bytes) -> None:
        stamp, _, text = line.partition(b" ")
        try:
            at: float | None = datetime.fromisoformat(stamp.decode()).timestamp()
        except ValueError:
            at, text = None, line
        record = {"name": name, "line": text.decode("utf-8", errors="replace"), "at": at}
        with lock:
            print(json.dumps(record), flush=True)

    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            show(line)
    if pending:
        show(pending)


def _configure_events(parser: argparse.ArgumentParser) -> None:
    _add_format(parser)


def _run_events(args: argparse.Namespace) -> int:
    """Print the daemon's events as they happen, until Ctrl-C."""
    from datetime import datetime

    template = "json" if args.json else args.format
    if template is not None:
        cli_output.check_template(template)
    with _client(args) as client:
        for event in client.events():
            if template is not None:
                print(cli_output.render(template, event), flush=True)
                continue
            when = datetime.fromtimestamp(event["at"]).isoformat(timespec="seconds")
            message = " ".join(str(event.get("message", "")).split())
            print(f"{when} {event['kind']} {event['name']} {message}", flush=True)
    return EXIT_OK


def _run_status(args: argparse.Namespace) -> int:
    """The daemon's own state: version, uptime, node, manifests, containers per phase."""
    with _client(args) as client:
        status = client.status()
    if args.json:
        _print_json(status)
    else:
        print(cli_output.status_summary(status))
    return EXIT_OK


def _actions(
    parser: argparse.ArgumentParser, dest: str
) -> Callable[[str, str, str], argparse.ArgumentParser]:
    """``action(name, help, example)``: a sub-action of ``parser`` (``squish network ls``)."""
    actions = parser.add_subparsers(dest=dest, metavar="ACTION", required=True)

    def action(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"Example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    return action


def _configure_network(parser: argparse.ArgumentParser) -> None:
    action = _actions(parser, "network_command")

    listing = action(
        "ls", "every named network: its subnet, gateway and containers", "squish network ls"
    )
    inspect = action(
        "inspect",
        "networks in full, as JSON: who names them, who is on them, their addresses",
        "squish network inspect backend",
    )
    inspect.add_argument("names", nargs="+", metavar="NAME", help="the networks to describe")
    for sub in (listing, inspect):
        # Accepted after the action too; SUPPRESS keeps it from resetting the earlier one.
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )


def _run_network(args: argparse.Namespace) -> int:
    """``squish network ls`` and ``inspect``: the named networks, as the daemon wired them."""
    if args.network_command == "inspect":
        with _client(args) as client:
            found, status = _each(args.names, client.network)
        _print_json(found)
        return status
    with _client(args) as client:
        networks = client.networks()
    if args.json:
        _print_json(networks)
        return EXIT_OK
    rows = []
    for network in networks:
        on = {member["name"] for member in network["members"]}
        named = network["containers"]
        rows.append(
            [
                network["name"],
                network["subnet"] or "-",
                network["gateway"] or "-",
                f"{len(on)}/{len(named)}",
                ", ".join(named) or "-",
            ]
        )
    _print_plain_table(["NAME", "SUBNET", "GATEWAY", "RUNNING", "CONTAINERS"], rows)
    return EXIT_OK


def _configure_volume(parser: argparse.ArgumentParser) -> None:
    action = _actions(parser, "volume_command")

    listing = action("ls", "every named volume of the node and who names it", "squish volume ls")
    inspect = action(
        "inspect",
        "volumes in full, as JSON: where they are, who names them, their size",
        "squish volume inspect pgdata",
    )
    inspect.add_argument("names", nargs="+", metavar="NAME", help="the volumes to describe")
    remove = action(
        "rm",
        "delete volumes and their data (refused while a squishfile names one)",
        "squish volume rm pgdata",
    )
    remove.add_argument("names", nargs="+", metavar="NAME", help="the volumes to delete")
    prune = action("prune", "delete every volume no squishfile names", "squish volume prune")
    export = action(
        "export", "write a volume as a tar ('-': to stdout)", "squish volume export pgdata pg.tar"
    )
    export.add_argument("name", metavar="NAME", help="the volume")
    export.add_argument("file", metavar="FILE.tar", help="where to write it, or - for stdout")
    load = action(
        "import",
        "make a volume (made if need be) hold exactly what a tar holds ('-': from stdin); "
        "refused while a running container mounts it",
        "squish volume import pgdata pg.tar",
    )
    load.add_argument("name", metavar="NAME", help="the volume")
    load.add_argument("file", metavar="FILE.tar", help="the archive, or - for stdin")
    for sub in (listing, inspect, remove, prune, load):
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )


def _run_volume(args: argparse.Namespace) -> int:
    """``squish volume ls``, ``inspect``, ``rm``, ``prune``."""
    with _client(args) as client:
        if args.volume_command == "export":
            _export_volume(client, args.name, args.file)
            return EXIT_OK
        if args.volume_command == "import":
            imported = client.import_volume(args.name, _read_chunks(args.file))
            if args.json:
                _print_json(imported)
            else:
                print(f"{imported['name']}: {imported['size']} bytes", file=sys.stderr)
            return EXIT_OK
        if args.volume_command in ("inspect", "rm"):
            call = client.volume if args.volume_command == "inspect" else client.remove_volume
            found, status = _each(args.names, call)
            if args.volume_command == "inspect" or args.json:
                _print_json(found)
            else:
                for volume in found:
                    print(volume["name"])
            return status
        if args.volume_command == "prune":
            pruned = client.prune_volumes()
            if args.json:
                _print_json(pruned)
            else:
                for volume in pruned["removed"]:
                    print(volume["name"])
                total = sum(volume["size"] or 0 for volume in pruned["removed"])
                print(f"removed {len(pruned['removed'])} volumes, {total} bytes", file=sys.stderr)
            return EXIT_OK
        volumes = client.volumes()
    if args.json:
        _print_json(volumes)
        return EXIT_OK
    now = time.time()
    rows = [
        [
            volume["name"],
            cli_output.duration(now - volume["created_at"]),
            ", ".join(volume["containers"]) or "-",
        ]
        for volume in volumes
    ]
    _print_plain_table(["NAME", "CREATED", "CONTAINERS"], rows)
    return EXIT_OK


def _configure_secret(parser: argparse.ArgumentParser) -> None:
    action = _actions(parser, "action_of_secret")
    create = action(
        "create",
        "store a secret of the node from FILE ('-': stdin), replacing an earlier value "
        "(and the containers that use it)",
        "squish secret create pg-password ./pg-password.txt",
    )
    create.add_argument("name", metavar="NAME", help="the secret's name")
    create.add_argument("file", metavar="FILE", help="the value: a file, or - for stdin")
    listing = action(
        "ls", "every secret of the node and who names it (never a value)", "squish secret ls"
    )
    remove = action(
        "rm",
        "delete secrets (refused while a squishfile names one)",
        "squish secret rm pg-password",
    )
    remove.add_argument("names", nargs="+", metavar="NAME", help="the secrets to delete")
    for sub in (create, listing, remove):
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )


def _run_secret(args: argparse.Namespace) -> int:
    """``squish secret create``, ``ls``, ``rm``: the node's secrets, never their values."""
    action: str = args.action_of_secret
    with _client(args) as client:
        if action == "create":
            made = client.create_secret(args.name, _read_chunks(args.file))
            if args.json:
                _print_json(made)
            else:
                print(made["name"])
            return EXIT_OK
        if action == "rm":
            removed, status = _each(args.names, client.remove_secret)
            if args.json:
                _print_json(removed)
            else:
                for secret in removed:
                    print(secret["name"])
            return status
        secrets = client.secrets()
    if args.json:
        _print_json(secrets)
        return EXIT_OK
    now = time.time()
    rows = [
        [s["name"], cli_output.duration(now - s["created_at"]), ", ".join(s["containers"]) or "-"]
        for s in secrets
    ]
    _print_plain_table(["NAME", "CREATED", "CONTAINERS"], rows)
    return EXIT_OK


def _export_volume(client: Client, name: str, file: str) -> None:
    """Write the volume's tar to ``file`` (``-``: stdout); a file is whole or not there."""
    chunks = client.export_volume(name)
    if file == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    target = Path(file)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("wb") as sink:
            for chunk in chunks:
                sink.write(chunk)
        partial.rename(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SquishError(f"{file}: cannot write it: {exc.strerror or exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _read_chunks(file: str) -> Iterator[bytes]:
    """The chunks of ``file`` (``-``: stdin), opened before the first is asked for."""
    try:
        source = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise SquishError(f"{file}: cannot read it: {exc.strerror or exc}") from exc

    def chunks() -> Iterator[bytes]:
        with source:
            while chunk := source.read(1 << 16):
                yield chunk

    return chunks()


def _configure_layer(parser: argparse.ArgumentParser) -> None:
    from squish.cli import layers as cli_layers

    cli_layers.configure(parser)


def _run_layer(args: argparse.Namespace) -> int:
    from squish.cli import layers as cli_layers

    with _client(args) as client:
        return cli_layers.run(args, client, _print_plain_table)


def _configure_nothing(parser: argparse.ArgumentParser) -> None:
    return None


# Shells shtab writes completion for; listed here so that parsing imports no shtab.
COMPLETION_SHELLS = ("bash", "zsh", "fish", "tcsh")


def _configure_completion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shell",
        choices=COMPLETION_SHELLS,
        help="the shell to complete in: " + ", ".join(COMPLETION_SHELLS),
    )


def _run_completion(args: argparse.Namespace) -> int:
    """Print the completion script of ``args.shell`` for the whole command line."""
    from squish.cli import completion

    script = completion.script(build_parser(args.verbs, complete=True), args.shell)
    if args.json:
        _print_json({"shell": args.shell, "script": script})
    else:
        sys.stdout.write(script)
    return EXIT_OK


# -- registry and entry point -----------------------------------------------

SUBCOMMANDS: dict[str, Subcommand] = {
    "create": Subcommand(
        help="send a squishfile to the daemon, wait until it runs, print the container id",
        configure=_configure_create,
        run=_run_create,
        examples=("squish create web.toml", "squish create --timeout 120 db.toml"),
    ),
    "apply": Subcommand(
        help="send squishfiles to the daemon without waiting (like kubectl apply)",
        configure=_configure_apply,
        run=_run_apply,
        examples=("squish apply web.toml worker.toml", "squish apply --json *.toml"),
    ),
    "ps": Subcommand(
        help="list running containers (-a: all of them)",
        configure=_configure_ps,
        run=_run_ps,
        examples=("squish ps", "squish ps -a", "squish ps --json"),
    ),
    "stop": Subcommand(
        help="stop containers by name or id prefix (they stay stopped), print their ids",
        configure=_configure_stop,
        run=_run_stop,
        examples=("squish stop web", "squish stop 3f9a2c1"),
    ),
    "start": Subcommand(
        help="start stopped containers again, print their new ids",
        configure=_configure_start,
        run=_run_start,
        examples=("squish start web",),
    ),
    "delete": Subcommand(
        help="remove containers' squishfiles from the daemon (their containers stop)",
        configure=_configure_delete,
        run=_run_delete,
        examples=("squish delete web",),
    ),
    "logs": Subcommand(
        help="print a container's log (-f: follow it)",
        configure=_configure_logs,
        run=_run_logs,
        examples=("squish logs web", "squish logs -f --tail 20 web"),
    ),
    "exec": Subcommand(
        help="run a command inside a running container; its exit status is the command's",
        configure=_configure_exec,
        run=_run_exec,
        examples=(
            "squish exec web cat /etc/os-release",
            "squish exec --timeout 5 db -- /bin/sh -c 'ls /data | wc -l'",
        ),
    ),
    "inspect": Subcommand(
        help="everything about containers, as a JSON array",
        configure=_configure_inspect,
        run=_run_inspect,
        examples=("squish inspect web",),
    ),
    "events": Subcommand(
        help="print the daemon's events as they happen",
        configure=_configure_events,
        run=_run_events,
        examples=("squish events", "squish events --json"),
    ),
    "status": Subcommand(
        help="the daemon's status",
        configure=_configure_nothing,
        run=_run_status,
        examples=("squish status", "squish status --socket /run/squish/squish.sock"),
    ),
    "layer": Subcommand(
        help="layers in the daemon's cache: pull, import, ls, rm, gc",
        configure=_configure_layer,
        run=_run_layer,
        examples=(
            "squish layer pull python 3.11",
            "squish layer import python 3.11 python-3.11.tar.gz",
            "squish layer ls",
        ),
    ),
    "network": Subcommand(
        help="named networks (networks = [...] in squishfiles): ls, inspect",
        configure=_configure_network,
        run=_run_network,
        examples=("squish network ls", "squish network inspect backend"),
    ),
    "volume": Subcommand(
        help="named volumes ([volumes] in squishfiles): ls, inspect, rm, prune, export, import",
        configure=_configure_volume,
        run=_run_volume,
        examples=("squish volume ls", "squish volume inspect pgdata", "squish volume prune"),
    ),
    "secret": Subcommand(
        help="the node's secrets ([secrets] in squishfiles): create, ls, rm",
        configure=_configure_secret,
        run=_run_secret,
        examples=("squish secret create pg-password ./pg.txt", "squish secret ls"),
    ),
    "sources": Subcommand(
        help="where the manifests come from: directories and git sources, their revisions",
        configure=_configure_nothing,
        run=_run_sources,
        examples=("squish sources",),
    ),
    "sync": Subcommand(
        help="fetch the git sources now and apply what changed (like flux reconcile)",
        configure=_configure_sync,
        run=_run_sync,
        examples=("squish sync", "squish sync git"),
    ),
    "validate": Subcommand(
        help="check squishfiles without running them",
        configure=_configure_validate,
        run=_run_validate,
        examples=("squish validate manifests/*.toml",),
    ),
    "completion": Subcommand(
        help="print a shell completion script: bash, zsh, fish or tcsh",
        configure=_configure_completion,
        run=_run_completion,
        examples=(
            "squish completion bash > ~/.local/share/bash-completion/completions/squish",
            'squish completion zsh > "${fpath[1]}/_squish"',
            "squish completion fish > ~/.config/fish/completions/squish.fish",
        ),
    ),
}


def _epilog(examples: tuple[str, ...]) -> str:
    heading = "Example:" if len(examples) == 1 else "Examples:"
    return "\n".join([heading, *(f"  {example}" for example in examples)])


class _VerbParser(argparse.ArgumentParser):
    """A verb's parser that adds the verb's own arguments when first needed.

    Some verbs' arguments are defined beside what runs them (``squish daemon``'s
    in :mod:`squish.daemon.main`, which imports the whole daemon), and adding them
    all up front would make every ``squish ps`` import every verb. argparse
    reaches a verb's parser only to parse that verb's arguments or to show its
    usage or help, so those three methods add the arguments first; whatever
    reads the whole tree (completion scripts, the man page) asks for
    ``build_parser(complete=True)``.
    """

    pending: Callable[[argparse.ArgumentParser], None] | None = None

    def configure_now(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending(self)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self.configure_now()
        return super().parse_known_args(*args, **kwargs)

    def format_usage(self) -> str:
        self.configure_now()
        return super().format_usage()

    def format_help(self) -> str:
        self.configure_now()
        return super().format_help()


def build_parser(
    verbs: Mapping[str, Subcommand] = SUBCOMMANDS, *, complete: bool = False
) -> argparse.ArgumentParser:
    """The ``squish`` parser of ``verbs``; ``complete``: their arguments added now, not when used.

    Every verb's handler finds ``verbs`` in its arguments (``args.verbs``),
    for what needs the whole command line (completion scripts).
    """
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="squish",
        description="A rootless container runtime shaped as a reconciler.",
        epilog=f"exit status:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"squish {__version__}")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    socket_help = (
        "the daemon's API socket (default: $SQUISH_SOCKET, else squish.sock in "
        "$XDG_RUNTIME_DIR/squish)"
    )
    parser.add_argument("--socket", type=Path, default=None, metavar="PATH", help=socket_help)
    parser.set_defaults(verbs=verbs)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_VerbParser
    )
    for name, subcommand in verbs.items():
        sub = commands.add_parser(
            name,
            help=subcommand.help,
            description=subcommand.help,
            epilog=_epilog(subcommand.examples),
            # Keeps the examples one to a line, as written.
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # Accepted before the verb too: SUPPRESS keeps it from resetting the global one.
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )
        # Accepted after the verb too; SUPPRESS keeps it from resetting the global one.
        sub.add_argument(
            "--socket", type=Path, default=argparse.SUPPRESS, metavar="PATH", help=socket_help
        )
        sub.pending = subcommand.configure
        if complete:
            sub.configure_now()
    return parser


def main(argv: Sequence[str] | None = None, verbs: Mapping[str, Subcommand] = SUBCOMMANDS) -> int:
    """Run ``squish`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    ``verbs``: the client verbs of this module by default; the installed
    command (``squish.main``) adds those that run things on this host.
    """
    parser = build_parser(verbs)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help, --version and usage errors (having printed
        # what to say); returning the status keeps main() callable from tests.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return verbs[args.command].run(args)
    except DaemonUnreachable as exc:
        print(f"squish: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except SquishError as exc:
        print(f"squish: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (squish events | head -1): nothing left to say.
        _silence_stdout()
        return EXIT_FAILURE


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would complain of the broken pipe again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
