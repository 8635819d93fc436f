"""One drain run: send everything a spool holds (``togai-ingest drain PATH``).

For a pod that will never start again, a cron job or a sidecar. Safe while live senders use
the same spool: drain leases events like a sender does, so it skips those a live process holds
and a live process skips those drain holds. It walks the spool once, oldest first, up to the
last event present when it started; an event that fails after its retries stays spooled
(reported failed), a rejected one leaves the spool (reported rejected, and kept in the
``dead_letter`` table with ``dead_letter=True``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .client import DEFAULT_CONCURRENCY, Client
from .errors import APIError, ConfigurationError, SpoolError
from .queues import Item
from .results import BatchOutcome, FailedEvent, RejectedEvent
from .retry import is_fatal
from .spool import SpoolQueue

__all__ = ["DrainResult", "drain"]

log = logging.getLogger("togai_ingest")


@dataclass(slots=True)
class DrainResult:
    """``accepted`` a count; ``rejected`` left the spool; ``failed`` stay spooled; ``left``:
    events held by a live process (or added after the start), not touched by this run;
    ``aborted``: the error that stopped the run (a refused token)."""

    accepted: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    left: int = 0
    aborted: APIError | None = None

    @property
    def total(self) -> int:
        return self.accepted + len(self.rejected) + len(self.failed)

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.failed or self.left or self.aborted)


def drain(
    path: str | os.PathLike[str],
    client: Client,
    *,
    batch_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    dead_letter: bool = False,
    on_batch: Callable[[BatchOutcome, DrainResult], None] | None = None,
) -> DrainResult:
    """Send what the spool at ``path`` holds, with up to ``concurrency`` requests in flight
    (the client's rate limit applies); returns what happened. Raises ``SpoolError`` if the
    spool cannot be opened (a damaged file is not moved aside: it is the one to salvage)."""
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, not {concurrency!r}")
    size = client.check_batch_size(batch_size)
    spool = SpoolQueue(path, max_bytes=None, dead_letter=dead_letter, move_damaged=False)
    result = DrainResult()
    lock = threading.Lock()
    cursor = [0]
    try:
        upto = spool.last_seq()

        def take() -> list[Item]:
            with lock:
                if result.aborted is not None:
                    return []
                items = spool.take_range(cursor[0], upto, size)
                if items:
                    cursor[0] = items[-1].key
                return items

        def work() -> None:
            while items := take():
                outcome = client.send_encoded([item.event for item in items])
                try:
                    _settle(spool, items, outcome)
                except SpoolError as exc:  # they come back when drain's lease expires
                    log.error("drain: %s", exc)
                with lock:
                    result.accepted += outcome.accepted
                    result.rejected.extend(outcome.rejected)
                    result.failed.extend(outcome.failed)
                    fatal = next((f.error for f in outcome.failed if is_fatal(f.error)), None)
                    if fatal is not None and result.aborted is None:
                        result.aborted = fatal
                    if on_batch is not None:
                        on_batch(outcome, result)

        threads = [
            threading.Thread(target=work, name=f"togai-drain-{k}") for k in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        held = spool.ids_upto(upto)
        result.left = max(0, len(held) - len(result.failed))
    finally:
        spool.shutdown()
    return result


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
        f"{len(result.failed):,} failed, 0 invalid; "
        f"{result.total:,} events in {seconds:.2f} s ({rate:,.0f} events/s)"
    )
    if result.left:
        line += f"; {result.left:,} left in the spool (held by a live process)"
    return line
