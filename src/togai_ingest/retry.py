"""The one place that decides what is retried and how long to wait.

Retrying an ingestion request is safe: every event carries its ``id``, Togai's idempotency
key, so an event that reaches the server twice is metered once.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TypeVar

from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    MalformedResponseError,
)
from .spec import spec

__all__ = ["RetryPolicy", "retry_async", "retry_sync"]

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
        return max(0.0, float(value))
    except ValueError:
        pass
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
    gateway errors 502 and 504), every other 5xx but 501 and 505, timeouts, connection errors,
    and a 207 whose body cannot be read. Never retried: 400, 401, 422 and every other 4xx.
    ``max_retries=0`` disables retrying.
    """

    max_retries: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    total_timeout: float = 120.0
    retry_statuses: frozenset[int] = field(default_factory=_default_retry_statuses)

    def is_retryable(self, error: APIError) -> bool:
        if isinstance(error, APIStatusError):
            return error.status in self.retry_statuses or (
                error.status >= HTTPStatus.INTERNAL_SERVER_ERROR and error.status not in _FINAL_5XX
            )
        return isinstance(error, APITimeoutError | APIConnectionError | MalformedResponseError)

    def delay(self, retries_done: int, error: APIError, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if retries_done >= self.max_retries or not self.is_retryable(error):
            return None
        backoff = min(self.max_delay, self.initial_delay * 2.0**retries_done)
        wait = backoff * (1.0 - 0.25 * random.random())  # jitter spreads out retry storms
        if isinstance(error, APIStatusError):
            retry_after = parse_retry_after(error.headers.get("retry-after"))
            if retry_after is not None:
                wait = min(retry_after, self.max_retry_after)
        if elapsed + wait > self.total_timeout:
            return None
        return wait


def retry_sync(policy: RetryPolicy, attempt: Callable[[], T], what: str) -> T:
    started = time.monotonic()
    retries = 0
    while True:
        try:
            return attempt()
        except APIError as error:
            wait = policy.delay(retries, error, time.monotonic() - started)
            if wait is None:
                raise
            retries += 1
            log.info("%s failed (%s); retry %d in %.2fs", what, error, retries, wait)
            time.sleep(wait)


async def retry_async(policy: RetryPolicy, attempt: Callable[[], Awaitable[T]], what: str) -> T:
    started = time.monotonic()
    retries = 0
    while True:
        try:
            return await attempt()
        except APIError as error:
            wait = policy.delay(retries, error, time.monotonic() - started)
            if wait is None:
                raise
            retries += 1
            log.info("%s failed (%s); retry %d in %.2fs", what, error, retries, wait)
            await asyncio.sleep(wait)
