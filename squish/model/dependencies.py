"""Start order across squishfiles: the ``[depends_on]`` graph and its cycles.

One squishfile's ``[depends_on]`` is checked with the file
(``squish.model.squishfile``); a cycle needs several, so it is found here,
over a set of them: by ``squish validate`` on the files it is given, and by
the reconciler on every manifest of the node, which reports it on each
squishfile of the cycle as that file's error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping

from squish.errors import ManifestError


def find_cycles(graph: Mapping[str, Collection[str]]) -> dict[str, tuple[str, ...]]:
    """Each name on a cycle of ``graph`` (name -> names it depends on), with a cycle.

    The cycle is a shortest one through the first name of it (in sorted
    order) not already on an earlier one, written from that name back to
    it: ``("web", "db", "web")``; every name on it gets it, turned to start
    there. Names that ``graph`` does not have (a
    dependency with no squishfile) end no cycle.
    """
    found: dict[str, tuple[str, ...]] = {}
    for component in _strong_components(graph):
        if len(component) == 1:
            (only,) = component
            if only in graph.get(only, ()):
                found[only] = (only, only)
            continue
        # One cycle serves each name on it (turned to start there); a name
        # off it gets its own. A long ring costs one search, not one a name.
        for name in sorted(component):
            if name not in found:
                cycle = _shortest_cycle(graph, name, component)
                for at, member in enumerate(cycle[:-1]):
                    found.setdefault(member, (*cycle[at:-1], *cycle[:at], member))
    return found


def cycle_error(file: str, cycle: tuple[str, ...]) -> ManifestError:
    """The error of the squishfile ``file`` of ``cycle[0]``, on that cycle."""
    return ManifestError(
        file,
        f"dependency cycle: {' -> '.join(cycle)}; none of them can start",
        field=f"depends_on.{cycle[1]}",
    )


def _strong_components(graph: Mapping[str, Collection[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively (chains may be long)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    work: list[tuple[str, list[str]]] = []  # the depth-first path, each with deps left

    def enter(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        work.append((name, [dep for dep in graph.get(name, ()) if dep in graph]))

    for root in graph:
        if root in index:
            continue
        enter(root)
        while work:
            name, deps = work[-1]
            if deps:
                dep = deps.pop()
                if dep not in index:
                    enter(dep)
                elif dep in on_stack:
                    low[name] = min(low[name], index[dep])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[name])
            if low[name] == index[name]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == name:
                        break
                components.append(component)
    return components


def _shortest_cycle(
    graph: Mapping[str, Collection[str]], start: str, within: set[str]
) -> tuple[str, ...]:
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        name = queue.popleft()
        for dep in sorted(graph.get(name, ())):
            if dep not in within:
                continue
            if dep == start:
                path = [name]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return (start, *reversed(path[:-1]), start)
            if dep not in came_from:
                came_from[dep] = name
                queue.append(dep)
    raise AssertionError(f"{start} is in a strong component but on no cycle")  # pragma: no cover
