"""Metrics through the OpenTelemetry API, read back with the SDK's in-memory reader; checked
event for event against a fault-script run."""

from __future__ import annotations

import gc
import inspect
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

import togai_ingest.client
import togai_ingest.retry
from tests.conftest import SECRET
from tests.faults import Action, Error, Odd, Ok, Reject, ResetBefore, Throttle, Unavailable
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import Client, RateLimiter, RetryPolicy, metrics
from togai_ingest.errors import APIConnectionError, APITimeoutError
from togai_ingest.results import BatchOutcome

Points = dict[str, dict[tuple[tuple[str, Any], ...], Any]]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    found = InMemoryMetricReader()
    metrics.use_meter_provider(MeterProvider(metric_readers=[found]))
    try:
        yield found
    finally:
        metrics.use_meter_provider(None)


def read(reader: InMemoryMetricReader) -> Points:
    """{instrument: {sorted attributes: value (sums, gauges) or count (histograms)}}."""
    points: Points = {}
    data = reader.get_metrics_data()
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found = points.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    key = tuple(sorted(point.attributes.items())) if point.attributes else ()
                    if isinstance(point, HistogramDataPoint):
                        found[key] = point.count
                    else:
                        found[key] = getattr(point, "value", None)
    return points


def by(points: Points, name: str, attribute: str) -> dict[str, Any]:
    return {dict(k)[attribute]: v for k, v in points.get(name, {}).items()}


def test_the_recording_api(reader: InMemoryMetricReader) -> None:
    metrics.record_request(202, 0.05)
    metrics.record_request(202, 0.07)
    metrics.record_request(None, 1.0)
    metrics.record_retry(APITimeoutError("slow"))
    metrics.record_retry(APIConnectionError("reset"))
    metrics.record_retry("429")
    outcome = BatchOutcome(start=0, count=5, accepted=4)
    metrics.record_outcome(outcome)
    metrics.record_events("queue_full", 2)
    metrics.record_events("spooled", 0)  # nothing
    metrics.record_throttle_wait(0.25)
    metrics.record_throttle_wait(0.0)  # no wait: not a throttle wait
    points = read(reader)
    assert by(points, "togai_ingest.requests", "status") == {"202": 2, "none": 1}
    assert by(points, "togai_ingest.request.duration", "status") == {"202": 2, "none": 1}
    assert by(points, "togai_ingest.retries", "cause") == {
        "timeout": 1,
        "connection": 1,
        "429": 1,
    }
    assert by(points, "togai_ingest.events", "outcome") == {"accepted": 4, "queue_full": 2}
    assert points["togai_ingest.throttle.wait"] == {(): 1}


class Queue:
    def __init__(self, depth: int) -> None:
        self.depth = depth

    def size(self) -> int:
        return self.depth


def test_gauges_queue_depth_and_send_rate(reader: InMemoryMetricReader) -> None:
    # The gauges sum every live queue of the process (an earlier test's sender may still
    # hold one): count from what is there already.
    gc.collect()
    points = read(reader)
    depth = points.get("togai_ingest.queue.depth", {}).get((), 0)
    spooled = points.get("togai_ingest.spool.size", {}).get((), 0)
    first, second = Queue(3), Queue(4)
    metrics.observe_queue_depth(first.size)
    metrics.observe_queue_depth(second.size)
    metrics.observe_spool_size(lambda: 11)
    gc.collect()
    points = read(reader)
    before = points.get("togai_ingest.send_rate", {}).get((), 0.0)
    assert points["togai_ingest.queue.depth"][()] - depth == 7
    assert points["togai_ingest.spool.size"][()] - spooled == 11
    limiter = RateLimiter(1234.0)
    del second  # a gauge does not keep its source alive
    gc.collect()
    points = read(reader)
    assert points["togai_ingest.queue.depth"][()] - depth == 3
    assert points["togai_ingest.send_rate"][()] - before == pytest.approx(limiter.rate)


def test_without_opentelemetry_everything_is_a_no_op(
    reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_otel", None)
    monkeypatch.setattr(metrics, "_instruments", None)
    metrics.record_request(202, 0.1)
    metrics.record_retry("429")
    metrics.record_outcome(BatchOutcome(start=0, count=1, accepted=1))
    metrics.record_throttle_wait(1.0)
    assert "togai_ingest.requests" not in read(reader)


HOOKED = all(
    hook in inspect.getsource(module)
    for module, hook in [
        (togai_ingest.client, "metrics.record_request("),
        (togai_ingest.client, "metrics.record_outcome("),
        (togai_ingest.retry, "metrics.record_retry("),
    ]
)


@pytest.mark.skipif(not HOOKED, reason="the client does not call togai_ingest.metrics yet")
def test_metrics_match_a_fault_script_run_event_for_event(reader: InMemoryMetricReader) -> None:
    script: list[Action] = [
        Ok(),
        Throttle(retry_after=0),
        Ok(),
        Unavailable(retry_after=0),
        Reject(every=3),
        ResetBefore(),
        Ok(),
        Error(status=400),
        Odd(status=520),
    ]
    events = [wire_event(id=f"m{i}") for i in range(100)]
    for position in (4, 41, 77):
        del events[position]["accountId"]  # invalid: never sent
    policy = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.02)
    with FaultServer(token=SECRET, script=script) as srv:
        with Client(SECRET, base_url=srv.url, rate_limit=None, retry=policy) as client:
            result = client.send(events, batch_size=10)
    # After the server stopped: it logs a request after answering it, so only once its
    # handler threads are joined does the log hold every request the client saw answered.
    served = Counter("none" if r.status is None else str(r.status) for r in srv.requests)
    points = read(reader)

    assert by(points, "togai_ingest.events", "outcome") == {
        k: v
        for k, v in {
            "accepted": result.accepted,
            "rejected": result.n_rejected,
            "failed": result.n_failed,
            "invalid": result.n_invalid,
        }.items()
        if v
    }
    # Batch 5 (positions 40-49, one invalid) got the 400: its 9 events failed.
    assert (result.n_rejected, result.n_failed, result.n_invalid) == (3, 9, 3)
    assert by(points, "togai_ingest.requests", "status") == dict(served)
    assert by(points, "togai_ingest.request.duration", "status") == dict(served)
    # Every 429, 503, reset and 520 was retried once; the 400 was final.
    assert by(points, "togai_ingest.retries", "cause") == {
        "429": served["429"],
        "503": served["503"],
        "connection": served["none"],
        "520": served["520"],
    }
    assert sum(served.values()) == 10 + 4  # ten batches, four retries
