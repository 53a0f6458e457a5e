"""Shell completion scripts for ``squish``, generated from its parser by shtab.

Called by ``squish completion SHELL`` (:mod:`squish.cli.commands`), with the whole
parser (every verb's arguments added). The scripts are static: they complete
verbs, options and their choices, files for file arguments and directories
for directory ones, without running ``squish`` at each key press. shtab
writes bash, zsh, fish and tcsh (and PowerShell, not offered here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import shtab

# Arguments naming a directory, by dest; every other Path-typed argument and
# every FILE argument names a file.
_DIRECTORIES = frozenset({"manifests", "state_dir"})
_FILES = frozenset({"file", "files", "archive"})


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``shell`` for ``parser``."""
    _hint_paths(parser)
    return shtab.complete(parser, shell=shell)


def _hint_paths(parser: argparse.ArgumentParser) -> None:
    """Mark file and directory arguments, in this parser and every subparser below it."""
    for action in parser._actions:  # argparse keeps no public list; shtab reads it too
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _hint_paths(sub)
        elif action.dest in _DIRECTORIES:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.type is Path or action.dest in _FILES:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
