"""The ``squish`` command as installed: every verb, the client's and the host's.

``main`` is the console-script entry point (``squish = squish.main:main``)
and what ``python -m squish`` runs; ``daemon_main`` is ``squishd``. The
verbs that talk to the daemon (and ``validate``, ``completion``) are
``squish.cli``'s; the two that run things on this host are the daemon
package's: ``daemon`` (``squish.daemon.main``) and ``run``
(``squish.daemon.foreground``). This module is where the two meet, so that
neither imports the other; each verb's module is imported only when that
verb runs or its options are asked for, which keeps ``squish ps`` quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from squish.cli import commands
from squish.cli.commands import Subcommand


def _configure_daemon(parser: argparse.ArgumentParser) -> None:
    from squish.daemon import main as daemon

    daemon.add_arguments(parser)


def _run_daemon(args: argparse.Namespace) -> int:
    from squish.daemon import main as daemon

    return daemon.run(args)


def _configure_run(parser: argparse.ArgumentParser) -> None:
    from squish.daemon import foreground

    foreground.configure(parser)


def _run_run(args: argparse.Namespace) -> int:
    from squish.daemon import foreground

    return foreground.run(args)


HOST_VERBS = {
    "daemon": Subcommand(
        help="keep the containers of a directory of squishfiles running (the reconciler)",
        configure=_configure_daemon,
        run=_run_daemon,
        examples=(
            "squish daemon --manifests ~/manifests",
            "squish daemon --git https://git.example.com/ops/fleet.git --git-path apps",
        ),
    ),
    "run": Subcommand(
        help="run one squishfile in the foreground until it exits or Ctrl-C",
        configure=_configure_run,
        run=_run_run,
        examples=("squish run web.toml",),
    ),
}


def _all_verbs() -> dict[str, Subcommand]:
    # In the order of --help: the host's verbs after validate.
    verbs: dict[str, Subcommand] = {}
    for name, verb in commands.SUBCOMMANDS.items():
        verbs[name] = verb
        if name == "validate":
            verbs.update(HOST_VERBS)
    return verbs


VERBS = _all_verbs()


def build_parser(*, complete: bool = False) -> argparse.ArgumentParser:
    """The whole ``squish`` parser (for the man page and completion scripts)."""
    return commands.build_parser(VERBS, complete=complete)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``squish`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    return commands.main(argv, VERBS)


def daemon_main() -> int:
    """``squishd``: the same as ``squish daemon``."""
    return main(["daemon", *sys.argv[1:]])
