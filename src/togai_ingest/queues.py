"""The background sender's queue: a protocol, and the in-memory implementation.

The worker (``sender._Worker``) drives any ``EventQueue``: ``take`` a batch (the events are
leased: nobody else gets them), deliver it, then ``ack`` the events that reached a final
outcome and ``release`` the others (back in the queue, not before ``delay`` seconds). The
application side only calls ``put``. Two implementations: ``MemoryQueue`` (here) and
``spool.SpoolQueue`` (SQLite on disk, survives the process).

Every event is stored as an ``EncodedEvent``: its id and its JSON bytes, taken when ``put``
was called, so nothing the caller does to its object afterwards changes what is sent.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ClosedError, QueueFullError
from .validation import EncodedEvent

__all__ = ["EventQueue", "Item", "MemoryQueue"]


# --- The protocol.


@dataclass(frozen=True, slots=True)
class Item:
    """One queued event: ``key`` is the queue's handle for it (a sequence number, a rowid);
    ``attempts`` how many deliveries of it failed so far."""

    key: int
    event: EncodedEvent
    attempts: int = 0


class EventQueue(Protocol):
    """What the worker and the application side need from a queue."""

    durable: bool
    """True when a failed event can stay queued safely (it survives the process)."""

    def put(self, event: EncodedEvent, timeout: float | None) -> None:
        """Queue ``event``; on a full queue wait up to ``timeout`` (None: forever, 0: not at
        all), then raise ``QueueFullError``. Raises ``ClosedError`` once closed."""

    def take(self, max_items: int, wait: float) -> list[Item]:
        """Lease up to ``max_items`` events that are due; wait up to ``wait`` seconds for
        ``max_items`` of them (returns early when ``wake`` is called). May return []."""

    def ack(self, items: Sequence[Item], dead: Sequence[tuple[Item, str]] = ()) -> None:
        """The events reached a final outcome: remove them (``dead``: rejected, with why)."""

    def release(self, items: Sequence[Item], delay: float) -> None:
        """Give leased events back; they are due again ``delay`` seconds from now."""

    def size(self) -> int:
        """Events held (queued or leased), as far as this process knows."""

    def ids(self) -> list[str]:
        """Ids of every event held (queued or leased), oldest first."""

    def wake(self) -> None:
        """End a ``take`` that is waiting (a flush or close wants what is there now)."""

    def close(self) -> None:
        """Refuse further ``put``s (blocked ones raise ``ClosedError``); ``take``,
        ``ack`` and ``release`` go on working until ``shutdown``."""

    def shutdown(self) -> None:
        """Release what is leased, free resources. Whatever is held stays (spool) or is lost
        with the object (memory: take ``ids``/``drain_all`` first)."""

    def reset_after_fork(self) -> None:
        """In a forked child: new locks, no thread state, nothing inherited that is shared."""


# --- In memory.


class MemoryQueue:
    """A bounded in-process queue (``max_size`` events waiting; leased ones do not count)."""

    durable = False

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._ready: deque[Item] = deque()
        self._later: list[tuple[float, Item]] = []  # released with a delay
        self._leased: dict[int, Item] = {}
        self._next_key = 0
        self._closed = False
        self._woken = False
        self._wanted = 1  # events a waiting take needs before it is worth waking

    def put(self, event: EncodedEvent, timeout: float | None) -> None:
        with self._cond:
            if self._closed:
                raise ClosedError(f"the sender is closed; event {event.id!r} was not queued")
            if len(self._ready) >= self.max_size:
                ok = timeout != 0 and self._cond.wait_for(
                    lambda: self._closed or len(self._ready) < self.max_size, timeout
                )
                if self._closed:
                    raise ClosedError(f"the sender was closed; event {event.id!r} was not queued")
                if not ok:
                    raise QueueFullError(
                        f"the queue holds {self.max_size} events; event {event.id!r} was not "
                        "queued (raise max_queue_size, or flush more often)"
                    )
            self._ready.append(Item(self._next_key, event))
            self._next_key += 1
            if len(self._ready) >= self._wanted:
                # Wake the taker only for a full batch: waking it on every put costs each
                # enqueue a thread switch (the taker's deadline covers a partial batch).
                self._cond.notify_all()

    def _promote(self, now: float) -> None:
        if self._later:
            due = [item for when, item in self._later if when <= now]
            if due:
                self._later = [(w, i) for w, i in self._later if w > now]
                self._ready.extend(due)

    def take(self, max_items: int, wait: float) -> list[Item]:
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                now = time.monotonic()
                self._promote(now)
                if len(self._ready) >= max_items or now >= deadline or self._woken:
                    break
                nxt = min((w for w, _ in self._later), default=deadline)
                self._wanted = max_items
                self._cond.wait(max(0.0, min(deadline, nxt) - now))
            self._wanted = 1
            self._woken = False
            taken = [self._ready.popleft() for _ in range(min(max_items, len(self._ready)))]
            for item in taken:
                self._leased[item.key] = item
            if taken:
                self._cond.notify_all()  # room for a blocked put
            return taken

    def ack(self, items: Sequence[Item], dead: Sequence[tuple[Item, str]] = ()) -> None:
        with self._cond:
            for item in [*items, *(i for i, _ in dead)]:
                self._leased.pop(item.key, None)

    def release(self, items: Sequence[Item], delay: float) -> None:
        with self._cond:
            when = time.monotonic() + delay
            for item in items:
                if self._leased.pop(item.key, None) is not None:
                    again = Item(item.key, item.event, item.attempts + 1)
                    self._later.append((when, again))
            self._cond.notify_all()

    def size(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._later) + len(self._leased)

    def ids(self) -> list[str]:
        with self._cond:
            items = [*self._leased.values(), *self._ready, *(i for _, i in self._later)]
        return [i.event.id for i in sorted(items, key=lambda i: i.key)]

    def drain_all(self) -> list[Item]:
        """Take every event not leased, whether due or not (for a close that gives up)."""
        with self._cond:
            items = [*self._ready, *(i for _, i in self._later)]
            self._ready.clear()
            self._later.clear()
            self._cond.notify_all()
        return sorted(items, key=lambda i: i.key)

    def leased(self) -> list[Item]:
        with self._cond:
            return sorted(self._leased.values(), key=lambda i: i.key)

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def shutdown(self) -> None:
        self.close()
