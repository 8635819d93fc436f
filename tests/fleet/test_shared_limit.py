"""``SharedRateLimit`` against a real redis-server: one bucket for every process that shares the
key, the token never in Redis, bounded waits, and sending that goes on when Redis dies."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from bench.fleet import RedisServer
from bench.sink import SinkProcess
from tests.conftest import SECRET
from tests.unit.conftest import wire_event
from togai_ingest import Client, RetryPolicy
from togai_ingest.errors import ConfigurationError
from togai_ingest.ratelimit import limiter_from
from togai_ingest.shared_limit import KEY_PREFIX, SharedRateLimit, bucket_key


def paced(limiters: list[SharedRateLimit], each: int) -> float:
    """Seconds for ``each`` acquires from two threads per limiter (threads of "processes")."""
    threads = [
        threading.Thread(target=lambda lim=lim: [lim.acquire() for _ in range(each)])
        for lim in limiters
        for _ in range(2)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return time.monotonic() - started


def test_limiters_with_one_key_share_one_bucket(redis_url: str) -> None:
    """Two limiters (as two processes would have) at 20/s: 40 requests take ~2 s together,
    not 1 s each side by side."""
    first = SharedRateLimit(redis_url, 20, key="org-a", burst=1)
    second = SharedRateLimit(redis_url, 20, key="org-a", burst=1)
    assert paced([first, second], each=10) >= 1.8
    assert first.shared and second.shared


def test_different_organisations_do_not_share(redis_url: str) -> None:
    a = SharedRateLimit(redis_url, 20, key="org-b", burst=1)
    b = SharedRateLimit(redis_url, 20, key="org-c", burst=1)
    same = SharedRateLimit(redis_url, 20, key="org-b", burst=1)
    waits = [a.bucket.reserve() for _ in range(10)]  # reserves 10 slots, 50 ms apart
    assert waits[-1] is not None and 0.3 < waits[-1] <= 0.46
    other = b.bucket.reserve()
    assert other == 0  # its own bucket: free at once (both times on Redis's clock)
    shared = same.bucket.reserve()
    assert shared is not None and shared > 0.3  # the same bucket: after a's ten


def test_the_bucket_is_named_by_a_hash_of_the_token(redis_url: str) -> None:
    limiter = SharedRateLimit(redis_url, 50, token=SECRET)
    limiter.acquire()
    keys = redis.Redis.from_url(redis_url, decode_responses=True).keys(f"{KEY_PREFIX}:*")
    assert limiter.bucket.key in keys
    assert all(SECRET not in k for k in keys)
    assert bucket_key(None, SECRET, "ingest") == limiter.bucket.key
    assert bucket_key(None, SECRET + "x", "ingest") != limiter.bucket.key
    ttl = redis.Redis.from_url(redis_url).pttl(limiter.bucket.key)
    assert 0 < ttl <= 2000  # the key goes away by itself


def test_a_bucket_needs_a_name(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.delenv("TOGAI_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="key"):
        SharedRateLimit(redis_url)
    monkeypatch.setenv("TOGAI_API_TOKEN", SECRET)
    assert SharedRateLimit(redis_url).bucket.key == bucket_key(None, SECRET, "ingest")


def test_limiter_from_keeps_a_shared_limit_as_it_is(redis_url: str) -> None:
    limiter = SharedRateLimit(redis_url, 50, key="org-d")
    assert limiter_from(limiter, quota=50) is limiter
    assert limiter.adaptive  # 429s still cut this process's rate


async def test_async_acquire_shares_the_bucket(redis_url: str) -> None:
    limiter = SharedRateLimit(redis_url, 20, key="org-e", burst=1)
    other = SharedRateLimit(redis_url, 20, key="org-e", burst=1)
    started = time.monotonic()
    await asyncio.gather(
        *(limiter.acquire_async() for _ in range(6)), *(other.acquire_async() for _ in range(6))
    )
    assert time.monotonic() - started >= 0.5  # 12 slots 50 ms apart


def test_redis_gone_falls_back_to_the_local_limit_and_comes_back(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "togai_ingest")
    limiter = SharedRateLimit(redis_url, 20, key="org-f", retry_interval=0.2, burst=1)
    limiter.acquire()
    assert limiter.shared
    redis_server.stop()
    started = time.monotonic()
    for _ in range(10):
        limiter.acquire()  # never raises, never stops
    assert not limiter.shared
    assert time.monotonic() - started >= 0.4  # the local limit (20/s) paces meanwhile
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "unreachable" in w]) == 1  # once per outage
    redis_server.start()
    time.sleep(0.3)
    limiter.acquire()
    assert limiter.shared
    assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_a_hung_redis_costs_a_bounded_wait(silent_port: int) -> None:
    limiter = SharedRateLimit(
        f"redis://127.0.0.1:{silent_port}/0", 1000, key="org-g", timeout=0.2, retry_interval=5
    )
    started = time.monotonic()
    for _ in range(20):
        limiter.acquire()
    assert time.monotonic() - started < 3.0  # one timeout, then the local limit until retry
    assert not limiter.shared and limiter.bucket.failures == 1


def test_after_fork_gives_a_limiter_on_its_own_connections(redis_url: str) -> None:
    limiter = SharedRateLimit(redis_url, 50, key="org-h")
    limiter.acquire()
    child = limiter.after_fork()
    assert isinstance(child, SharedRateLimit)
    assert child.bucket is not limiter.bucket and child.bucket.key == limiter.bucket.key
    assert child.bucket._redis is not limiter.bucket._redis
    child.acquire()
    assert child.shared


def test_senders_go_on_when_redis_is_killed_mid_run(redis_server: RedisServer) -> None:
    """Two clients (threads, as two processes) share the limit. Both send 100 events; when
    both have sent 20, Redis is killed; when both have sent 60, it is back. Every event
    arrives, both saw the outage, and both went back to the shared limit."""
    if not redis_server.answers():
        redis_server.start()
    limiters = [
        SharedRateLimit(redis_server.url, 40, key="org-kill", retry_interval=0.2, timeout=0.2)
        for _ in range(2)
    ]
    killed = threading.Barrier(2, action=redis_server.stop, timeout=30)

    def restart() -> None:
        redis_server.start()

    back = threading.Barrier(2, action=restart, timeout=30)
    results: list[int] = []

    def events(n: int) -> Iterator[dict[str, object]]:
        for i in range(100):
            if i == 20:
                killed.wait()
            elif i == 60:
                back.wait()
            yield wire_event(id=f"kill-{n}-{i}")

    with SinkProcess(quota=40, latency=0.02, track_ids=True) as sink:
        before = sink.stats()

        def send(n: int, limiter: SharedRateLimit) -> None:
            policy = RetryPolicy(max_retries=20, total_timeout=60)
            with Client(SECRET, base_url=sink.url, rate_limit=limiter, retry=policy) as client:
                results.append(client.send(events(n), batch_size=2).accepted)

        threads = [threading.Thread(target=send, args=(n, lim)) for n, lim in enumerate(limiters)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        spent = sink.stats() - before
    assert results == [100, 100]
    assert spent.distinct == 200
    assert all(lim.bucket.failures >= 1 for lim in limiters)  # both saw the outage
    assert all(lim.shared for lim in limiters)  # and went back
