"""Where a field of a TOML document is written: the line of a key path.

tomllib gives values, not positions, so without this a squishfile's field
errors would name no line. ``KeyLines(text).line(("ports", 1, "host"))``
answers from one scan of the source: table headers (``[run]``, ``[layers.app]``,
and ``[[ports]]``, whose n-th occurrence is element n), ``key = value`` lines
with dotted and quoted keys, and the elements of arrays. Strings, comments
and values spanning lines are skipped the way TOML reads them, so a ``[x]``
or a ``key =`` inside a multi-line string is neither a header nor a key.

A path not written as such is found where it is defined: a table made by
dotted keys (``app.path = ...``) at its first key, a key inside an inline
table or array at that value's line, provided the value is on one line.
When it cannot be sure (a place inside a value spanning lines, a source it
does not follow) it answers None: no line is better than a wrong one.

Used by ``squish.model.squishfile`` for its error messages, only on sources tomllib
has accepted. Pure.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KeyLines"]

Path = tuple[int | str, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A basic string on one line: what a quoted key is.
_BASIC = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LITERAL = re.compile(r"'[^'\n]*'")
# The end of a scalar (number, boolean, date): what may follow it.
_SCALAR_END = re.compile(r"[,\]}#\n]")
# pydantic's marker for "the key itself failed": the key is the place.
_KEY_MARKER = "[key]"


class _Unsure(Exception):
    """The source is not what this scanner follows; it answers nothing."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    line: int  # where the key or header is
    end: int  # the line its value ends on (a header: its own line)
    elements: tuple[tuple[int, int], ...] | None = None  # an array: (first, last) line of each
    header: bool = False  # a [table] or [[array]] header: its keys follow on their own lines


class KeyLines:
    """The lines of the keys of one TOML source (``text``, as tomllib read it)."""

    def __init__(self, text: str) -> None:
        try:
            self._entries: list[_Entry] | None = _Scanner(text).entries()
        except (_Unsure, RecursionError):
            self._entries = None

    def line(self, path: Sequence[int | str]) -> int | None:
        """The 1-based line of ``path`` (``("ports", 0, "host")``), or None if unsure."""
        wanted = tuple(part for part in path if part != _KEY_MARKER)
        if not wanted or self._entries is None:
            return None
        inside: _Entry | None = None
        for entry in self._entries:
            if entry.path == wanted:
                return entry.line
        for entry in self._entries:
            if entry.path[: len(wanted)] == wanted:
                return entry.line  # the first key of a table defined piecewise
            if wanted[: len(entry.path)] == entry.path and (
                inside is None or len(entry.path) > len(inside.path)
            ):
                inside = entry
        if inside is None or inside.header:
            return None  # not written: a key missing from its table is nowhere
        rest = wanted[len(inside.path) :]
        if inside.elements is not None and isinstance(rest[0], int):
            if rest[0] >= len(inside.elements):
                return None
            first, last = inside.elements[rest[0]]
            return first if len(rest) == 1 or first == last else None
        return inside.line if inside.line == inside.end else None


