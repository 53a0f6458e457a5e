"""The squishfile model: what a user writes, read and checked, and nothing else.

- ``squish.model.squishfile``: the squishfile's schema, its validation (every
  error with its file, field and line), the spec hash that says whether a
  change replaces a container or updates it in place. Where a path layer
  leads is asked of a lookup the caller passes (one parser for every source).
- ``squish.model.host``: that lookup on this host's disk, and reading a file.
- ``squish.model.manifest``: a squishfile as a source sees it.
- ``squish.model.placement``: nodes, labels and ``[placement]`` (which node
  of a fleet runs which container).
- ``squish.model.toml_lines``: where a field is written in a TOML document,
  for the line numbers of errors.

Pure but for ``host``: no process, socket, thread or event loop is started
here, and the sources, the reconciler and the CLI all read squishfiles
through it.
"""
