"""The quota run: a slow, rate-limited sink and ``AsyncClient`` with its defaults."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import togai_ingest

from .contenders import BATCH, TOKEN
from .sink import SinkProcess

__all__ = ["QuotaResult", "quota_run"]


@dataclass(frozen=True)
class QuotaResult:
    quota: float
    """Requests per second (the sink's token bucket)."""
    latency: float
    """Seconds the sink waits before each answer."""
    batch: int
    sent: int
    seconds: float
    requests: int
    """Requests the sink received, 429s included."""
    throttled: int
    distinct: int
    """Distinct event ids the sink accepted."""
    metered: int
    """Events the sink accepted, re-sends included."""
    client: str
    """The client's ``SendResult``."""

    @property
    def events_per_second(self) -> float:
        return self.distinct / self.seconds

    @property
    def share_of_quota(self) -> float:
        return self.events_per_second / (self.quota * self.batch)

    @property
    def share_throttled(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.distinct


def quota_run(
    events: list[dict[str, Any]], *, latency: float = 0.05, quota: float = 50
) -> QuotaResult:
    """Send ``events`` (distinct ids) with ``AsyncClient`` defaults: the spec's rate limit,
    default retries and concurrency. The sink answers ``latency`` seconds late and 429 above
    ``quota`` requests per second."""
    with SinkProcess(latency=latency, quota=quota, track_ids=True) as sink:

        async def send() -> tuple[float, togai_ingest.SendResult]:
            async with togai_ingest.AsyncClient(TOKEN, base_url=sink.url) as client:
                started = time.perf_counter()
                result = await client.send(events, batch_size=BATCH)
                return time.perf_counter() - started, result

        seconds, result = asyncio.run(send())
        stats = sink.stats()
    return QuotaResult(
        quota=quota,
        latency=latency,
        batch=BATCH,
        sent=len(events),
        seconds=seconds,
        requests=stats.requests,
        throttled=stats.throttled,
        distinct=stats.distinct,
        metered=stats.events,
        client=str(result),
    )
