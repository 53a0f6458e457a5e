"""Several sources as one: the union of their snapshots and of their changes.

The daemon uses it when desired state comes from more than one place (its
directory of squishfiles and a git repository, or two repositories) and gives
it to the reconciler as its one ``Source``.

A container name belongs to one source. When two define it, the name gets an
error manifest naming both files instead of either definition: the container
keeps running as it was (an invalid manifest never stops one) and cannot
flap between two specs as the sources change in turn. Removing one of the
two definitions resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from squish.errors import ManifestError
from squish.model.manifest import Manifest
from squish.sources import Changed, Source


class MultiSource:
    """The union of ``sources``; earlier sources name a conflict first."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)
        # The last union and the snapshots it was made of: the same ones
        # again (nothing changed) give the same union, at no cost.
        self._parts: tuple[Mapping[str, Manifest], ...] = ()
        self._union: Mapping[str, Manifest] = {}

    def snapshot(self, *, rescan: bool = True) -> Mapping[str, Manifest]:
        if len(self.sources) == 1:
            return self.sources[0].snapshot(rescan=rescan)  # the union of one: itself
        parts = tuple(source.snapshot(rescan=rescan) for source in self.sources)
        if len(parts) == len(self._parts) and all(
            part is last for part, last in zip(parts, self._parts, strict=True)
        ):
            return self._union
        found: dict[str, list[Manifest]] = {}
        for part in parts:
            for name, manifest in part.items():
                found.setdefault(name, []).append(manifest)
        self._parts = parts
        self._union = {
            name: manifests[0] if len(manifests) == 1 else _conflict(name, manifests)
            for name, manifests in found.items()
        }
        return self._union

    async def run(
        self, changed: Changed, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Run every source, each calling ``changed(names)``; return once all have returned.

        Started once every source has started.
        """
        async with anyio.create_task_group() as tg:
            for source in self.sources:
                await tg.start(source.run, changed)
            task_status.started()


def _conflict(name: str, manifests: list[Manifest]) -> Manifest:
    first, others = manifests[0], [m.file for m in manifests[1:]]
    error = ManifestError(
        first.file,
        f"container {name!r} is also defined in {' and '.join(others)}; a container may be "
        "defined in one source only: rename or remove one of the files",
    )
    return Manifest(name, first.file, None, error)
