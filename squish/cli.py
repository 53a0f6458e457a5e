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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from squish import __version__
from squish.errors import ManifestError, SquishError
from squish.manifest import load_squishfile

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


# -- registry and entry point -----------------------------------------------

SUBCOMMANDS: dict[str, Subcommand] = {
    "validate": Subcommand(
        help="check squishfiles without running them",
        configure=_configure_validate,
        run=_run_validate,
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
