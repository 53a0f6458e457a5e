"""The layer store: every layer of a squishfile resolved to a host path.

The daemon and the CLI call ``LayerStore.resolve(base, layers)`` with a
squishfile's layers and pass the resulting ``ResolvedLayers`` (a rootfs
directory and ``Mount``\\ s) to the runtime, which imports ``Mount`` from here.
This package never imports the manifest: layers come in as anything shaped
like ``LayerRef``.

Inside, one ``Resolver`` per ``LayerKind`` does the work (``path``: local files
and directories; ``archive``: archives unpacked by ``unpack``; ``busybox``: the
built-in base; ``alpine``: Alpine minirootfs downloads), directories the store builds
live in the content-addressed ``LayerCache`` (``cache``), and ``model`` holds
the pure types. Only the names below are public.
"""

from squish.layers.alpine import AlpineRelease, AlpineResolver
from squish.layers.archive import ArchiveResolver
from squish.layers.cache import LayerCache
from squish.layers.model import BUILTIN_BASE, LayerKind, LayerRef, Mount, ResolvedLayers
from squish.layers.resolver import RecordingResolver, Resolver
from squish.layers.store import LayerStore
from squish.layers.unpack import Limits

__all__ = [
    "BUILTIN_BASE",
    "AlpineRelease",
    "AlpineResolver",
    "ArchiveResolver",
    "LayerCache",
    "LayerKind",
    "LayerRef",
    "LayerStore",
    "Limits",
    "Mount",
    "RecordingResolver",
    "ResolvedLayers",
    "Resolver",
]
