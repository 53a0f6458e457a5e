"""The import contracts of pyproject.toml (``lint-imports``) hold, and they bite.

scripts/test runs ``lint-imports`` on the tree; here the same contracts are
checked on a copy of the package with one forbidden import added to each
part that must not have it: each copy must break the contract that names it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["lint-imports", "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_the_tree_keeps_every_contract() -> None:
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", done.stdout), done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("squish/model/placement.py", "import socket", "The model and the planner are pure"),
        ("squish/reconcile/plan.py", "import anyio", "The model and the planner are pure"),
        ("squish/cli/output.py", "import squish.daemon.metrics", "The CLI loads nothing"),
        ("squish/layers/cache.py", "import squish.runtime", "The parts, from the top down"),
        ("squish/runtime/kernel.py", "import squish.sources", "The parts, from the top down"),
        (
            "squish/sources/git/source.py",
            "import squish.daemon.metrics",
            "The parts, from the top down",
        ),
        ("squish/runtime/slirp.py", "import squish.daemon", "The parts, from the top down"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    shutil.copytree(REPO / "squish", tmp_path / "squish")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")

    done = lint(tmp_path)

    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts")[-1]
    assert contract in broken, done.stdout
