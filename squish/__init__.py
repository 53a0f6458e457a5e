"""squish: a rootless-only container runtime shaped as a declarative reconciler.

The packages follow the parts of the design, from the bottom up:

- ``model``: the squishfile (schema, validation, placement); pure.
- ``layers``: every layer resolved to a host path (local paths, the
  content-addressed cache, the built-in base, downloads).
- ``runtime``: containers as bwrap sandboxes with slirp4netns networking,
  behind the ``Runtime`` protocol (and its in-memory fake).
- ``sources``: where desired state comes from (a directory, a git
  repository).
- ``reconcile``: the pure planner and the loop that applies it.
- ``daemon``: the process, its API, its control plane and metrics.
- ``cli``: the ``squish`` command and the API's client.

Beside them: ``errors`` (the one exception tree), ``paths`` (where things are
kept), ``broadcast`` (fan-out of events), ``api_schema`` (the API's shapes,
shared by the daemon and the CLI). What may import what is written as
import-linter contracts in ``pyproject.toml`` and checked by the tests.
"""

__version__ = "0.1.0"
