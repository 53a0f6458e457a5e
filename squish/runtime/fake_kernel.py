"""A recording fake of ``Kernel``, for tests of the runtime's start and stop logic.

Used by the tests (``tests/test_kernel.py``) in place of
``squish.runtime.kernel.LinuxKernel``: ``BwrapRuntime(kernel=RecordingKernel())``.
It records every call, in order, as a ``Call`` (name and arguments; a pidfd
is recorded as the pid it was opened for, which is what a test knows), and
answers from state the test sets:

- ``children``: the children ``children(pid)`` lists, per pid;
- ``processes``: what ``processes_of(uid)`` finds (those of that uid);
- ``groups``: the pids of each process group (a group nobody set holds only
  its leader, the pid that names it);
- ``takes_along``: the pids that exit when a pid does (a pid namespace's
  pid 1 takes every process in it; bwrap exits when its command does);
- ``failures``: an exception to raise, per method name, on every call of it;
- ``fatal``: the signals that end the process they reach (SIGKILL; a
  process without a handler for SIGTERM would be ended by it too, but
  the command of a container that ignores it is what stop's grace is for).

A process is alive until a fatal signal reaches it or the test calls
``end(pid)``; then it has exited (its pidfds become readable, as a real
pidfd does), and it is gone once reaped. The pidfds it hands out are real
fds (the read ends of pipes), so the runtime can wait on and close them as
it does the real ones; ``close()`` releases what the fake keeps of them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from squish.runtime.kernel import Process


@dataclass(frozen=True)
class Call:
    """One call into the fake: the method's name and its arguments."""

    name: str
    args: tuple[object, ...] = ()


@dataclass
class _Pidfd:
    pid: int
    write_end: int  # closed when the process exits: the read end turns readable


@dataclass
class RecordingKernel:
    """``Kernel`` with no kernel behind it: records calls, answers from set state."""

    children_of: dict[int, list[int]] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    groups: dict[int, set[int]] = field(default_factory=dict)
    takes_along: dict[int, list[int]] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    fatal: frozenset[signal.Signals] = frozenset({signal.SIGKILL})
    calls: list[Call] = field(default_factory=list)
    exited: set[int] = field(default_factory=set)
    reaped: set[int] = field(default_factory=set)
    _pidfds: dict[int, _Pidfd] = field(default_factory=dict)

    # -- for the test ----------------------------------------------------

    def calls_to(self, name: str) -> list[tuple[object, ...]]:
        """The arguments of every call to ``name``, in order."""
        return [call.args for call in self.calls if call.name == name]

    def end(self, pid: int) -> None:
        """``pid`` exits (by itself, or as a signal's effect), and what it takes along."""
        if pid in self.exited:
            return
        self.exited.add(pid)
        for pidfd in self._pidfds.values():
            if pidfd.pid == pid and pidfd.write_end >= 0:
                os.close(pidfd.write_end)
                pidfd.write_end = -1
        for other in self.takes_along.get(pid, []):
            self.end(other)

    def close(self) -> None:
        """Release the pipes behind the pidfds handed out (not the pidfds themselves)."""
        for pidfd in self._pidfds.values():
            if pidfd.write_end >= 0:
                os.close(pidfd.write_end)
                pidfd.write_end = -1

    # -- Kernel ----------------------------------------------------------

    def become_subreaper(self) -> None:
        self._record("become_subreaper")

    def owning_userns(self, ns_fd: int) -> int:
        self._record("owning_userns", ns_fd)
        return os.dup(ns_fd)  # an fd the caller may close, as it closes the real one

    def map_ids(self, pid: int, inside: tuple[int, int], outside: tuple[int, int]) -> None:
        self._record("map_ids", pid, inside, outside)

    def set_rlimit(self, pid: int, rlimit: int, soft: int, hard: int) -> None:
        self._record("set_rlimit", pid, rlimit, soft, hard)

    def children(self, pid: int) -> list[int]:
        self._record("children", pid)
        return [child for child in self.children_of.get(pid, []) if child not in self.reaped]

    def processes_of(self, uid: int) -> Iterator[Process]:
        self._record("processes_of", uid)
        return iter([process for process in self.processes if process.uid == uid])

    def pidfd_open(self, pid: int) -> int:
        self._record("pidfd_open", pid)
        if pid in self.reaped:
            raise ProcessLookupError(f"no process {pid}")
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        # A pidfd may outlive the record of an older one with the same number.
        old = self._pidfds.pop(read_end, None)
        if old is not None and old.write_end >= 0:
            os.close(old.write_end)
        self._pidfds[read_end] = _Pidfd(pid, write_end)
        if pid in self.exited:  # a zombie's pidfd is readable at once
            os.close(write_end)
            self._pidfds[read_end].write_end = -1
        return read_end

    def signal_pidfd(self, pidfd: int, sig: signal.Signals) -> None:
        pid = self._pidfds[pidfd].pid
        self._record("signal_pidfd", pid, sig)
        self._deliver(pid, sig)

    def kill(self, pid: int, sig: signal.Signals) -> None:
        self._record("kill", pid, sig)
        self._deliver(pid, sig)

    def kill_group(self, pgid: int, sig: signal.Signals) -> None:
        self._record("kill_group", pgid, sig)
        alive = [pid for pid in sorted(self._group(pgid)) if pid not in self.exited]
        if not alive:
            raise ProcessLookupError(f"no process in group {pgid}")
        for pid in alive:
            self._deliver(pid, sig)

    def reap_pidfd(self, pidfd: int) -> None:
        pid = self._pidfds[pidfd].pid
        self._record("reap_pidfd", pid)
        if pid in self.reaped:
            raise ChildProcessError(f"{pid} is no child (any more)")
        if pid in self.exited:
            self.reaped.add(pid)

    def reap_group(self, pgid: int) -> int:
        self._record("reap_group", pgid)
        left = sorted(self._group(pgid) - self.reaped)
        if not left:
            raise ChildProcessError(f"no child in group {pgid}")
        for pid in left:
            if pid in self.exited:
                self.reaped.add(pid)
                return pid
        return 0

    # -- inside ----------------------------------------------------------

    def _record(self, name: str, *args: object) -> None:
        self.calls.append(Call(name, args))
        failure = self.failures.get(name)
        if failure is not None:
            raise failure

    def _group(self, pgid: int) -> set[int]:
        return self.groups.get(pgid, {pgid})

    def _deliver(self, pid: int, sig: signal.Signals) -> None:
        if pid in self.exited:
            raise ProcessLookupError(f"process {pid} has exited")
        if sig in self.fatal:
            self.end(pid)
