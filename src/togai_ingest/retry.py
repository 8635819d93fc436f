"""The one place that decides what is retried and how long to wait.

Retrying an ingestion request is safe: every event carries its ``id``, Togai's idempotency
key, so an event that reaches the server twice is metered once.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Literal, TypeVar

from . import metrics
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    MalformedResponseError,
    PayloadTooLargeError,
)
from .spec import spec

__all__ = [
    "RetryPolicy",
    "after_final_attempt",
    "is_fatal",
    "parse_retry_after",
    "retry_async",
    "retry_sync",
]

log = logging.getLogger("togai_ingest")
_FINAL_5XX = frozenset(
    {int(HTTPStatus.NOT_IMPLEMENTED), int(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)}
)
T = TypeVar("T")


def _default_retry_statuses() -> frozenset[int]:
    # The statuses for which the document declares Retry-After (429, 503), and the gateway
    # errors that proxies in front of the API answer (502, 504).
    gateway_errors = {int(HTTPStatus.BAD_GATEWAY), int(HTTPStatus.GATEWAY_TIMEOUT)}
    return spec().statuses_with_header("Retry-After") | gateway_errors


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) or seconds > 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, honouring ``Retry-After``, within a time budget.

    Retried: ``retry_statuses`` (429 and 503, which the document gives a Retry-After, and the
    gateway errors 502 and 504), every other 5xx but 501 and 505, an answer below 400 that is
    not one of the document's success statuses (a proxy's 200 page, a 204, a redirect),
    timeouts, connection errors, and a success whose list of rejected events cannot be read.
    Never retried: 400, 401, 422 and every other 4xx. ``max_retries=0`` disables retrying.
    ``total_timeout`` bounds the whole of it: an attempt in progress is cut at the budget's end.
    """

    max_retries: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    total_timeout: float = 120.0
    retry_statuses: frozenset[int] = field(default_factory=_default_retry_statuses)

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ConfigurationError("max_retries must be an int")
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must be 0 or more")
        for name in ("initial_delay", "max_delay", "max_retry_after", "total_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{name} must be a number of seconds")
            if not math.isfinite(value) or value < 0 or (name == "total_timeout" and value == 0):
                raise ConfigurationError(f"{name} must be a finite number of seconds >= 0")

    def is_retryable(self, error: APIError) -> bool:
        if isinstance(error, APIStatusError):
            return (
                error.status in self.retry_statuses
                or error.status < HTTPStatus.BAD_REQUEST
                or (
                    error.status >= HTTPStatus.INTERNAL_SERVER_ERROR
                    and error.status not in _FINAL_5XX
                )
            )
        return isinstance(error, APITimeoutError | APIConnectionError | MalformedResponseError)

    def delay(self, retries_done: int, error: APIError, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if retries_done >= self.max_retries or not self.is_retryable(error):
            return None
        backoff = min(self.max_delay, self.initial_delay * 2.0**retries_done)
        wait = backoff * (1.0 - 0.25 * random.random())  # jitter spreads out retry storms
        retry_after = _retry_after_of(error)
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after)
        if elapsed + wait >= self.total_timeout:
            return None
        return wait

    def describe(self) -> str:
        """What is retried, in one sentence: the command line's help and the README say this
        (``tests/test_docs.py`` checks that they do)."""
        statuses = ", ".join(str(s) for s in sorted(self.retry_statuses))
        final = " and ".join(str(s) for s in sorted(_FINAL_5XX))
        return (
            f"Retried: {statuses}, every other 5xx except {final}, any answer below 400 that "
            "the document does not list as a success, timeouts, connection errors, and a 207 "
            "that cannot be read or matched to the batch; never any other 4xx."
        )


def _retry_after_of(error: APIError) -> float | None:
    """The wait a ``Retry-After`` header of ``error``'s answer asks for, if any."""
    if isinstance(error, APIStatusError):
        return parse_retry_after(error.headers.get("retry-after"))
    return None


def is_fatal(error: APIError) -> bool:
    """An error that stops a whole run: every further request would fail the same way (the
    token is refused). ``send`` raises ``SendAbortedError``; the background sender keeps its
    events and logs."""
    return isinstance(error, AuthenticationError)


Decision = Literal["split", "fail"]


def after_final_attempt(error: APIError, batch_size: int) -> Decision:
    """What happens to a batch whose last attempt failed with ``error``: a batch too large for
    the server (422) is sent again as two halves, down to one event; anything else fails."""
    if isinstance(error, PayloadTooLargeError) and batch_size > 1:
        return "split"
    return "fail"


def _attempt_deadline(started: float, attempt_timeout: float, policy: RetryPolicy) -> float:
    return min(time.monotonic() + attempt_timeout, started + policy.total_timeout)


def retry_sync(
    policy: RetryPolicy, attempt: Callable[[float], T], what: str, attempt_timeout: float
) -> T:
    """Run ``attempt(deadline)`` until it succeeds or ``policy`` gives up; each attempt ends by
    its deadline (``attempt_timeout`` from its start, and never after the total budget)."""
    started = time.monotonic()
    retries = 0
    while True:
        try:
            return attempt(_attempt_deadline(started, attempt_timeout, policy))
        except APIError as error:
            wait = policy.delay(retries, error, time.monotonic() - started)
            if wait is None:
                raise
            retries += 1
            metrics.record_retry(error)
            log.info("%s failed (%s); retry %d in %.2fs", what, error, retries, wait)
            time.sleep(wait)


async def retry_async(
    policy: RetryPolicy,
    attempt: Callable[[float], Awaitable[T]],
    what: str,
    attempt_timeout: float,
) -> T:
    started = time.monotonic()
    retries = 0
    while True:
        try:
            return await attempt(_attempt_deadline(started, attempt_timeout, policy))
        except APIError as error:
            wait = policy.delay(retries, error, time.monotonic() - started)
            if wait is None:
                raise
            retries += 1
            metrics.record_retry(error)
            log.info("%s failed (%s); retry %d in %.2fs", what, error, retries, wait)
            await asyncio.sleep(wait)
