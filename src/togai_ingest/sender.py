"""``BackgroundSender``: ``enqueue(event)`` returns at once; a worker thread delivers.

Segment's analytics-python shape (client, consumer, request), in three parts:

- the application side (``BackgroundSender``: ``enqueue``, ``flush``, ``close``) validates and
  encodes each event into an immutable snapshot and keeps the books: every event it queued
  ends in exactly one report (accepted, rejected, failed, undelivered, in flight, or still
  spooled), and ``flush``/``close`` name every unconfirmed event by id;
- the worker (``_Worker``) takes a batch from the queue, delivers it with
  ``Client.send_encoded`` and acknowledges or releases it;
- the queue (``queues.EventQueue``): ``MemoryQueue`` by default, ``spool.SpoolQueue`` with
  ``spool_path=``. The worker does not know which one it drives.

In memory, a batch that fails after its retries is reported failed (``on_failed``). In a spool
it stays spooled and is tried again with backoff: an outage loses nothing. A refused token
(401): in memory the batch is reported failed; in a spool the events stay spooled and the
worker waits at least a minute before trying again (an ERROR log says why), rather than
failing every batch one after the other.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from . import metrics
from .client import Client
from .errors import (
    APIError,
    ClosedError,
    ConfigurationError,
    QueueFullError,
    SpoolError,
    SpoolFullError,
    TogaiError,
    ValidationError,
)
from .queues import EventQueue, Item, MemoryQueue
from .results import BatchOutcome, FailedEvent, RejectedEvent
from .retry import is_fatal
from .spool import Durability, SpoolQueue
from .validation import EncodedEvent, EventLike, damage, damaged_view, encode_event

__all__ = [
    "BackgroundSender",
    "ClosedError",
    "DeliveryReport",
    "SpoolError",
    "SpoolFullError",
]

log = logging.getLogger("togai_ingest")

WhenFull = Literal["block", "raise"]
FATAL_PAUSE = 60.0
"""Seconds a spooling worker waits after the token was refused."""
SHARED_WAIT = 2.0
"""Seconds ``close`` waits for its events that another process sharing the spool took."""


@dataclass(slots=True)
class DeliveryReport:
    """What happened to this sender's events since the last report.

    ``accepted``: a count. ``rejected``/``failed``: final outcomes (the event is a wire-dict
    snapshot). ``undelivered``: events never sent (``close`` gave up; in memory only).
    ``in_flight``: events not confirmed when ``flush``/``close`` stopped waiting (queued or
    being sent). ``spooled``: ids of this sender's events still in the spool; a sender on the
    same spool or ``togai-ingest drain`` delivers them.
    """

    accepted: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    undelivered: list[Any] = field(default_factory=list)
    in_flight: list[Any] = field(default_factory=list)
    spooled: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.rejected or self.failed or self.undelivered or self.in_flight or self.spooled
        )

    def unconfirmed_ids(self) -> list[str]:
        """Ids of every event this report does not confirm as accepted."""
        events = [r.event for r in self.rejected] + [f.event for f in self.failed]
        events += self.in_flight + self.undelivered
        ids = [_id_of(e) for e in events]
        return ids + [i for i in self.spooled if i not in set(ids)]

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} rejected={len(self.rejected)} failed={len(self.failed)} "
            f"undelivered={len(self.undelivered)} in_flight={len(self.in_flight)} "
            f"spooled={len(self.spooled)}"
        )


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise ConfigurationError(message)


def _positive(value: float | None, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    _refuse(
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0,
        f"{name} must be a finite number of seconds >= 0, not {value!r}",
    )


class BackgroundSender:
    """Buffers events and sends them in batches from a daemon thread.

    ``spool_path``: keep the queue in a SQLite file that survives the process (see
    ``spool.SpoolQueue``; ``durability`` "process" or "power", ``max_spool_bytes``,
    ``dead_letter``); several processes may share one. Without it the queue is in memory,
    bounded by ``max_queue_size``. Batches go out when ``batch_size`` events are due (default:
    the API's maxItems) or within ``flush_interval`` seconds. When full, ``when_full="block"``
    waits up to ``block_timeout`` seconds, then raises ``QueueFullError``; ``"raise"`` raises at
    once. ``on_rejected`` and ``on_failed`` are called from the worker thread.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        spool_path: str | os.PathLike[str] | None = None,
        durability: Durability = "process",
        max_spool_bytes: int | None = 1 << 30,
        dead_letter: bool = False,
        queue: EventQueue | None = None,
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
        _refuse(when_full not in ("block", "raise"), "when_full must be 'block' or 'raise'")
        _refuse(
            not isinstance(max_queue_size, int) or max_queue_size < 1,
            f"max_queue_size must be a whole number >= 1, not {max_queue_size!r}",
        )
        _refuse(
            max_spool_bytes is not None
            and (not isinstance(max_spool_bytes, int) or max_spool_bytes < 1),
            f"max_spool_bytes must be a whole number >= 1 or None, not {max_spool_bytes!r}",
        )
        _positive(flush_interval, "flush_interval", allow_none=False)
        _positive(block_timeout, "block_timeout")
        _positive(exit_timeout, "exit_timeout", allow_none=False)
        self._owns_client = client is None
        self.client = client if client is not None else Client(**client_options)
        self.batch_size = self.client.check_batch_size(batch_size)
        self.max_queue_size = max_queue_size
        self.flush_interval = float(flush_interval)
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.exit_timeout = exit_timeout
        self.on_rejected = on_rejected
        self.on_failed = on_failed
        self.spool_path = None if spool_path is None else Path(spool_path)
        if queue is None and spool_path is not None:
            queue = SpoolQueue(
                spool_path,
                durability=durability,
                max_bytes=max_spool_bytes,
                dead_letter=dead_letter,
            )
        self._queue: EventQueue = queue if queue is not None else MemoryQueue(max_queue_size)
        observe = metrics.observe_spool_size if self._queue.durable else metrics.observe_queue_depth
        observe(self._queue.size)
        self._closed = False
        self._start_fresh()
        _live_senders.add(self)
        if self._queue.durable:  # deliver what an earlier process left in the spool, now
            with self._lock:
                self._ensure_worker()

    def _start_fresh(self) -> None:
        # The enqueue path takes no lock (4 threads enqueueing at once spent most of their
        # time waking each other up through contended locks): it uses only operations that
        # are atomic under the GIL (itertools.count, set.add/discard, deque.append, attribute
        # reads). Everything else (the books, the report, the worker) is under ``_lock``, which
        # the worker, flush and close take, never a successful enqueue.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seqs = itertools.count()  # enqueue numbers; flush and close take one as a mark
        # What enqueue tells the books: (seq, event) queued, (seq, None) not queued after
        # all. Applied under the lock (``_absorb``) before the books are read or settled: an
        # event is logged before it is put, so before the worker can take it.
        self._log: deque[tuple[int, EncodedEvent | None]] = deque()
        self._entering: set[int] = set()  # enqueues between the closed check and their end
        self._outstanding: dict[int, EncodedEvent] = {}  # enqueued, no final outcome yet
        self._by_id: dict[str, list[int]] = {}
        self._deferred: set[int] = set()  # failed, kept spooled for a later attempt
        self._flushing = 0
        self._report = DeliveryReport()
        self._worker: _Worker | None = None

    def _ensure_worker(self) -> None:
        """Call with the lock held."""
        if self._worker is None:
            self._worker = _Worker(self)
            self._worker.start()

    def _start_worker(self) -> None:
        with self._lock:
            self._ensure_worker()

    # -- the application's side ------------------------------------------------------------

    def enqueue(self, event: EventLike) -> None:
        """Queue a snapshot of ``event``. Raises ``ValidationError`` for an invalid event,
        ``QueueFullError`` when full, ``ClosedError`` after ``close``, ``SpoolError``
        (``SpoolFullError``) when the spool cannot be written. Once it returns the event
        will be reported (and, with a spool, it is on disk)."""
        try:
            encoded = encode_event(event)
        except TogaiError:
            raise
        except Exception as exc:  # the encoder must not let anything else out
            raise ValidationError("event", f"cannot be encoded: {exc!r}") from None
        seq = next(self._seqs)
        entering = self._entering
        entering.add(seq)  # before the closed check: close waits for it (see close)
        try:
            if self._closed:
                raise ClosedError(f"the sender is closed; event {encoded.id!r} not queued")
            if self._worker is None:
                self._start_worker()
            self._log.append((seq, encoded))
            try:
                self._queue.put(encoded, 0.0 if self.when_full == "raise" else self.block_timeout)
            except BaseException as exc:
                self._log.append((seq, None))
                if isinstance(exc, QueueFullError):
                    metrics.record_events("queue_full")
                if isinstance(exc, TogaiError) or not isinstance(exc, Exception):
                    raise
                raise SpoolError(f"event {encoded.id!r} was not queued: {exc!r}") from exc
        finally:
            entering.discard(seq)
            if self._closed:
                with self._lock:
                    self._changed.notify_all()  # close waits for the enqueues under way

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Send what is queued now and wait (up to ``timeout`` seconds) for the events enqueued
        before this call: not for an empty queue, so other threads may go on enqueueing.
        Returns and resets the report of what happened since the last report."""
        _positive(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        target = next(self._seqs)  # every enqueue that returned before this has a lower seq
        with self._lock:
            self._flushing += 1
        self._queue.wake()
        try:
            self._wait_settled(target, deadline)
        finally:
            with self._lock:
                self._flushing -= 1
        return self._take_report(target)

    def close(self, timeout: float | None = None) -> DeliveryReport:
        """Stop accepting events, deliver what is queued (up to ``timeout`` seconds), stop.
        The report names every event not confirmed: undelivered and in flight (in memory),
        or still spooled (safe on disk for the next sender or ``drain``)."""
        _positive(timeout, "timeout")
        with self._lock:
            already = self._closed
            self._closed = True
        # An enqueue that finds the sender open registered in ``_entering`` (after taking its
        # seq) before it looked: so it has a seq below ``target`` and close waits for it.
        target = next(self._seqs)
        if already:
            return self._take_report(target)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._queue.close()  # from here a put raises ClosedError or has been queued
        with self._lock:  # every enqueue under way has now either queued its event or raised
            while self._entering:  # a put's own wait is bounded (block_timeout, close)
                self._changed.wait(0.05)
            worker = self._worker
        if worker is not None:
            worker.stop()
            self._queue.wake()
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._queue.durable:
            # Events another process (a sender on the same spool, drain) took are its to
            # deliver: wait a little for them to leave the spool; what stays is reported.
            soon = time.monotonic() + SHARED_WAIT
            self._wait_settled(target, soon if deadline is None else min(deadline, soon))
        report = self._take_report(target, closing=True)
        if worker is None or not worker.abandon():
            self._queue.shutdown()
            if self._owns_client:
                self.client.close()
        return report

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_and_log("BackgroundSender closed")

    def _close_and_log(self, when: str) -> None:
        """Close; log what no callback was told about (nobody reads this report)."""
        try:
            report = self.close(self.exit_timeout)
        except Exception:  # at exit nothing may raise
            log.exception("%s: close failed", when)
            return
        untold = report.undelivered + report.in_flight
        untold += [] if self.on_rejected else [r.event for r in report.rejected]
        untold += [] if self.on_failed else [f.event for f in report.failed]
        if untold:
            ids = [_id_of(e) for e in untold]
            log.error("%s with events not delivered: %s; their ids: %s", when, report, ids)
        if report.spooled:  # safe on disk: a warning, with the ids (the first 1,000)
            shown = report.spooled[:1000]
            more = len(report.spooled) - len(shown)
            log.warning(
                "%s with %d events still in the spool %s (a sender on it or `togai-ingest "
                "drain` delivers them); their ids: %s%s",
                when,
                len(report.spooled),
                self.spool_path,
                shown,
                f" and {more} more" if more else "",
            )

    def __repr__(self) -> str:
        where = f"spool_path={str(self.spool_path)!r}, " if self.spool_path else ""
        return (
            f"BackgroundSender({where}pending={len(self._outstanding) + len(self._log)}, "
            f"batch_size={self.batch_size}, flush_interval={self.flush_interval}, "
            f"when_full={self.when_full!r})"
        )

    # -- the books -------------------------------------------------------------------------

    def _absorb(self) -> None:
        """Apply what enqueue logged to the books. Call with the lock held."""
        log, outstanding, by_id = self._log, self._outstanding, self._by_id
        for _ in range(len(log)):  # entries logged meanwhile wait for the next call
            seq, encoded = log.popleft()
            if encoded is None:
                self._forget(seq)
            else:
                outstanding[seq] = encoded
                by_id.setdefault(encoded.id, []).append(seq)

    def _forget(self, seq: int) -> None:
        """Call with the lock held."""
        encoded = self._outstanding.pop(seq, None)
        self._deferred.discard(seq)
        if encoded is None:
            return
        event_id = encoded.id
        seqs = self._by_id.get(event_id)
        if seqs is not None:
            if seq in seqs:
                seqs.remove(seq)
            if not seqs:
                del self._by_id[event_id]

    def _settle(self, event_ids: Sequence[str], deferred: bool = False) -> None:
        """These events reached a final outcome (or, ``deferred``, stay spooled after a
        failed attempt). Call with the lock held."""
        self._absorb()
        for event_id in event_ids:
            seqs = self._by_id.get(event_id)
            if not seqs:
                continue  # an event of another process, or of an earlier run
            if deferred:
                self._deferred.add(next((s for s in seqs if s not in self._deferred), seqs[0]))
            else:
                self._forget(seqs[0])

    def _record(self, outcome: BatchOutcome, accepted: int) -> None:
        with self._lock:
            self._report.accepted += accepted
            self._report.rejected.extend(outcome.rejected)
            self._report.failed.extend(outcome.failed)
        if self.on_rejected is not None and outcome.rejected:
            _call(self.on_rejected, list(outcome.rejected))
        if self.on_failed is not None and outcome.failed:
            _call(self.on_failed, list(outcome.failed))

    def _waiting_for(self, target: int) -> list[int]:
        """Call with the lock held."""
        self._absorb()
        return [s for s in self._outstanding if s < target and s not in self._deferred]

    def _wait_settled(self, target: int, deadline: float | None) -> None:
        while True:
            with self._lock:
                waiting = self._waiting_for(target)
                if not waiting:
                    return
                # With a spool, another process may have delivered some of them.
                shared = self._queue.durable
            if shared:
                held = set(self._queue.ids())
                with self._lock:
                    for s in waiting:
                        event = self._outstanding.get(s)
                        if event is not None and event.id not in held:
                            self._forget(s)
            with self._lock:
                if not self._waiting_for(target):
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._changed.wait(0.25 if remaining is None else min(remaining, 0.25))

    def _take_report(self, target: int, closing: bool = False) -> DeliveryReport:
        undelivered: list[Item] = []
        if closing and isinstance(self._queue, MemoryQueue):
            undelivered = self._queue.drain_all()
        with self._lock:
            self._absorb()
            report, self._report = self._report, DeliveryReport()
            for item in undelivered:
                self._settle([item.event.id])
                report.undelivered.append(item.event.wire())
            unsettled = [self._outstanding[s] for s in sorted(self._outstanding) if s < target]
            if self._queue.durable:
                report.spooled = [e.id for e in unsettled]
            else:
                report.in_flight = [e.wire() for e in unsettled]
            if closing and not self._queue.durable:
                for s in [s for s in self._outstanding if s < target]:
                    self._forget(s)
        return report

    def _reset_after_fork(self) -> None:
        # In memory the parent sends what it queued; with a spool the events are shared (and
        # leased: each is sent by one process). The child starts with its own thread.
        if not self._queue.durable:
            self._queue = MemoryQueue(self.max_queue_size)
        else:
            self._queue.reset_after_fork()
        self._start_fresh()


class _Worker(threading.Thread):
    """Takes a batch, delivers it, acknowledges (final outcome) or releases (try later)."""

    def __init__(self, sender: BackgroundSender) -> None:
        super().__init__(name="togai-sender", daemon=True)
        self.sender = sender
        self.queue = sender._queue
        self._stopping = threading.Event()
        self._pause_until = 0.0
        self._abandoned = False
        self._finished = False
        self._done_lock = threading.Lock()

    def stop(self) -> None:
        self._stopping.set()

    def abandon(self) -> bool:
        """``close`` gave up: stop after the batch in flight, then shut the queue down.
        False if the worker has already stopped."""
        with self._done_lock:
            self._abandoned = not self._finished
            return self._abandoned

    def run(self) -> None:
        try:
            self._loop()
        finally:
            with self._done_lock:
                abandoned, self._finished = self._abandoned, True
            if abandoned:
                self.queue.shutdown()

    def _loop(self) -> None:
        sender = self.sender
        while not self._abandoned:
            stopping = self._stopping.is_set()
            urgent = stopping or sender._flushing > 0
            pause = self._pause_until - time.monotonic()
            if pause > 0 and not stopping:
                self._stopping.wait(min(pause, 1.0))
                continue
            try:
                items = self.queue.take(sender.batch_size, 0.0 if urgent else sender.flush_interval)
            except Exception:
                log.exception("BackgroundSender could not take a batch")
                items = []
                time.sleep(0.5)
            if not items:
                if stopping:
                    return
                continue
            try:
                self._send(items)
            except Exception:  # a bug must not kill the worker; the events stay accounted
                log.exception("BackgroundSender could not handle a batch")
            with sender._lock:
                sender._changed.notify_all()

    @staticmethod
    def _settle_in_queue(step: Callable[[], None]) -> None:
        """Acknowledge or release; a spool that cannot be written (a full disk) only delays:
        the events come back when their lease expires, and their outcome is still reported."""
        try:
            step()
        except TogaiError as exc:
            log.error("BackgroundSender: %s; the batch will be taken again later", exc)

    def _set_aside_damaged(self, items: list[Item]) -> list[Item]:
        """Spooled rows whose bytes are not those that were put (a damaged file: a flipped
        bit, a page cut short; told by their checksum, or for older rows by validating them
        again) would bill the wrong thing, or fail their whole batch on every attempt: they
        leave the spool as rejected (``dead_letter`` keeps them), reported and logged. The
        rest go on."""
        damaged = [(i, e) for i in items if (e := damage(i.event, i.crc, "spooled event"))]
        if not damaged:
            return items
        reasons = [(item, f"damaged in the spool: {error}") for item, error in damaged]
        log.error(
            "%d spooled events are damaged (no valid events any more), set aside as rejected: %s",
            len(damaged),
            [(item.event.id, reason) for item, reason in reasons],
        )
        self._settle_in_queue(lambda: self.queue.ack([], reasons))
        outcome = BatchOutcome(-1, len(damaged))
        outcome.rejected = [RejectedEvent(-1, damaged_view(i.event), r) for i, r in reasons]
        with self.sender._lock:
            self.sender._settle([item.event.id for item, _ in damaged])
        self.sender._record(outcome, 0)
        bad = {item.key for item, _ in damaged}
        return [item for item in items if item.key not in bad]

    def _send(self, items: list[Item]) -> None:
        sender = self.sender
        if self.queue.durable:
            items = self._set_aside_damaged(items)
            if not items:
                return
        events = [item.event for item in items]
        try:
            outcome = self.sender.client.send_encoded(events)
        except Exception as exc:  # a bug must not lose the batch silently
            log.exception("BackgroundSender could not deliver a batch")
            outcome = BatchOutcome(0, len(items))
            internal = APIError(f"internal error: {exc!r}")
            outcome.failed = [FailedEvent(i, e.wire(), internal) for i, e in enumerate(events)]
        n = len(items)
        rejected = {r.index: r for r in outcome.rejected if 0 <= r.index < n}
        failed = {f.index: f for f in outcome.failed if 0 <= f.index < n}
        done = [items[i] for i in range(n) if i not in failed and i not in rejected]
        dead = [(items[i], r.message) for i, r in rejected.items()]
        retry = [items[i] for i in sorted(failed)]
        error = next(iter(failed.values())).error if failed else None
        fatal = error is not None and is_fatal(error)
        if fatal:
            log.error(
                "the API refused the token (%s): %d events %s",
                error,
                len(retry),
                "kept in the spool; trying again in a minute"
                if self.queue.durable
                else "reported failed",
            )
        self._settle_in_queue(lambda: self.queue.ack(done, dead))
        keep = self.queue.durable and retry
        if keep:
            attempts = max(item.attempts for item in retry)
            spool = self.queue
            delay = spool.backoff(attempts) if isinstance(spool, SpoolQueue) else 1.0
            if fatal:
                delay = max(delay, FATAL_PAUSE)
                self._pause_until = time.monotonic() + delay
            self._settle_in_queue(lambda: self.queue.release(retry, delay))
            metrics.record_events("spooled", len(retry))
            log.warning(
                "%d events stay spooled after a failed batch (%s); next attempt in %.1f s",
                len(retry),
                error,
                delay,
            )
            outcome.failed = []
        else:
            self._settle_in_queue(lambda: self.queue.ack(retry))
        with sender._lock:
            sender._settle([item.event.id for item in done])
            sender._settle([item.event.id for item, _ in dead])
            sender._settle([item.event.id for item in retry], deferred=bool(keep))
        sender._record(outcome, len(done))


_live_senders: weakref.WeakSet[BackgroundSender] = weakref.WeakSet()


def _close_at_exit() -> None:
    for sender in list(_live_senders):
        if not sender._closed:
            sender._close_and_log("at interpreter exit, BackgroundSender closed")


def _call(callback: Callable[[list[Any]], None], events: list[Any]) -> None:
    try:
        callback(events)
    except Exception:  # a callback must not kill the worker
        log.exception("BackgroundSender callback raised")


def _id_of(event: Any) -> Any:
    return event.get("id") if isinstance(event, dict) else getattr(event, "id", None)


def _reset_senders_after_fork() -> None:
    for sender in list(_live_senders):
        sender._reset_after_fork()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_reset_senders_after_fork)
