"""The node's ``[depends_on]`` graph, kept up to date a round at a time.

Owned by the reconciler. Each round tells it the names whose manifests may
have changed; it keeps who depends on whom (so that a change of a
dependency plans its dependents in the same round) and the cycles, which
make every squishfile on them invalid (``view``), as a validation error
would: none of them starts, and what already runs keeps running.

Rounds of a few names cost a few names: the cycles are looked for again
only where an edge changed, among what is reachable from there and the
cycles known before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from squish.model.dependencies import cycle_error, find_cycles
from squish.model.manifest import Manifest

Cycles = dict[str, tuple[str, ...]]


class DependencyGraph:
    def __init__(self) -> None:
        self._edges: dict[str, tuple[str, ...]] = {}
        self._dependents: dict[str, set[str]] = {}
        self.cycles: Cycles = {}
        """Each name on a cycle, with the cycle (from it back to it)."""
        self._view: tuple[
            Mapping[str, Manifest], dict[str, tuple[str, ...]], Mapping[str, Manifest]
        ]
        self._view = ({}, {}, {})

    def update(self, desired: Mapping[str, Manifest], names: Collection[str] | None) -> set[str]:
        """Take in the edges of ``names`` (None: every name) as ``desired`` has them.

        Returns the names whose cycle changed (they are on one now, no
        longer, or on another): their manifests' errors changed.
        """
        full = names is None
        if names is None:
            names = desired.keys() | self._edges.keys()
        changed = [name for name in names if self._set_edges(name, _edges_of(desired.get(name)))]
        if not changed:
            return set()
        before = self.cycles
        if full:
            self.cycles = find_cycles(self._edges)
        else:
            around = self._reachable([*changed, *before])
            kept = {name: cycle for name, cycle in before.items() if name not in around}
            self.cycles = kept | find_cycles({name: self._edges.get(name, ()) for name in around})
        return {
            name
            for name in before.keys() | self.cycles.keys()
            if before.get(name) != self.cycles.get(name)
        }

    def dependents(self, name: str) -> Collection[str]:
        """The names whose squishfiles depend on ``name``."""
        return self._dependents.get(name, ())

    def view(self, desired: Mapping[str, Manifest]) -> Mapping[str, Manifest]:
        """``desired``, each squishfile on a cycle made invalid by it (the same mapping if none)."""
        if not self.cycles:
            return desired
        seen, cycles, view = self._view
        if seen is desired and cycles == self.cycles:
            return view
        view = dict(desired)
        for name, cycle in self.cycles.items():
            if (manifest := desired.get(name)) is not None and manifest.squishfile is not None:
                view[name] = Manifest(
                    name,
                    manifest.file,
                    None,
                    error=cycle_error(manifest.file, cycle),
                    layer_key=manifest.layer_key,
                )
        self._view = (desired, dict(self.cycles), view)
        return view

    def _set_edges(self, name: str, edges: tuple[str, ...]) -> bool:
        before = self._edges.get(name, ())
        if before == edges:
            return False
        for old in before:
            if (dependents := self._dependents.get(old)) is not None:
                dependents.discard(name)
                if not dependents:
                    del self._dependents[old]
        for new in edges:
            self._dependents.setdefault(new, set()).add(name)
        if edges:
            self._edges[name] = edges
        else:
            del self._edges[name]
        return True

    def _reachable(self, starts: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(starts)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self._edges.get(name, ()))
        return seen


def _edges_of(manifest: Manifest | None) -> tuple[str, ...]:
    if manifest is None or manifest.squishfile is None:
        return ()
    return tuple(dependency.name for dependency in manifest.squishfile.depends_on)