class _Scanner:
    """One pass over a TOML source, collecting an ``_Entry`` per key and header."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.lineno = 1
        self.found: list[_Entry] = []
        self.table: Path = ()
        # How many [[x]] elements each array of tables has had so far.
        self.arrays: dict[Path, int] = {}

    def entries(self) -> list[_Entry]:
        while True:
            self.skip_blank(newlines=True)
            if self.at >= len(self.text):
                return self.found
            if self.peek() == "[":
                self.header()
            else:
                keys = self.keys()
                line = self.lineno
                self.expect("=")
                entry = self.value(self.table + keys, line)
                self.found.append(entry)
            self.skip_blank(newlines=False)
            if self.at < len(self.text):
                self.expect("\n")

    # -- statements --------------------------------------------------------

    def header(self) -> None:
        line = self.lineno
        array = self.text.startswith("[[", self.at)
        self.at += 2 if array else 1
        keys = self.keys()
        self.expect("]]" if array else "]")
        if array:
            parent = self.concrete(keys[:-1]) + keys[-1:]
            count = self.arrays.get(parent, 0)
            self.arrays[parent] = count + 1
            self.table = (*parent, count)
        else:
            self.table = self.concrete(keys)
        self.found.append(_Entry(self.table, line, line, header=True))

    def concrete(self, keys: Path) -> Path:
        """``keys`` with the current element of every array of tables on the way."""
        path: Path = ()
        for key in keys:
            path = (*path, key)
            if path in self.arrays:
                path = (*path, self.arrays[path] - 1)
        return path

    def keys(self) -> Path:
        keys: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            keys.append(self.key())
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(keys)
            self.at += 1

    def key(self) -> str:
        for pattern in (_BASIC, _LITERAL, _BARE_KEY):
            match = pattern.match(self.text, self.at)
            if match is not None:
                self.at = match.end()
                token = match.group()
                if pattern is _BARE_KEY:
                    return token
                if pattern is _LITERAL:
                    return token[1:-1]
                # tomllib decodes the escapes exactly as it did for the document.
                decoded: str = tomllib.loads(f"k = {token}")["k"]
                return decoded
        raise _Unsure

    # -- values ------------------------------------------------------------

    def value(self, path: Path, line: int) -> _Entry:
        self.skip_blank(newlines=False)
        start = self.peek()
        elements: tuple[tuple[int, int], ...] | None = None
        if start == "[":
            elements = self.array()
        elif start == "{":
            self.inline_table()
        elif start in "\"'":
            self.string()
        else:
            end = _SCALAR_END.search(self.text, self.at)
            self.at = len(self.text) if end is None else end.start()
        return _Entry(path, line, self.lineno, elements)

    def array(self) -> tuple[tuple[int, int], ...]:
        self.at += 1
        elements: list[tuple[int, int]] = []
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.at += 1
                return tuple(elements)
            first = self.lineno
            self.value((), first)
            elements.append((first, self.lineno))
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.at += 1
            elif self.peek() != "]":
                raise _Unsure

    def inline_table(self) -> None:
        self.at += 1
        while True:
            self.skip_blank(newlines=False)
            if self.peek() == "}":
                self.at += 1
                return
            self.keys()
            self.expect("=")
            self.value((), self.lineno)
            self.skip_blank(newlines=False)
            if self.peek() == ",":
                self.at += 1
            elif self.peek() != "}":
                raise _Unsure

    def string(self) -> None:
        quote = self.peek()
        multi = self.text.startswith(quote * 3, self.at)
        self.at += 3 if multi else 1
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and quote == '"':
                self.advance(2)  # an escape, or a line-ending backslash
            elif char == quote and (not multi or self.text.startswith(quote * 3, self.at)):
                if not multi:
                    self.at += 1
                    return
                # Up to two more quotes before the closing three are content.
                run = 3
                while run < 5 and self.text.startswith(quote, self.at + run):
                    run += 1
                self.at += run
                return
            elif char == "\n" and not multi:
                raise _Unsure
            else:
                self.advance(1)
        raise _Unsure

    # -- characters --------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def advance(self, count: int) -> None:
        end = min(self.at + count, len(self.text))
        self.lineno += self.text.count("\n", self.at, end)
        self.at = end

    def expect(self, token: str) -> None:
        self.skip_blank(newlines=False)
        if not self.text.startswith(token, self.at):
            raise _Unsure
        self.advance(len(token))

    def skip_blank(self, *, newlines: bool) -> None:
        """Skip spaces, tabs and a comment; with ``newlines``, blank lines too."""
        while self.at < len(self.text):
            char = self.text[self.at]
            if char in " \t\r" or (newlines and char == "\n"):
                self.advance(1)
            elif char == "#":
                end = self.text.find("\n", self.at)
                self.at = len(self.text) if end == -1 else end
            else:
                return
