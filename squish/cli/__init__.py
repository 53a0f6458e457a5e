"""The ``squish`` command: its verbs, how it shows answers, and the API client.

- ``squish.cli.commands``: the verbs and their flags, exit codes.
- ``squish.cli.client``: the client of the daemon's API over its socket.
- ``squish.cli.output``: tables fitted to the terminal, ``--format``,
  summaries; ``squish.cli.layers``: ``squish layer ...``.
- ``squish.cli.timespec``: moments as users write them (``--since 10m``).
- ``squish.cli.completion``: shell completion, generated from the parser.

A client verb loads nothing of the daemon's server side, so that ``squish
ps`` starts fast and talks to the daemon only through the API.
"""
