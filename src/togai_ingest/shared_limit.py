"""``SharedRateLimit``: one request quota for every process and host, kept in Redis.

Togai's quota belongs to the organisation. ``SharedRateLimit("redis://host:6379/0")`` keeps a
token bucket for the organisation (a hash of the API token, or ``key=``) in Redis; every
process that uses the same Redis and key shares it::

    client = AsyncClient(rate_limit=SharedRateLimit("redis://redis:6379/0"))

The bucket is a generic cell rate algorithm (GCRA, a token bucket kept as one timestamp): a
Lua script reserves the next free slot atomically, on Redis's clock, and answers how long to
wait for it. One round trip per request, one key per bucket (with a TTL), no polling and no
clock agreement between hosts needed. It needs only redis-py (``pip install '...[redis]'``).

``SharedRateLimit`` is an adaptive ``RateLimiter`` with the Redis bucket inside: while Redis
answers, the bucket keeps the pace and the local part only holds this process back after a 429
or a ``Retry-After`` (a cut rate, a pause). When Redis cannot be reached (every call has a
socket timeout), the local part alone paces the requests, adaptively, at the same rate: a
WARNING is logged, Redis is tried again every ``retry_interval`` seconds, and the shared limit
is used again as soon as it answers. Sending never stops and no event is lost because of Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError
from .ratelimit import RateLimiter, _positive_rate
from .spec import spec

__all__ = ["RedisBucket", "SharedRateLimit"]

log = logging.getLogger("togai_ingest")
_TOKEN_ENV = "TOGAI_API_TOKEN"
KEY_PREFIX = "togai-ingest:rate"

# KEYS[1]: the bucket. ARGV[1]: microseconds between requests; ARGV[2]: burst tolerance in
# microseconds. The key holds the theoretical arrival time (TAT) of the next free slot, in
# microseconds on Redis's clock. Returns the microseconds to wait for the slot reserved.
_GCRA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now - tolerance)
local after = slot + interval
local ttl = math.ceil((after - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', ttl)
return string.format('%.0f', slot - now)
"""


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def bucket_key(key: str | None, token: str | None, scope: str) -> str:
    """``togai-ingest:rate:<organisation>:<scope>``; the organisation is ``key`` or the first 16
    hex digits of the token's SHA-256 (the token itself never reaches Redis)."""
    if key is None:
        token = token if token is not None else os.environ.get(_TOKEN_ENV)
        if not token:
            raise ConfigurationError(
                f"SharedRateLimit needs key=..., token=..., or {_TOKEN_ENV} to name the bucket"
            )
        key = hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"{KEY_PREFIX}:{key}:{scope}"


