"""The squish(1) manual page, generated from the command line's parser.

For packagers and anyone who wants ``man squish``: argparse-manpage (the
``man`` extra, also in ``dev``) writes the page from the same parser as
``--help``, so the two cannot drift apart::

    python -m squish.manpage -o squish.1     # then: man -l squish.1

The date in the page is today's, or ``$SOURCE_DATE_EPOCH``'s for a
reproducible build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from argparse_manpage.manpage import Manpage

from squish import __version__
from squish.cli.commands import EXIT_CODES
from squish.main import VERBS, build_parser

SHORT_DESCRIPTION = "a rootless container runtime shaped as a declarative reconciler"


def roff() -> str:
    """The manual page, as roff source."""
    page = Manpage(build_parser(complete=True))
    # The maintainers' way to set these: attributes, not the private _data.
    page.description = SHORT_DESCRIPTION
    page.source = f"squish {__version__}"
    page.manual = "squish manual"
    page.add_section("exit status", "=", _EXIT_STATUS)
    page.add_section("examples", "=", _examples())
    page.add_section("see also", "=", _SEE_ALSO)
    return str(page)


# The same table as --help's epilog: the codes the command returns.
_EXIT_STATUS = "\n".join(f".TP\n.B {code}\n{meaning}" for code, meaning in EXIT_CODES.items())

_SEE_ALSO = ".BR bwrap (1),\n.BR slirp4netns (1)"


def _escape(text: str) -> str:
    # roff: a backslash starts an escape, and "-" is a hyphen where "\-" is
    # the minus sign that options are written with.
    return text.replace("\\", "\\e").replace("-", "\\-")


def _examples() -> str:
    """Every verb's examples (the end of its --help), one verb to a paragraph."""
    lines: list[str] = []
    for name, subcommand in VERBS.items():
        lines += [".TP", f".B squish {name}", ".nf"]
        lines += [_escape(example) for example in subcommand.examples]
        lines.append(".fi")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m squish.manpage", description="Write the squish(1) manual page."
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="the file to write (default: stdout)"
    )
    args = parser.parse_args(argv)
    text = roff()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
