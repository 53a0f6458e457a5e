"""Fan-out of events to every subscriber: exits, reconcile events.

Used by the runtimes (exit events) and the reconciler (events for the API).
Each ``subscribe()`` gets its own buffered stream that sees everything
published from then on. Publishing never blocks and never fails: a
subscriber that stopped reading loses events once its buffer is full, and
one that closed its end is dropped, so a stuck or departed reader can never
stall the daemon.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


class Broadcast(Generic[T]):
    def __init__(self, buffer: int = 1024) -> None:
        self._buffer = buffer
        self._subscribers: list[MemoryObjectSendStream[T]] = []

    def subscribe(self) -> MemoryObjectReceiveStream[T]:
        send, receive = anyio.create_memory_object_stream[T](max_buffer_size=self._buffer)
        self._subscribers.append(send)
        return receive

    def publish(self, item: T) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(item)
            except anyio.WouldBlock:
                pass
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                subscriber.close()
                self._subscribers.remove(subscriber)

    @property
    def listening(self) -> int:
        """Subscriptions whose reader has not closed its end."""
        return sum(1 for send in self._subscribers if send.statistics().open_receive_streams)

    def close(self) -> None:
        """End every subscription (their readers see the end of the stream)."""
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
