"""The ``squish`` command line.

``main`` is the console-script entry point (``squish = squish.cli:main``) and
what ``python -m squish`` runs. Each subcommand is one :class:`Subcommand` in
:data:`SUBCOMMANDS`: a function adding its arguments to its parser and a
function running it, returning the exit status. Adding a subcommand means
writing those two functions and one registry entry; ``main`` needs no change.

Every subcommand takes ``--json`` for scripts. Errors a user caused
(:class:`~squish.errors.SquishError`) are printed as their one line, never as
a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from squish import __version__, paths
from squish.errors import ManifestError, SquishError
from squish.layers import LayerStore
from squish.manifest import load_squishfile
from squish.runtime import DEFAULT_HOST_IP, DEFAULT_STOP_GRACE, ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.spec import container_spec

# Conventional exit statuses.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Subcommand:
    """One ``squish <name>`` verb."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- validate ---------------------------------------------------------------


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="squishfiles to check")


def _run_validate(args: argparse.Namespace) -> int:
    """Check every file, reporting each; fail if any is bad."""
    results: list[dict[str, Any]] = []
    failed = False
    for file in args.files:
        try:
            squishfile = load_squishfile(file)
        except ManifestError as exc:
            failed = True
            results.append(
                {
                    "file": file,
                    "ok": False,
                    "error": {
                        "message": str(exc),
                        "field": exc.field,
                        "line": exc.line,
                        "reason": exc.message,
                    },
                }
            )
            if not args.json:
                print(exc, file=sys.stderr)
        else:
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
    return EXIT_FAILURE if failed else EXIT_OK


# -- run --------------------------------------------------------------------


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the squishfile to run")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="layer cache, built-in base and logs (default: $XDG_STATE_HOME/squish)",
    )
    parser.add_argument(
        "--host-ip",
        default=os.environ.get("SQUISH_HOST_IP", DEFAULT_HOST_IP),
        help="address port forwards bind to unless a port says otherwise (default: %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_GRACE,
        help="seconds between SIGTERM and SIGKILL on Ctrl-C (default: %(default)s)",
    )


def _refuse_root() -> None:
    if os.getuid() == 0:
        raise SquishError(
            "squish is rootless-only and will not run containers as root; "
            "run it as an ordinary user (e.g. runuser -u USER -- squish ...)"
        )


def _run_run(args: argparse.Namespace) -> int:
    """Run one squishfile in the foreground until it exits or Ctrl-C."""
    _refuse_root()
    squishfile = load_squishfile(args.file)
    state = args.state_dir or paths.state_dir()
    spec = container_spec(squishfile, LayerStore(state))
    return anyio.run(_run_foreground, spec, state, args)


async def _run_foreground(spec: ContainerSpec, state: Path, args: argparse.Namespace) -> int:
    run_dir = paths.runtime_dir() / f"run-{os.getpid()}"
    log_path = state / "logs" / f"{spec.name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    try:
        async with BwrapRuntime(
            run_dir=run_dir, log_dir=state / "logs", default_host_ip=args.host_ip
        ) as runtime:
            with (
                runtime.subscribe() as exits,
                anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            ):
                container = await runtime.start(spec)
                ports = ", ".join(p.describe(args.host_ip) for p in container.ports)
                if args.json:
                    print(json.dumps({"id": container.id, "name": container.name}), flush=True)
                else:
                    print(container.id, flush=True)
                    print(
                        f"squish: {container.name} running"
                        + (f", ports {ports}" if ports else "")
                        + f"; log {log_path}; Ctrl-C stops it",
                        file=sys.stderr,
                    )
                async with anyio.create_task_group() as tg:
                    if not args.json:
                        tg.start_soon(_follow, log_path, offset)

                    async def stop_on_signal() -> None:
                        async for _ in signals:
                            await runtime.stop(container.id, grace=args.stop_timeout)
                            return

                    tg.start_soon(stop_on_signal)
                    async for event in exits:
                        if event.container_id == container.id:
                            break
                    await anyio.sleep(0.05)  # let the follower print the last lines
                    tg.cancel_scope.cancel()
                if event.reason:
                    print(f"squish: {event.reason}", file=sys.stderr)
                return event.exit_code
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def _follow(path: Path, offset: int) -> None:
    """Copy what the container logs to our stdout (like an attached podman run)."""
    async with await anyio.open_file(path, "rb") as log:
        await log.seek(offset)
        while True:
            chunk = await log.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            else:
                await anyio.sleep(0.05)


# -- registry and entry point -----------------------------------------------

SUBCOMMANDS: dict[str, Subcommand] = {
    "validate": Subcommand(
        help="check squishfiles without running them",
        configure=_configure_validate,
        run=_run_validate,
    ),
    "run": Subcommand(
        help="run one squishfile in the foreground until it exits or Ctrl-C",
        configure=_configure_run,
        run=_run_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squish", description="A rootless container runtime shaped as a reconciler."
    )
    parser.add_argument("--version", action="version", version=f"squish {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, subcommand in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=subcommand.help, description=subcommand.help)
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        subcommand.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``squish`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help, --version and usage errors (having printed
        # what to say); returning the status keeps main() callable from tests.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return SUBCOMMANDS[args.command].run(args)
    except SquishError as exc:
        print(f"squish: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
