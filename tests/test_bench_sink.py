"""The benchmark's sink (``bench.sink``) works: a functional check, not a timing test."""

from __future__ import annotations

import httpx
import pytest

from bench.sink import Parse, SinkProcess, TokenBucket

EVENT = {
    "eventName": "apiCall",
    "id": "e-0",
    "eventTimestamp": "2024-06-01T00:00:00Z",
    "accountId": "acct-1",
    "eventAttributes": [{"attributeName": "requests", "attributeValue": "1"}],
    "dimensions": {"region": "eu-west-1"},
}


def _batch(first: int, count: int) -> dict[str, object]:
    return {"events": [dict(EVENT, id=f"e-{i}") for i in range(first, first + count)]}


def test_token_bucket_allows_its_capacity_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=50, capacity=50, now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(50))
    assert bucket.take(0.0) == pytest.approx(0.02)
    assert bucket.take(0.02) == 0.0  # one token came back after 1/50 s
    assert bucket.take(0.02) > 0


@pytest.mark.parametrize("parse", ["json", "count"])
def test_sink_accepts_batches_and_counts_events(parse: Parse) -> None:
    with SinkProcess(parse=parse) as sink, httpx.Client(base_url=sink.url) as http:
        batch = http.post("/ingestBatch", json=_batch(0, 100))
        missing = http.post("/ingest", json={"event": EVENT})  # no benchmark sends one
        stats = sink.stats()
    assert (batch.status_code, batch.json()) == (202, {"errors": []})
    assert missing.status_code == 404
    assert (stats.requests, stats.events, stats.bad, stats.throttled) == (2, 100, 1, 0)
    assert stats.cpu > 0


def test_sink_tracks_distinct_ids_and_refuses_unreadable_bodies() -> None:
    with SinkProcess(track_ids=True) as sink, httpx.Client(base_url=sink.url) as http:
        http.post("/ingestBatch", json=_batch(0, 10)).raise_for_status()
        http.post("/ingestBatch", json=_batch(5, 10)).raise_for_status()  # 5 re-sent
        garbage = http.post("/ingestBatch", content=b"not json")
        stats = sink.stats()
    assert garbage.status_code == 400
    assert (stats.events, stats.distinct, stats.bad) == (20, 15, 1)


def test_sink_over_quota_answers_429_with_retry_after() -> None:
    with SinkProcess(quota=5, track_ids=True) as sink, httpx.Client(base_url=sink.url) as http:
        answers = [http.post("/ingestBatch", json=_batch(i, 1)) for i in range(20)]
        stats = sink.stats()
    throttled = [a for a in answers if a.status_code == 429]
    assert throttled, "20 quick requests against a bucket of 5 must be throttled"
    assert all(a.headers["Retry-After"] == "1" for a in throttled)
    assert all(a.json() == {"message": "Rate limit exceeded"} for a in throttled)
    assert stats.throttled == len(throttled)
    assert stats.distinct == stats.events == 20 - len(throttled) >= 5
