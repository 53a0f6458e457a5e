"""The git source: squishfiles from one branch of a git repository (GitOps sync).

The package: ``source`` (``GitSource``, the sync), ``revision`` (one commit
read from the clone), ``process`` (running git safely); the layers it
exports are ``squish.layers.git_tree``'s.

The daemon owns a ``GitSource`` per configured repository and hands it to the
reconciler like any ``Source``; the API and the CLI read ``status()`` and call
``request_sync()`` for ``squish sync``. Every ``*.toml`` directly under
``path`` in the repository is a container, named and filtered like the
directory source's files (``is_manifest``).

How a sync goes, in a worker thread:

1. ``git fetch --depth=1`` of ``ref`` into a bare clone in ``work_dir``
   (``refs/squish/fetched``). Nothing is checked out, ever.
2. If the fetched commit is not the one applied, the whole snapshot for it is
   built from git objects (``git ls-tree``, ``git cat-file``): each squishfile
   is read and parsed by the one parser (``squish.model.squishfile``, its
   path layers looked up in the revision's tree), and each path layer of a
   valid one is exported into the content-addressed ``LayerCache`` by
   ``squish.layers.git_tree``, which reads the clone through the revision.
   Only when all of that is done is the new snapshot swapped in, in one
   assignment, so the reconciler sees one commit or the next, never a
   mixture and never a half-written checkout. For
   the same reason old revisions need no cleanup: nothing mounts a checkout.
3. ``status()`` and the metrics record the outcome. A failed sync (remote
   gone, ref missing, a size limit exceeded) changes nothing: the previous
   snapshot stays, and the error is kept until a later sync succeeds.

Path layers point into the cache. A directory (a git tree) becomes the entry
keyed by its tree id, exported with ``git archive`` and unpacked by
``squish.layers.unpack`` (which refuses symlinks leading out of the layer); a
single file (a blob: a config file, a binary, an archive the layer store will
unpack) becomes an entry holding that one file, keyed by blob id, mode and
name. So an unchanged layer has the same host path in every revision (the
container's spec hash is unchanged, it keeps running) and a changed one a new
path (the container is replaced). ``git archive`` honours ``export-ignore``
attributes in the repository's ``.gitattributes``: such files are left out of
the layer, as they are from any archive of the repository.

The repository is untrusted input. Git runs with no hooks
(``core.hooksPath=/dev/null``), no ``ext::`` transport, no submodules, fsck
of everything fetched, no terminal prompts; credentials come from git's own
mechanisms (credential helpers, ssh keys). Squishfiles and layer paths that
are symlinks in the repository, or pass through one, are refused and never
read through; paths must stay inside the repository; gitlinks (submodules)
are refused. A ``user:password@`` in the URL is passed to git in its
environment (never in argv, never on disk) and redacted (``***``) in
everything squish shows: the status, errors, logs and git's own messages.
"""

from squish.sources import SourceStatus
from squish.sources.git.process import redact_url
from squish.sources.git.revision import MAX_SQUISHFILE
from squish.sources.git.source import (
    DEFAULT_INTERVAL,
    FETCH_OPTIONS,
    GitLimits,
    GitSource,
    Guard,
    SyncMetrics,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "FETCH_OPTIONS",
    "MAX_SQUISHFILE",
    "GitLimits",
    "GitSource",
    "Guard",
    "SourceStatus",
    "SyncMetrics",
    "redact_url",
]
