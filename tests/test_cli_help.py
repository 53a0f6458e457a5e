"""The command line explains itself: help on every option, examples on every verb.

Also what is generated from the same parser: the shell completion scripts
(``squish completion SHELL``, loaded into a real bash here, and checked by
zsh and fish where they are installed) and the manual page
(``python -m squish.manpage``, rendered by groff and man without a warning).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from squish.cli.commands import COMPLETION_SHELLS
from squish.main import VERBS as SUBCOMMANDS
from squish.main import build_parser, main

SQUISH = [sys.executable, "-m", "squish"]


def verb_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser in the tree with the words that reach it (``("layer", "pull")``)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from verb_parsers(sub, (*path, name))


VERBS = [path for path, _ in verb_parsers(build_parser(complete=True)) if path]


def test_every_option_and_argument_has_help() -> None:
    missing = []
    for path, parser in verb_parsers(build_parser(complete=True)):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                # The verbs themselves, as listed in their parent's help.
                listed = {choice.dest: choice.help for choice in action._choices_actions}
                missing += [f"{' '.join((*path, n))}" for n in action.choices if not listed.get(n)]
            elif not action.help or action.help == argparse.SUPPRESS:
                name = "/".join(action.option_strings) or action.dest
                missing.append(f"squish {' '.join(path)} {name}".replace("  ", " "))
    assert missing == []


def test_layer_actions_and_verbs_are_all_walked() -> None:
    assert {("ps",), ("daemon",), ("completion",), ("layer", "pull"), ("layer", "gc")} <= set(VERBS)


@pytest.mark.parametrize("path", VERBS, ids=" ".join)
def test_help_ends_with_examples(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    heading = max(i for i, line in enumerate(lines) if line in ("Example:", "Examples:"))
    examples = lines[heading + 1 :]
    assert examples, lines
    for example in examples:
        assert example.startswith(f"  squish {path[0]}"), example


def test_examples_parse() -> None:
    # An example that the parser refuses teaches the wrong thing.
    parser = build_parser(complete=True)
    for subcommand in SUBCOMMANDS.values():
        for example in subcommand.examples:
            command = example.split(">")[0]  # less a redirection
            words = ["x.toml" if "*" in word else word for word in command.split()[1:]]
            parser.parse_args(words)


def test_a_verb_parsed_alone_is_the_verb_of_the_whole_tree() -> None:
    # The arguments a verb adds when it is used are the ones it adds up front.
    for verb in ("daemon", "run", "layer", "logs"):
        lazy = build_parser()._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
        whole = build_parser(complete=True)._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
        assert lazy.format_help() == whole.format_help()


# -- completion ----------------------------------------------------------------------


def completion_script(shell: str) -> str:
    done = subprocess.run(
        [*SQUISH, "completion", shell], capture_output=True, text=True, check=True, timeout=30
    )
    assert done.stderr == ""
    return done.stdout


def bash_completes(line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), with squish's script loaded."""
    words = line.split(" ")
    program = f"""
source <({" ".join(SQUISH)} completion bash) || exit 3
spec=$(complete -p squish) || exit 4
function=$(sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p' <<<"$spec")
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}
"$function" squish "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(word.strip() for word in done.stdout.splitlines() if word.strip())


def test_bash_loads_the_script_and_registers_squish() -> None:
    done = subprocess.run(
        [
            "bash",
            "--norc",
            "--noprofile",
            "-c",
            f"source <({' '.join(SQUISH)} completion bash); complete -p squish",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stderr == ""
    assert done.stdout.startswith("complete ") and done.stdout.rstrip().endswith(" squish")


def test_bash_completes_verbs_options_and_choices() -> None:
    assert bash_completes("squish p") == ["ps"]
    assert set(bash_completes("squish ")) == set(SUBCOMMANDS)
    assert "--all" in bash_completes("squish ps --")
    assert bash_completes("squish layer ") == ["gc", "import", "ls", "pull", "rm"]
    assert bash_completes("squish daemon --log-format ") == ["json", "text"]
    assert bash_completes("squish completion ") == sorted(COMPLETION_SHELLS)


def test_bash_completes_files_for_file_arguments(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text("")
    assert bash_completes(f"squish validate {tmp_path}/w") == [f"{tmp_path}/web.toml"]


@pytest.mark.parametrize("shell", COMPLETION_SHELLS)
def test_every_shell_gets_a_script_naming_every_verb(shell: str) -> None:
    script = completion_script(shell)
    for verb in SUBCOMMANDS:
        assert verb in script


@pytest.mark.parametrize(
    ("shell", "check"),
    [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])],
)
def test_other_shells_read_their_script(shell: str, check: list[str], tmp_path: Path) -> None:
    if shutil.which(check[0]) is None:
        pytest.fail(f"{check[0]} is not installed (scripts/setup --test installs it)")
    script = tmp_path / f"squish.{shell}"
    script.write_text(completion_script(shell))
    done = subprocess.run(
        [*check, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_fish_completes_verbs(tmp_path: Path) -> None:
    if shutil.which("fish") is None:
        pytest.fail("fish is not installed (scripts/setup --test installs it)")
    script = tmp_path / "squish.fish"
    script.write_text(completion_script("fish"))
    program = f"source {script}; complete -C 'squish p'; complete -C 'squish layer '"
    done = subprocess.run(
        ["fish", "--no-config", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    offered = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert offered == ["ps", "gc", "import", "ls", "pull", "rm"]


def test_completion_json() -> None:
    done = subprocess.run(
        [*SQUISH, "completion", "--json", "fish"], capture_output=True, text=True, check=True
    )
    answer = json.loads(done.stdout)
    assert answer["shell"] == "fish" and "complete -c squish" in answer["script"]


def test_completion_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "csh"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# -- the manual page ---------------------------------------------------------------


@pytest.fixture(scope="module")
def manpage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("man") / "squish.1"
    subprocess.run(
        [sys.executable, "-m", "squish.manpage", "-o", str(page)],
        check=True,
        timeout=30,
        env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"},
    )
    return page


def test_manpage_has_every_verb_and_the_examples(manpage: Path) -> None:
    text = manpage.read_text()
    assert text.startswith('.TH SQUISH "1" "2023\\-11\\-14" "squish ')
    for section in ("NAME", "SYNOPSIS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert f".SH {section}" in text
    for verb in SUBCOMMANDS:
        assert f"'squish {verb}'" in text
    assert "squish ps \\-a" in text


def test_manpage_renders_without_warnings(manpage: Path) -> None:
    if shutil.which("groff") is None:
        pytest.fail("groff is not installed (scripts/setup --test installs it)")
    groff = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(manpage)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (groff.returncode, groff.stderr) == (0, "")
    man = subprocess.run(
        ["man", "--warnings", "-l", str(manpage)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"MANWIDTH": "80", "MANPAGER": "cat", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert (man.returncode, man.stderr) == (0, "")
    assert "squish ps -a" in man.stdout
