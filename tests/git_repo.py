"""Real git repositories for tests: a bare remote and a work tree that pushes to it.

The fixtures (``git_env``, ``remote``) are in ``conftest.py``; these are the
helpers they and the tests use.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


@dataclass
class Remote:
    """A bare repository and a work tree whose commits are pushed to it."""

    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def write(self, path: str, text: str | bytes, *, executable: bool = False) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, str):
            text = text.encode()
        target.write_bytes(text)
        target.chmod(0o755 if executable else 0o644)

    def symlink(self, path: str, to: str) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(to)

    def remove(self, path: str) -> None:
        git(self.work, "rm", "-r", "-q", path)

    def push(self, message: str = "change", *, add: bool = True) -> str:
        if add:
            git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "--force", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")
