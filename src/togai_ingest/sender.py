"""``BackgroundSender``: ``enqueue(event)`` returns at once; a worker thread delivers.

Segment's analytics-python shape (client, consumer, request), with what it lacks for billing:
no event is dropped silently. A full queue blocks (with a timeout) or raises; ``flush`` and
``close`` drain the queue and report what could not be delivered; the sender drains at
interpreter exit; a forked child gets a fresh, working sender.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from .client import Client
from .errors import APIError, QueueFullError, TogaiError
from .request import PreparedBatch
from .results import BatchOutcome, FailedEvent, RejectedEvent
from .validation import EventLike, to_wire

__all__ = ["BackgroundSender", "DeliveryReport"]

log = logging.getLogger("togai_ingest")

_STOP = object()
WhenFull = Literal["block", "raise"]


@dataclass(slots=True)
class DeliveryReport:
    """What the sender could not deliver since the last report.

    ``undelivered`` are events never sent (``close`` timed out); ``in_flight`` counts events
    whose request was still running when ``flush``/``close`` gave up waiting.
    """

    accepted: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    undelivered: list[Any] = field(default_factory=list)
    in_flight: int = 0

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.failed or self.undelivered or self.in_flight)

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} rejected={len(self.rejected)} failed={len(self.failed)} "
            f"undelivered={len(self.undelivered)} in_flight={self.in_flight}"
        )


class BackgroundSender:
    """Buffers events and sends them in batches from a daemon thread.

    Batches go out when ``batch_size`` events are queued (default: the API's maxItems) or
    ``flush_interval`` seconds after the first event of a batch was queued. On a full queue
    ``when_full="block"`` waits up to ``block_timeout`` seconds, then raises
    ``QueueFullError``; ``when_full="raise"`` raises at once. ``on_rejected`` and
    ``on_failed`` are called from the worker thread with each batch's lists.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        max_queue_size: int = 10_000,
        batch_size: int | None = None,
        flush_interval: float = 1.0,
        when_full: WhenFull = "block",
        block_timeout: float | None = 5.0,
        on_rejected: Callable[[list[RejectedEvent]], None] | None = None,
        on_failed: Callable[[list[FailedEvent]], None] | None = None,
        exit_timeout: float = 10.0,
        **client_options: Any,
    ) -> None:
        if when_full not in ("block", "raise"):
            raise ValueError("when_full must be 'block' or 'raise'")
        self._owns_client = client is None
        self.client = client if client is not None else Client(**client_options)
        self.batch_size = self.client._batch_size(batch_size)
        self.max_queue_size = max_queue_size
        self.flush_interval = flush_interval
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.exit_timeout = exit_timeout
        self.on_rejected = on_rejected
        self.on_failed = on_failed
        self._closed = False
        self._start_fresh()
        _live_senders.add(self)

    def _start_fresh(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(self.max_queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # enqueued and not yet finished (accepted, rejected or failed)
        self._sequence = 0
        self._flushing = threading.Event()
        self._report = DeliveryReport()
        self._thread: threading.Thread | None = None

    # -- the application's side ------------------------------------------------------------

    def enqueue(self, event: EventLike) -> None:
        """Queue one event; raises ``ValidationError`` at once for an invalid event."""
        if self._closed:
            raise TogaiError("the sender is closed")
        wire = to_wire(event)
        with self._lock:
            self._pending += 1
            index = self._sequence
            self._sequence += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="togai-sender", daemon=True)
                self._thread.start()
        try:
            if self.when_full == "raise":
                self._queue.put_nowait((index, event, wire))
            else:
                self._queue.put((index, event, wire), timeout=self.block_timeout)
        except queue.Full:
            self._finished(1)
            raise QueueFullError(
                f"the queue holds {self.max_queue_size} events; event {wire['id']!r} was not "
                "queued (raise max_queue_size, or flush more often)"
            ) from None

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Send everything queued now; wait up to ``timeout`` seconds. Returns and resets the
        report of what was not delivered since the last report."""
        self._flushing.set()
        try:
            self._wait_idle(timeout)
        finally:
            self._flushing.clear()
        return self._take_report()

    def close(self, timeout: float | None = None) -> DeliveryReport:
        """Stop accepting events, deliver what is queued (up to ``timeout`` seconds), stop."""
        if self._closed:
            return self._take_report()
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        thread = self._thread
        if thread is not None:
            self._flushing.set()
            # If the worker is stuck, what is left is reported as undelivered.
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        report = self._take_report()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                report.undelivered.append(item[1])
        with self._lock:
            self._pending -= len(report.undelivered)
            report.in_flight = self._pending
        if self._owns_client and (thread is None or not thread.is_alive()):
            self.client.close()
        return report

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_and_log("BackgroundSender closed")

    def _close_and_log(self, when: str) -> None:
        """Close; log at ERROR what no callback was told about (nobody reads this report)."""
        report = self.close(self.exit_timeout)
        untold = list(report.undelivered)
        untold += [] if self.on_rejected else [r.event for r in report.rejected]
        untold += [] if self.on_failed else [f.event for f in report.failed]
        if untold or report.in_flight:
            ids = [_id_of(e) for e in untold]
            log.error("%s with events not delivered: %s; their ids: %s", when, report, ids)

    def __repr__(self) -> str:
        return (
            f"BackgroundSender(pending={self._pending}, batch_size={self.batch_size}, "
            f"flush_interval={self.flush_interval}, when_full={self.when_full!r})"
        )

    # -- the worker's side -----------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = time.monotonic() + self.flush_interval
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._flushing.is_set() and self._queue.empty()):
                    break
                try:
                    item = self._queue.get(timeout=min(remaining, 0.05))
                except queue.Empty:
                    continue
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._deliver(batch)

    def _deliver(self, items: list[tuple[int, Any, dict[str, Any]]]) -> None:
        batch = PreparedBatch(
            items[0][0],
            len(items),
            [i for i, _, _ in items],
            [e for _, e, _ in items],
            [w for _, _, w in items],
        )
        try:
            outcome = self.client.send_prepared(batch)
        except Exception as exc:  # a bug must not lose the batch silently
            log.exception("BackgroundSender could not deliver a batch")
            outcome = batch.outcome()
            batch.fail(outcome, APIError(f"internal error: {exc!r}"))
        self._record(outcome)
        self._finished(len(items))

    def _record(self, outcome: BatchOutcome) -> None:
        with self._lock:
            self._report.accepted += outcome.accepted
            self._report.rejected.extend(outcome.rejected)
            self._report.failed.extend(outcome.failed)
        callbacks: list[tuple[Callable[[Any], None] | None, list[Any]]] = [
            (self.on_rejected, outcome.rejected),
            (self.on_failed, outcome.failed),
        ]
        for callback, events in callbacks:
            if callback is not None and events:
                try:
                    callback(list(events))
                except Exception:
                    log.exception("BackgroundSender callback raised")

    def _finished(self, count: int) -> None:
        with self._idle:
            self._pending -= count
            if self._pending <= 0:
                self._idle.notify_all()

    def _wait_idle(self, timeout: float | None) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._pending <= 0, timeout)

    def _take_report(self) -> DeliveryReport:
        with self._lock:
            report, self._report = self._report, DeliveryReport()
            report.in_flight = max(0, self._pending)
        return report

    def _after_fork_in_child(self) -> None:
        # The parent sends what it queued; the child starts empty with its own thread.
        self._start_fresh()


_live_senders: weakref.WeakSet[BackgroundSender] = weakref.WeakSet()


def _close_at_exit() -> None:
    for sender in list(_live_senders):
        if not sender._closed:
            sender._close_and_log("at interpreter exit, BackgroundSender closed")


def _id_of(event: Any) -> Any:
    return event.get("id") if isinstance(event, dict) else getattr(event, "id", None)


def _after_fork_in_child() -> None:
    for sender in list(_live_senders):
        sender._after_fork_in_child()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
