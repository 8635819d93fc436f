"""Short-lived processes: flush when the handler returns, within a time budget.

A Celery task, an AWS Lambda or Cloud Functions handler may be frozen or killed as soon as it
returns: a ``BackgroundSender``'s thread then never gets to send what was queued. Flush before
returning, with a budget of its own::

    sender = BackgroundSender()          # once per process (module level)

    @flush_after(sender, budget=5.0)
    def handler(event, context):
        sender.enqueue(new_event(...))
        return {"ok": True}

    # or, around any block (async too: ``async with flushing(...)``)
    with flushing(sender, budget=5.0) as flush:
        sender.enqueue(new_event(...))
    flush.report  # what was not delivered, if anything

The flush never raises: what could not be delivered within the budget is logged at WARNING
(with the event ids) and handed to ``on_undelivered``; events still queued stay queued for the
next invocation, if the process lives on. An exception from the handler goes on after the
flush. ``sender`` may also be a function returning the sender (created lazily).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast, runtime_checkable

from .sender import DeliveryReport

__all__ = ["Flushable", "flush_after", "flushing"]

log = logging.getLogger("togai_ingest")
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_BUDGET = 5.0


@runtime_checkable
class Flushable(Protocol):
    def flush(self, timeout: float | None = None) -> DeliveryReport: ...


SenderLike = Flushable | Callable[[], Flushable]
OnUndelivered = Callable[[DeliveryReport], None]


def _ids(report: DeliveryReport, limit: int = 20) -> list[str]:
    """Ids of the events not confirmed delivered (the first ``limit``)."""
    unconfirmed = getattr(report, "unconfirmed_ids", None)
    if callable(unconfirmed):
        return [str(i) for i in unconfirmed()][:limit]
    events = [*(r.event for r in report.rejected), *(f.event for f in report.failed)]
    events += list(report.undelivered)
    ids = []
    for event in events:
        ident = event.get("id") if isinstance(event, dict) else getattr(event, "id", event)
        ids.append(str(ident))
    return ids[:limit]


def _resolve(sender: SenderLike) -> Flushable:
    if isinstance(sender, Flushable):
        return sender
    return sender()


def _flush(
    sender: SenderLike, budget: float, on_undelivered: OnUndelivered | None
) -> DeliveryReport | None:
    started = time.monotonic()
    try:
        target = _resolve(sender)
        report = target.flush(budget)
    except Exception:
        log.exception("flush after the handler failed; events may not have been delivered")
        return None
    if not report.ok:
        log.warning(
            "flush after the handler (budget %.3g s, took %.3g s): not everything was "
            "delivered: %s; ids: %s",
            budget,
            time.monotonic() - started,
            report,
            _ids(report),
        )
        if on_undelivered is not None:
            try:
                on_undelivered(report)
            except Exception:
                log.exception("on_undelivered raised")
    return report


class flushing:
    """``with flushing(sender, budget=5.0) as f:`` flushes ``sender`` when the block ends
    (returns or raises), waiting at most ``budget`` seconds; ``f.report`` is the
    ``DeliveryReport`` (None if the flush itself failed). Never raises for the flush."""

    def __init__(
        self,
        sender: SenderLike,
        budget: float = DEFAULT_BUDGET,
        *,
        on_undelivered: OnUndelivered | None = None,
    ) -> None:
        if not budget > 0:
            raise ValueError("budget must be a number of seconds above 0")
        self.sender = sender
        self.budget = budget
        self.on_undelivered = on_undelivered
        self.report: DeliveryReport | None = None

    def flush(self) -> DeliveryReport | None:
        self.report = _flush(self.sender, self.budget, self.on_undelivered)
        return self.report

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.flush()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The flush waits on a thread: the event loop goes on meanwhile.
        await asyncio.to_thread(self.flush)


def flush_after(
    sender: SenderLike,
    budget: float = DEFAULT_BUDGET,
    *,
    on_undelivered: OnUndelivered | None = None,
) -> Callable[[F], F]:
    """Decorate a handler (sync or async) so that ``sender`` is flushed when it returns or
    raises, within ``budget`` seconds; see ``flushing``."""

    def decorate(handler: F) -> F:
        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with flushing(sender, budget, on_undelivered=on_undelivered):
                    return await handler(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            with flushing(sender, budget, on_undelivered=on_undelivered):
                return handler(*args, **kwargs)

        return cast(F, run)

    return decorate
