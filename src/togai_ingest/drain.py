"""One drain run: send everything a spool holds (``togai-ingest drain PATH``).

For a pod that will never start again, a cron job or a sidecar. Safe while live senders use
the same spool: drain leases events like a sender does, so it skips those a live process holds
and a live process skips those drain holds. It walks the spool once, oldest first, up to the
last event present when it started; an event that fails after its retries stays spooled
(reported failed), a rejected one leaves the spool (reported rejected, and kept in the
``dead_letter`` table with ``dead_letter=True``).

A damaged spool is not drained here: ``salvage.salvage`` reads what it still holds, and
returns the same ``DrainResult`` (with ``invalid`` rows and the ``damage``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .client import DEFAULT_CONCURRENCY, Client
from .errors import APIError, ConfigurationError, SpoolError, ValidationError
from .queues import Item
from .results import BatchOutcome, FailedEvent, InvalidEvent, RejectedEvent
from .retry import is_fatal
from .spool import SpoolQueue
from .validation import EncodedEvent, damage, damaged_view

if TYPE_CHECKING:
    from .salvage import Damage

__all__ = ["DrainResult", "drain"]

log = logging.getLogger("togai_ingest")


@dataclass(slots=True)
class DrainResult:
    """``accepted`` a count; ``rejected`` left the spool; ``failed`` stay spooled; ``left``:
    events held by a live process (or added after the start), not touched by this run;
    ``aborted``: the error that stopped the run (a refused token); ``invalid``: rows that are
    no valid event any more (a damaged file); ``damage``: what a salvage could not read at
    all (None for a drain)."""

    accepted: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    left: int = 0
    aborted: APIError | None = None
    invalid: list[InvalidEvent] = field(default_factory=list)
    damage: Damage | None = None

    @property
    def total(self) -> int:
        return self.accepted + len(self.rejected) + len(self.failed) + len(self.invalid)

    @property
    def ok(self) -> bool:
        unreadable = self.damage is not None and not self.damage.none
        return not (
            self.rejected or self.failed or self.left or self.aborted or self.invalid or unreadable
        )


def drain(
    path: str | os.PathLike[str],
    client: Client,
    *,
    batch_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    dead_letter: bool = False,
    on_batch: Callable[[BatchOutcome, DrainResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> DrainResult:
    """Send what the spool at ``path`` holds, with up to ``concurrency`` requests in flight
    (the client's rate limit applies); returns what happened. ``on_start`` gets the number
    of events the spool holds (for a progress bar), ``on_batch`` each batch's outcome and
    the result so far (called under a lock, one at a time). Raises ``SpoolError`` if the
    spool cannot be opened (a damaged file is not moved aside: it is the one to salvage)."""
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, not {concurrency!r}")
    size = client.check_batch_size(batch_size)
    spool = SpoolQueue(path, max_bytes=None, dead_letter=dead_letter, move_damaged=False)
    result = DrainResult()
    lock = threading.Lock()
    cursor = [0]
    taken: dict[int, list[Item]] = {}  # id() of a batch sent -> its spool items
    try:
        upto = spool.last_seq()
        if on_start is not None:
            on_start(spool.size())

        def take() -> list[EncodedEvent]:
            while True:
                with lock:
                    if result.aborted is not None:
                        return []
                    try:
                        items = spool.take_range(cursor[0], upto, size)
                    except (sqlite3.Error, TypeError, ValueError) as exc:  # a damaged row
                        raise SpoolError(
                            f"cannot read the spool {path}: {exc}; it may be damaged: try "
                            f"`togai-ingest drain --salvage {path}`"
                        ) from None
                    if items:
                        cursor[0] = items[-1].key
                good, bad = [], []
                for item in items:
                    error = damage(item.event, item.crc, f"spooled event {item.event.id!r}")
                    if error is None:
                        good.append(item)
                    else:
                        bad.append((item, error))
                if bad:
                    _damaged_rows(spool, bad, result, lock, on_batch)
                if good or not items:
                    events = [item.event for item in good]
                    if good:
                        taken[id(events)] = good
                    return events

        def settle(events: Sequence[EncodedEvent], outcome: BatchOutcome) -> None:
            try:
                _settle(spool, taken.pop(id(events)), outcome)
            except SpoolError as exc:  # they come back when drain's lease expires
                log.error("drain: %s", exc)

        deliver(take, client, concurrency, result, on_batch, "togai-drain", lock, settle)
        held = spool.ids_upto(upto)
        result.left = max(0, len(held) - len(result.failed))
    finally:
        spool.shutdown()
    return result


def _damaged_rows(
    spool: SpoolQueue,
    bad: list[tuple[Item, ValidationError]],
    result: DrainResult,
    lock: threading.Lock,
    on_batch: Callable[[BatchOutcome, DrainResult], None] | None,
) -> None:
    """Rows that are no valid event leave the spool like rejected ones (``dead_letter``
    keeps them) and are reported invalid."""
    try:
        spool.ack([], [(item, f"damaged: {error}") for item, error in bad])
    except SpoolError as exc:
        log.error("drain: %s", exc)
    invalid = [InvalidEvent(-1, damaged_view(item.event), error) for item, error in bad]
    with lock:
        result.invalid.extend(invalid)
        if on_batch is not None:
            on_batch(BatchOutcome(-1, len(invalid), invalid=invalid), result)


def deliver(
    take: Callable[[], list[EncodedEvent]],
    client: Client,
    concurrency: int,
    result: DrainResult,
    on_batch: Callable[[BatchOutcome, DrainResult], None] | None,
    name: str,
    lock: threading.Lock,
    settle: Callable[[Sequence[EncodedEvent], BatchOutcome], None] | None = None,
) -> None:
    """``concurrency`` threads that send the batches ``take`` gives (an empty one: the end),
    ``settle`` each outcome, and add it to ``result`` under ``lock`` (a refused token sets
    ``result.aborted``: ``take`` should then give no more)."""

    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not errors and (events := take()):
                outcome = client.send_encoded(events)
                if settle is not None:
                    settle(events, outcome)
                with lock:
                    result.accepted += outcome.accepted
                    result.rejected.extend(outcome.rejected)
                    result.failed.extend(outcome.failed)
                    fatal = next((f.error for f in outcome.failed if is_fatal(f.error)), None)
                    if fatal is not None and result.aborted is None:
                        result.aborted = fatal
                    if on_batch is not None:
                        on_batch(outcome, result)
        except BaseException as exc:  # raised in the caller's thread, not lost with this one
            errors.append(exc)

    threads = [threading.Thread(target=work, name=f"{name}-{k}") for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _settle(spool: SpoolQueue, items: list[Item], outcome: BatchOutcome) -> None:
    """Accepted and rejected events leave the spool; failed ones stay, backing off."""
    n = len(items)
    rejected = {r.index: r for r in outcome.rejected if 0 <= r.index < n}
    failed = {f.index: f for f in outcome.failed if 0 <= f.index < n}
    done = [items[i] for i in range(n) if i not in failed and i not in rejected]
    spool.ack(done, [(items[i], r.message) for i, r in rejected.items()])
    retry = [items[i] for i in sorted(failed)]
    spool.release(retry, spool.backoff(max((item.attempts for item in retry), default=0)))


def summary(result: DrainResult, seconds: float) -> str:
    """The ``send`` summary line, for a drain."""
    rate = result.total / seconds if seconds > 0 else 0.0
    line = (
        f"summary: {result.accepted:,} accepted, {len(result.rejected):,} rejected, "
        f"{len(result.failed):,} failed, {len(result.invalid):,} invalid; "
        f"{result.total:,} events in {seconds:.2f} s ({rate:,.0f} events/s)"
    )
    if result.left:
        line += f"; {result.left:,} left in the spool (held by a live process)"
    damage = result.damage
    if damage is not None and not damage.none:
        n_pages, n_rows = len(damage.pages), len(damage.rows)
        unreadable = [f"{n_pages:,} page{'s' * (n_pages != 1)}"] if n_pages else []
        unreadable += [f"{n_rows:,} row{'s' * (n_rows != 1)}"] if n_rows else []
        line += f"; unreadable: {' and '.join(unreadable) or 'the -wal file (lost)'}"
    return line
