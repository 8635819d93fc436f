"""The retry policy: what is retried, how long it waits, when it gives up."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import SECRET
from tests.faultserver import (
    Error,
    FaultServer,
    ResetBefore,
    Slow,
    Throttle,
    unavailable_burst,
)
from tests.unit.conftest import wire_event
from togai_ingest import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncClient,
    BadRequestError,
    Client,
    MalformedResponseError,
    RetryPolicy,
    ServiceUnavailableError,
)
from togai_ingest.errors import (
    APIStatusError,
    AuthenticationError,
    PayloadTooLargeError,
    RateLimitedError,
    UnexpectedStatusError,
)
from togai_ingest.retry import parse_retry_after

FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05)


def status_error(
    cls: type[APIStatusError], status: int, retry_after: str | None = None
) -> APIError:
    headers = httpx.Headers({"retry-after": retry_after} if retry_after else {})
    return cls(status, None, headers)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (status_error(RateLimitedError, 429), True),
        (status_error(ServiceUnavailableError, 503), True),
        (status_error(UnexpectedStatusError, 502), True),
        (status_error(UnexpectedStatusError, 504), True),
        (APITimeoutError("t"), True),
        (APIConnectionError("c"), True),
        (MalformedResponseError(207, "x"), True),
        (status_error(BadRequestError, 400), False),
        (status_error(AuthenticationError, 401), False),
        (status_error(PayloadTooLargeError, 422), False),
        (status_error(UnexpectedStatusError, 500), True),
        (status_error(UnexpectedStatusError, 520), True),
        (status_error(UnexpectedStatusError, 501), False),
        (status_error(UnexpectedStatusError, 499), False),
    ],
)
def test_what_is_retried(error: APIError, retried: bool) -> None:
    assert RetryPolicy().is_retryable(error) is retried
    assert (RetryPolicy().delay(0, error, 0.0) is not None) is retried


def test_retry_statuses_come_from_the_document() -> None:
    # 429 and 503 declare Retry-After in the document; 502 and 504 are the proxies' statuses.
    assert RetryPolicy().retry_statuses == {429, 502, 503, 504}


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=4.0, max_retries=10)
    error = APITimeoutError("t")
    for retries, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        waits = [policy.delay(retries, error, 0.0) for _ in range(50)]
        assert all(w is not None and 0.75 * ceiling <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1, "no jitter"


def test_retry_after_seconds_and_http_date_are_honoured_up_to_a_cap() -> None:
    policy = RetryPolicy(max_retry_after=30.0)
    assert policy.delay(0, status_error(RateLimitedError, 429, "7"), 0.0) == 7.0
    assert policy.delay(0, status_error(RateLimitedError, 429, "3600"), 0.0) == 30.0
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    wait = policy.delay(0, status_error(ServiceUnavailableError, 503, later), 0.0)
    assert wait is not None and 18.0 <= wait <= 20.0
    assert parse_retry_after("not a date") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_give_up_after_max_retries_and_total_budget() -> None:
    error = status_error(ServiceUnavailableError, 503)
    assert RetryPolicy(max_retries=0).delay(0, error, 0.0) is None
    assert RetryPolicy(max_retries=3).delay(3, error, 0.0) is None
    assert (
        RetryPolicy(total_timeout=10.0).delay(0, status_error(RateLimitedError, 429, "11"), 0.0)
        is None
    )
    assert RetryPolicy(total_timeout=10.0).delay(0, error, 9.9) is None


def test_a_burst_of_503_is_ridden_out_and_each_event_metered_once() -> None:
    with (
        FaultServer(token=SECRET, script=unavailable_burst(3)) as srv,
        Client(SECRET, base_url=srv.url, rate_limit=None, retry=FAST) as client,
    ):
        outcome = client.ingest_batch([wire_event(id="a"), wire_event(id="b")])
    assert outcome.accepted == 2
    assert [r.status for r in srv.requests] == [503, 503, 503, 202]
    assert srv.deliveries == {"a": 1, "b": 1}


def test_retry_after_is_waited_for() -> None:
    with (
        FaultServer(token=SECRET, script=[Throttle(retry_after=1)]) as srv,
        Client(SECRET, base_url=srv.url, rate_limit=None, retry=FAST) as client,
    ):
        started = time.monotonic()
        client.ingest(wire_event())
        waited = time.monotonic() - started
    assert waited >= 0.95
    assert list(srv.ledger) == ["evt-1"]


def test_client_errors_are_never_retried() -> None:
    with (
        FaultServer(token=SECRET, script=[Error(400, "no")]) as srv,
        Client(SECRET, base_url=srv.url, rate_limit=None, retry=FAST) as client,
        pytest.raises(BadRequestError),
    ):
        client.ingest_batch([wire_event()])
    assert len(srv.requests) == 1


def test_timeouts_are_retried_with_the_same_ids() -> None:
    with (
        FaultServer(token=SECRET, script=[Slow(1.0)], client_timeout=0.3) as srv,
        Client(
            SECRET, base_url=srv.url, rate_limit=None, retry=FAST, timeout=httpx.Timeout(0.3)
        ) as client,
    ):
        outcome = client.ingest_batch([wire_event(id="a")])
    assert outcome.accepted == 1
    assert srv.deliveries["a"] == 2  # sent twice: the slow answer came too late to be seen
    assert "a" in srv.ambiguous_ids
    assert list(srv.ledger) == ["a"]  # ... and metered once


def test_failure_after_retries_raises_the_last_error() -> None:
    with (
        FaultServer(token=SECRET, script=[ResetBefore()] * 3) as srv,
        Client(
            SECRET,
            base_url=srv.url,
            rate_limit=None,
            retry=RetryPolicy(max_retries=2, initial_delay=0.01),
        ) as client,
        pytest.raises(APIConnectionError),
    ):
        client.ingest(wire_event())
    assert srv.ledger == {}


async def test_async_client_shares_the_policy() -> None:
    with FaultServer(token=SECRET, script=unavailable_burst(2)) as srv:
        async with AsyncClient(SECRET, base_url=srv.url, rate_limit=None, retry=FAST) as client:
            outcome = await client.ingest_batch([wire_event(id="a")])
            await client.ingest(wire_event(id="b"))
    assert outcome.accepted == 1
    assert set(srv.ledger) == {"a", "b"}
