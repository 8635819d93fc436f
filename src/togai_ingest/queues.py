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

import itertools
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
    ``attempts`` how many deliveries of it failed so far; ``crc``: the checksum a spool
    stored with it (``validation.checksum``; None in memory, or for a row stored without
    one), which tells whether the bytes read back are still those that were put."""

    key: int
    event: EncodedEvent
    attempts: int = 0
    crc: int | None = None


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
    """A bounded in-process queue (``max_size`` events waiting; leased ones do not count).

    ``put`` takes no lock when there is room: it appends to a ``deque`` (atomic under the GIL)
    and wakes a waiting ``take`` only once a batch is there. Several threads putting at once
    may overshoot ``max_size`` by at most their number (the check and the append are two
    steps); nothing is ever dropped. The taking side (``take``, ``ack``, ``release``, ``ids``,
    ``drain_all``) shares a lock that no ``put`` takes; a put waits on ``_room`` only when the
    queue is full.
    """

    durable = False

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()  # the taking side
        self._room = threading.Condition(threading.Lock())  # puts waiting for room
        self._wakeup = threading.Event()  # set for a waiting take
        self._ready: deque[Item] = deque()
        self._later: list[tuple[float, Item]] = []  # released with a delay
        self._leased: dict[int, Item] = {}
        self._keys = itertools.count()
        self._closed = False
        self._woken = False
        self._wanted = 0  # events a waiting take needs before it is worth waking (0: none)
        self._blocked = 0  # puts waiting for room

    def put(self, event: EncodedEvent, timeout: float | None) -> None:
        if self._closed:
            raise ClosedError(f"the sender is closed; event {event.id!r} was not queued")
        ready = self._ready
        if len(ready) >= self.max_size:
            self._wait_for_room(event, timeout)
        ready.append(Item(next(self._keys), event))
        wanted = self._wanted
        if wanted and len(ready) >= wanted:
            # Wake the taker only for a full batch: waking it on every put costs each
            # enqueue a thread switch (the taker's deadline covers a partial batch).
            self._wanted = 0
            self._wakeup.set()

    def _wait_for_room(self, event: EncodedEvent, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._room:
            self._blocked += 1
            try:
                while not self._closed and len(self._ready) >= self.max_size:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFullError(
                            f"the queue holds {self.max_size} events; event {event.id!r} was "
                            "not queued (raise max_queue_size, or flush more often)"
                        )
                    self._room.wait(0.25 if remaining is None else min(remaining, 0.25))
            finally:
                self._blocked -= 1
            if self._closed:
                raise ClosedError(f"the sender was closed; event {event.id!r} was not queued")

    def _made_room(self) -> None:
        if self._blocked:
            with self._room:
                self._room.notify_all()

    def _promote(self, now: float) -> None:
        """Call with ``_lock`` held."""
        if self._later:
            due = [item for when, item in self._later if when <= now]
            if due:
                self._later = [(w, i) for w, i in self._later if w > now]
                self._ready.extend(due)

    def take(self, max_items: int, wait: float) -> list[Item]:
        deadline = time.monotonic() + wait
        ready = self._ready
        while True:
            now = time.monotonic()
            with self._lock:
                self._promote(now)
                nxt = min((w for w, _ in self._later), default=deadline)
            if len(ready) >= max_items or now >= deadline or self._woken:
                break
            # Clear, then say how many are wanted, then look again: a put that appends after
            # the look sees ``_wanted`` and sets the event (no lost wake-up).
            self._wakeup.clear()
            self._wanted = max_items
            if len(ready) >= max_items or self._woken:
                break
            self._wakeup.wait(max(0.0, min(deadline, nxt) - now))
        self._wanted = 0
        self._woken = False
        with self._lock:
            taken: list[Item] = []
            for _ in range(min(max_items, len(ready))):
                item = ready.popleft()  # only takers pop, and they hold the lock
                self._leased[item.key] = item
                taken.append(item)
        if taken:
            self._made_room()
        return taken

    def ack(self, items: Sequence[Item], dead: Sequence[tuple[Item, str]] = ()) -> None:
        with self._lock:
            for item in [*items, *(i for i, _ in dead)]:
                self._leased.pop(item.key, None)

    def release(self, items: Sequence[Item], delay: float) -> None:
        with self._lock:
            when = time.monotonic() + delay
            for item in items:
                if self._leased.pop(item.key, None) is not None:
                    again = Item(item.key, item.event, item.attempts + 1)
                    self._later.append((when, again))
        self._wakeup.set()  # a waiting take looks at the new deadline

    def size(self) -> int:
        return len(self._ready) + len(self._later) + len(self._leased)

    def ids(self) -> list[str]:
        with self._lock:
            # list(deque) is one C call: no put can change the deque while it copies.
            items = [*self._leased.values(), *list(self._ready), *(i for _, i in self._later)]
        return [i.event.id for i in sorted(items, key=lambda i: i.key)]

    def drain_all(self) -> list[Item]:
        """Take every event not leased, whether due or not (for a close that gives up)."""
        with self._lock:
            ready = self._ready
            items = [ready.popleft() for _ in range(len(ready))]  # a put racing: it stays
            items += [i for _, i in self._later]
            self._later.clear()
        self._made_room()
        return sorted(items, key=lambda i: i.key)

    def leased(self) -> list[Item]:
        with self._lock:
            return sorted(self._leased.values(), key=lambda i: i.key)

    def wake(self) -> None:
        self._woken = True
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        with self._room:
            self._room.notify_all()
        self._wakeup.set()

    def shutdown(self) -> None:
        self.close()
