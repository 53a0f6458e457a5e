"""The squishfile model: what a user writes, read and checked, and nothing else.

- ``squish.model.squishfile``: the squishfile's schema, its validation (every
  error with its file, field and line), layer paths resolved, the spec hash
  that says whether a change replaces a container or updates it in place.
- ``squish.model.placement``: nodes, labels and ``[placement]`` (which node
  of a fleet runs which container).
- ``squish.model.toml_lines``: where a field is written in a TOML document,
  for the line numbers of errors.

Pure: no process, socket, thread or event loop is started here, and the
sources, the reconciler and the CLI all read squishfiles through it.
"""
