"""What the ``squish`` command imports before it knows which verb it runs.

Every ``squish ps`` or ``squish --version`` is a fresh interpreter, so each
module imported at start-up is paid on every call. The daemon's machinery
(starlette, uvicorn, inotify_simple, prometheus_client, the bwrap runtime), the
manifest model (pydantic) and rich's console are imported only by the verbs
that use them. Nor does a client verb load what it does not use of the
standard library: the client speaks HTTP over a socket itself, rather than
through http.client (email, ssl, calendar), the API's shapes are types only
(no typing_extensions), and no dataclass is made on the way (dataclasses
imports inspect, ast and dis). Each case runs in a fresh interpreter and
reads ``sys.modules`` there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Never imported by `import squish.main`, nor by parsing a client verb's arguments.
HEAVY = (
    "httpx",  # the daemon downloads with it; the client speaks HTTP over a socket itself
    "starlette",
    "uvicorn",
    "inotify_simple",
    "prometheus_client",
    "pydantic",
    "anyio",
    "rich.console",
    "click",
    "squish.daemon",
    "squish.daemon.main",
    "squish.daemon.api",
    "squish.reconcile",
    "squish.model.squishfile",
    "squish.layers",
    "squish.runtime",
    "squish.runtime.bwrap_runtime",
)

# Never imported by `import squish.main`, `squish --version` or `squish ps`
# (together, about 25 ms of each call before they were left out).
STARTUP = (
    *HEAVY,
    "http.client",
    "email",
    "ssl",
    "urllib.request",
    "h11",
    "dataclasses",
    "inspect",
    "squish.api_schema",
    "typing_extensions",
    "squish.cli.layers",
    "squish.cli.timespec",
    "rich",
    "datetime",
    "threading",
)


def loaded_after(code: str) -> set[str]:
    """The modules of a fresh interpreter after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import squish.main",
        "import squish.cli.client, squish.errors, squish.paths",
        "from squish.main import build_parser; build_parser().parse_args(['ps', '-a'])",
        "from squish.main import build_parser; build_parser().parse_args(['stop', 'x'])",
        # The whole of `ps` but the table: no daemon answers there.
        "from squish.main import main; assert main(['--socket', '/nonexistent', 'ps']) == 3",
    ],
)
def test_a_client_verb_starts_with_little(code: str) -> None:
    assert sorted(loaded_after(code) & set(STARTUP)) == []


@pytest.mark.parametrize(
    "code",
    [
        "import squish.main",
        "import squish.cli.client, squish.errors, squish.paths",
        # Parsing runs each verb's own argument setup; the verb itself does not run.
        "from squish.main import build_parser; build_parser().parse_args(['ps', '-a'])",
        "from squish.main import build_parser; build_parser().parse_args(['layer', 'ls'])",
        "from squish.main import build_parser; build_parser().parse_args(['stop', 'x'])",
    ],
)
def test_nothing_heavy_is_imported(code: str) -> None:
    assert sorted(loaded_after(code) & set(HEAVY)) == []


def test_version_imports_nothing_heavy() -> None:
    code = "from squish.main import main\nassert main(['--version']) == 0"
    assert sorted(loaded_after(code) & set(STARTUP)) == []


def test_the_verbs_that_need_more_still_get_it() -> None:
    # The daemon's options are defined by squish.daemon.main: asking for them loads it.
    daemon = loaded_after(
        "from squish.main import build_parser; build_parser().parse_args(['daemon'])"
    )
    assert "squish.daemon.main" in daemon
    validate = loaded_after("from squish.main import main; main(['validate', '/nonexistent.toml'])")
    assert "squish.model.squishfile" in validate
    assert "squish.daemon.main" not in validate
    assert "squish.runtime.bwrap_runtime" not in validate
    layer = loaded_after(
        "from squish.main import build_parser; build_parser().parse_args(['layer', 'ls'])"
    )
    assert "squish.cli.layers" in layer
