"""The client-side rate limit: slots 1/rate apart, shared by threads and tasks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.conftest import SECRET
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import Client, RateLimiter, RetryPolicy
from togai_ingest.spec import spec


def test_slots_are_spaced_by_the_rate() -> None:
    limiter = RateLimiter(50)
    waits = [limiter._reserve() for _ in range(10)]
    for i, wait in enumerate(waits):
        assert i * 0.02 - 0.01 <= wait <= i * 0.02 + 0.001


def test_burst_lets_the_first_requests_through() -> None:
    limiter = RateLimiter(10, burst=5)
    waits = [limiter._reserve() for _ in range(7)]
    assert all(w <= 0.001 for w in waits[:5])
    assert waits[5] > 0.05


def test_threads_and_tasks_share_the_slots() -> None:
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
    waits.sort()
    assert waits[-1] >= 19 * 0.01 - 0.02  # 20 slots, none given twice


def test_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_default_is_the_documents_quota() -> None:
    client = Client(SECRET, base_url="http://127.0.0.1:9")
    assert client.rate_limiter is not None
    assert client.rate_limiter.per_second == spec().requests_per_second
    assert Client(SECRET, base_url="http://127.0.0.1:9", rate_limit=None).rate_limiter is None


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
