"""squish: a rootless-only container runtime shaped as a declarative reconciler.

The package is layered (see ``.importlinter``-style notes in README):
``manifest`` (pure model) and ``layers`` (host paths) feed ``runtime``
(bwrap + slirp4netns, or the in-memory fake); the CLI sits on top.
"""

__version__ = "0.1.0"