class RedisBucket:
    """The shared GCRA bucket in Redis, with the ``Limiter`` protocol.

    When Redis fails (an error or a socket timeout of ``timeout`` seconds), ``acquire``
    returns at once: the caller's own limit applies (``SharedRateLimit`` puts an adaptive
    ``RateLimiter`` in front). Redis is tried again after ``retry_interval`` seconds.
    """

    def __init__(
        self,
        url: str,
        per_second: float,
        *,
        key: str,
        burst: int = 1,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
    ) -> None:
        try:
            import redis
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - the extra is installed in development
            raise ConfigurationError(
                "SharedRateLimit needs redis-py: pip install 'togai-ingestion-client[redis]'"
            ) from exc
        self.url = url
        self.per_second = per_second
        self.key = key
        self.burst = max(1, burst)
        self.timeout = timeout
        self.retry_interval = retry_interval
        interval = 1_000_000 / per_second
        self._args = [f"{interval:.0f}", f"{(self.burst - 1) * interval:.0f}"]
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._redis = redis.Redis.from_url(url, **self._options(Retry))
        self._script = self._redis.register_script(_GCRA)
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, Any, Any]] = {}
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.failures = 0
        """Calls to Redis that failed."""

    def _options(self, retry: Any) -> dict[str, Any]:
        from redis.backoff import NoBackoff

        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": retry(NoBackoff(), 0),  # a failed call falls back at once
        }

    # -- availability ---------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """False while Redis is unreachable and the local limit alone applies."""
        return self._down_since is None

    def _worth_trying(self) -> bool:
        return self._down_since is None or time.monotonic() >= self._retry_at

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self._retry_at = time.monotonic() + self.retry_interval
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "shared rate limit: Redis at %s unreachable (%s: %s); falling back to the adaptive "
            "local limit, trying Redis again every %.3g s",
            _redacted(self.url),
            type(error).__name__,
            error,
            self.retry_interval,
        )

    def _answered(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            down, self._down_since = self._down_since, None
        if down is not None:
            log.warning(
                "shared rate limit: Redis at %s answers again after %.1f s; shared limit restored",
                _redacted(self.url),
                time.monotonic() - down,
            )

    # -- the limiter protocol -------------------------------------------------------------

    def reserve(self) -> float | None:
        """Reserve the next shared slot: seconds to wait for it, or None if Redis failed."""
        if not self._worth_trying():
            return None
        try:
            answer = self._script(keys=[self.key], args=self._args)
        except self._errors as error:
            self._failed(error)
            return None
        self._answered()
        return int(answer) / 1_000_000

    async def reserve_async(self) -> float | None:
        if not self._worth_trying():
            return None
        try:
            answer = await self._async_script()(keys=[self.key], args=self._args)
        except self._errors as error:
            self._failed(error)
            return None
        self._answered()
        return int(answer) / 1_000_000

    def _async_script(self) -> Any:
        """A redis.asyncio client per event loop (its connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        found = self._async.get(id(loop))
        if found is None or found[0] is not loop:
            import redis.asyncio
            import redis.asyncio.retry

            client = redis.asyncio.Redis.from_url(
                self.url, **self._options(redis.asyncio.retry.Retry)
            )
            found = (loop, client, client.register_script(_GCRA))
            self._async = {k: v for k, v in self._async.items() if not v[0].is_closed()} | {
                id(loop): found
            }
        return found[2]

    def acquire(self) -> None:
        wait = self.reserve()
        if wait is not None and wait > 0:
            time.sleep(wait)

    async def acquire_async(self) -> None:
        wait = await self.reserve_async()
        if wait is not None and wait > 0:
            await asyncio.sleep(wait)

    def observe(self, status: int | None, retry_after: float | None) -> None:
        """The shared bucket keeps its rate; the adaptive local limit in front adapts."""

    def after_fork(self) -> RedisBucket:
        return RedisBucket(
            self.url,
            self.per_second,
            key=self.key,
            burst=self.burst,
            timeout=self.timeout,
            retry_interval=self.retry_interval,
        )

    def close(self) -> None:
        self._redis.close()

    def __repr__(self) -> str:
        return (
            f"RedisBucket({_redacted(self.url)!r}, per_second={self.per_second}, key={self.key!r})"
        )


class SharedRateLimit(RateLimiter):
    """A rate limit shared through Redis by every process and host that uses the same key.

    ``url``: a redis-py URL (``redis://[:password@]host:6379/0``, ``rediss://`` for TLS).
    ``per_second``: the shared rate, by default Togai's quota from the OpenAPI document.
    ``key``: the organisation's name for the bucket; by default a hash of ``token`` or of
    ``$TOGAI_API_TOKEN`` (processes with the same token share a bucket). ``scope`` names the
    endpoint or group of endpoints (default ``ingest``: ``/ingest`` and ``/ingestBatch``
    together, which never exceeds a per-endpoint quota). ``burst``: requests the fleet may
    send at once after a quiet spell (default a tenth of a second's worth, 5 at 50/s: a slot
    nobody was ready for is not lost). ``timeout`` bounds every Redis call;
    ``retry_interval`` is how often Redis is tried again while it is unreachable.

    It is an adaptive ``RateLimiter`` (429s and ``Retry-After`` cut the rate of this
    process) with the Redis bucket as its ``inner`` limiter.
    """

    def __init__(
        self,
        url: str,
        per_second: float | None = None,
        *,
        key: str | None = None,
        token: str | None = None,
        scope: str = "ingest",
        burst: int | None = None,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        adaptive: bool = True,
    ) -> None:
        rate = (
            spec().requests_per_second
            if per_second is None
            else _positive_rate(per_second, "per_second")
        )
        self.bucket = RedisBucket(
            url,
            rate,
            key=bucket_key(key, token, scope),
            burst=max(1, round(rate / 10)) if burst is None else burst,
            timeout=timeout,
            retry_interval=retry_interval,
        )
        super().__init__(rate, adaptive=adaptive, inner=self.bucket)

    @property
    def shared(self) -> bool:
        """False while Redis is unreachable and the local limit alone applies."""
        return self.bucket.shared

    def _inner_paces(self) -> bool:
        return self.bucket.shared

    def after_fork(self) -> SharedRateLimit:
        child = SharedRateLimit.__new__(SharedRateLimit)
        child.bucket = self.bucket.after_fork()
        RateLimiter.__init__(
            child,
            self.per_second,
            adaptive=self.adaptive,
            increase=self.increase,
            min_per_second=self.min_per_second,
            inner=child.bucket,
        )
        child._rate = self.rate
        return child

    def close(self) -> None:
        self.bucket.close()

    def __repr__(self) -> str:
        return (
            f"SharedRateLimit({_redacted(self.bucket.url)!r}, per_second={self.per_second}, "
            f"key={self.bucket.key!r}, rate={self.rate:.3g})"
        )
