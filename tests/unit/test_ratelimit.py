"""The client-side rate limit: slots 1/rate apart, shared by threads and tasks; what the client
builds from ``rate_limit=``. (How the rate adapts: tests/fleet/test_adaptive.py.)"""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from tests.conftest import SECRET
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import Client, RateLimiter, RetryPolicy, ratelimit
from togai_ingest.errors import ConfigurationError
from togai_ingest.ratelimit import Limiter, limiter_from
from togai_ingest.spec import spec


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reservation at the same instant: the waits are exact."""
    monkeypatch.setattr(ratelimit, "_clock", lambda: 500.0)


def test_slots_are_spaced_by_the_rate(frozen: None) -> None:
    limiter = RateLimiter(50)
    waits = [limiter._reserve() for _ in range(10)]
    assert waits == pytest.approx([i * 0.02 for i in range(10)])


def test_burst_lets_the_first_requests_through(frozen: None) -> None:
    limiter = RateLimiter(10, burst=5)
    waits = [max(0.0, limiter._reserve()) for _ in range(7)]  # below 0: go at once
    assert waits == pytest.approx([0, 0, 0, 0, 0, 0.1, 0.2])


def test_threads_share_the_slots(frozen: None) -> None:
    """20 threads reserve at the same instant: 20 different slots, 10 ms apart, none given
    twice."""
    limiter = RateLimiter(100)
    waits: list[float] = []
    lock = threading.Lock()

    def reserve() -> None:
        wait = limiter._reserve()
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=reserve) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == pytest.approx([i * 0.01 for i in range(20)])


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf, True, "50"])
def test_rejects_a_rate_that_is_not_a_finite_positive_number(rate: object) -> None:
    with pytest.raises(ConfigurationError):
        RateLimiter(rate)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        limiter_from(rate, quota=50)  # type: ignore[arg-type]


def test_a_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        limiter_from(0, quota=50)


def test_default_is_the_documents_quota_and_adaptive() -> None:
    client = Client(SECRET, base_url="http://127.0.0.1:9")
    assert isinstance(client.rate_limiter, RateLimiter)
    assert client.rate_limiter.per_second == spec().requests_per_second
    assert client.rate_limiter.adaptive
    assert Client(SECRET, base_url="http://127.0.0.1:9", rate_limit=None).rate_limiter is None


def test_limiter_from_a_number_none_or_a_rate_limiter() -> None:
    made = limiter_from(12.5, quota=50)
    assert isinstance(made, RateLimiter) and made.per_second == 12.5 and made.adaptive
    assert limiter_from(None, quota=50) is None
    fixed = RateLimiter(7, adaptive=False)
    assert limiter_from(fixed, quota=50) is fixed


class Recording:
    """A user's limiter: counts what the client asks of it."""

    def __init__(self) -> None:
        self.acquired = 0
        self.observed: list[tuple[int | None, float | None]] = []
        self.forked = 0

    def acquire(self) -> None:
        self.acquired += 1

    async def acquire_async(self) -> None:
        self.acquired += 1

    def observe(self, status: int | None, retry_after: float | None) -> None:
        self.observed.append((status, retry_after))

    def after_fork(self) -> Recording:
        self.forked += 1
        return Recording()


def test_a_users_limiter_is_wrapped_in_the_adaptive_limit() -> None:
    mine = Recording()
    assert isinstance(mine, Limiter)
    made = limiter_from(mine, quota=40)
    assert isinstance(made, RateLimiter)
    assert made.inner is mine and made.per_second == 40 and made.adaptive
    made.acquire()
    made.observe(429, 0.0)
    assert mine.acquired == 1 and mine.observed == [(429, 0.0)]
    assert made.rate < 40  # the wrapper adapted although the user's limiter does not
    child = made.after_fork()
    assert isinstance(child, RateLimiter) and isinstance(child.inner, Recording)
    assert mine.forked == 1 and child.inner is not mine


def test_an_object_without_the_protocol_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="acquire"):
        limiter_from(object(), quota=50)  # type: ignore[arg-type]


def test_the_client_uses_a_users_limiter() -> None:
    mine = Recording()
    with FaultServer(token=SECRET) as srv:
        with Client(SECRET, base_url=srv.url, rate_limit=mine) as client:
            client.send([wire_event(id=f"u{i}") for i in range(3)], batch_size=1)
    assert mine.acquired == 3
    assert [status for status, _ in mine.observed] == [202, 202, 202]


def count_429(rate_limit: float | None) -> tuple[int, int]:
    """(429 answers, events metered) for 30 one-event requests to a 20 requests/s server."""
    policy = RetryPolicy(initial_delay=0.01, max_retry_after=0.05)
    with FaultServer(token=SECRET, max_requests_per_second=20) as srv:
        with Client(SECRET, base_url=srv.url, rate_limit=rate_limit, retry=policy) as client:
            client.send([wire_event(id=f"e{i}") for i in range(30)], batch_size=1)
        return [r.status for r in srv.requests].count(429), len(srv.ledger)


def test_limit_at_the_servers_quota_avoids_429_storms() -> None:
    """Unlimited, the client trips the server's quota again and again; limited to it, at most
    twice (the server's sliding window sees jitter at a window's edge)."""
    unlimited, _ = count_429(None)
    assert unlimited >= 5
    limited, metered = count_429(20)
    assert limited <= 2 and metered == 30


async def test_async_acquire_waits() -> None:
    limiter = RateLimiter(20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(3):
        await limiter.acquire_async()
    assert loop.time() - started >= 0.09
