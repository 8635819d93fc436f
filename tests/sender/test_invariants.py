"""Issue 7's background-sender classes: snapshot at enqueue, every unconfirmed event named at
close, enqueue racing close, flush while others enqueue, bad settings refused, nothing but a
TogaiError out, a raising callback."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import pytest

from tests import openapi
from tests.conftest import SECRET
from tests.faultserver import FaultServer, Slow
from tests.sender.producers import Producers
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, RejectedEvent, RetryPolicy, TogaiError
from togai_ingest.errors import ClosedError, ConfigurationError, QueueFullError, ValidationError


def _client(url: str, **options: Any) -> Client:
    options.setdefault("retry", RetryPolicy(max_retries=0))
    return Client(SECRET, base_url=url, rate_limit=None, **options)


# --- Snapshot: what is sent is what the event was when enqueue received it.


def test_one_dict_reused_with_new_values_is_ten_events() -> None:
    with FaultServer(token=SECRET) as srv:
        with BackgroundSender(_client(srv.url), flush_interval=60) as sender:
            event = wire_event()
            for i in range(10):
                event["id"] = f"evt-{i}"
                sender.enqueue(event)
            report = sender.flush(timeout=10)
        assert report.accepted == 10
    assert sorted(srv.ledger) == sorted(f"evt-{i}" for i in range(10))
    assert set(srv.deliveries.values()) == {1}


def test_changes_at_any_depth_after_enqueue_change_nothing_sent_or_reported() -> None:
    rejected: list[RejectedEvent] = []
    with FaultServer(token=SECRET, reject_if=lambda i: i.startswith("no-")) as srv:
        sender = BackgroundSender(_client(srv.url), flush_interval=60, on_rejected=rejected.extend)
        events = [wire_event(id="yes-1"), wire_event(id="no-1")]
        for event in events:
            sender.enqueue(event)
        for event in events:  # every level of the caller's objects
            event["accountId"] = "mutated"
            event["eventAttributes"][0]["attributeValue"] = "999"
            event["eventAttributes"].append({"attributeName": "x", "attributeValue": "1"})
            event["dimensions"]["region"] = "mutated"
            event["id"] = "mutated"
        report = sender.close(timeout=10)
    assert srv.ledger["yes-1"] == wire_event(id="yes-1")
    assert [r.event for r in rejected] == [wire_event(id="no-1")]
    assert [r.event for r in report.rejected] == [wire_event(id="no-1")]
    assert "mutated" not in srv.ledger


# --- close names every unconfirmed event; so does interpreter exit (test_sender.py).


def test_close_that_gives_up_names_every_event_in_flight_and_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FaultServer(token=SECRET, script=[Slow(2.0)]) as srv:
        sender = BackgroundSender(_client(srv.url, timeout=10), flush_interval=0.01, batch_size=3)
        for i in range(7):
            sender.enqueue(wire_event(id=f"e{i}"))
        time.sleep(0.3)  # the worker sent e0..e2 and waits for the slow answer
        with caplog.at_level(logging.ERROR, logger="togai_ingest"):
            sender.exit_timeout = 0.3
            sender._close_and_log("test close")
        report = sender.close()  # already closed: the report since then
    text = caplog.text
    for i in range(7):
        assert f"'e{i}'" in text, f"e{i} not named in the ERROR log"
    assert report.in_flight == [] and report.undelivered == []


def test_close_report_lists_in_flight_events_by_id() -> None:
    with FaultServer(token=SECRET, script=[Slow(2.0)]) as srv:
        sender = BackgroundSender(_client(srv.url, timeout=10), flush_interval=0.01, batch_size=2)
        for i in range(5):
            sender.enqueue(wire_event(id=f"e{i}"))
        time.sleep(0.3)
        report = sender.close(timeout=0.2)
    assert [e["id"] for e in report.in_flight] == ["e0", "e1"]
    assert [e["id"] for e in report.undelivered] == ["e2", "e3", "e4"]
    assert sorted(report.unconfirmed_ids()) == [f"e{i}" for i in range(5)]


# --- enqueue racing close: every event raised, or is in exactly one outcome.


@pytest.mark.parametrize("when_full", ["block", "raise"])
def test_enqueue_racing_close_leaves_no_event_unreported(when_full: str) -> None:
    with FaultServer(token=SECRET, latency=0.002) as srv:
        sender = BackgroundSender(
            _client(srv.url),
            flush_interval=0.01,
            batch_size=10,
            max_queue_size=50,
            when_full=when_full,  # type: ignore[arg-type]
            block_timeout=5,
        )
        producers = Producers(
            lambda event_id: sender.enqueue(wire_event(id=event_id)),
            "t",
            (ClosedError, QueueFullError),
        )
        producers.start()
        time.sleep(0.05)
        report = sender.close(timeout=0.02)  # gives up: some in flight, some never sent
        producers.join()
        returned, refused = producers.returned, producers.refused
        late = sender.close()  # what the worker finished after the first report
        time.sleep(0.3)
    reported = [e["id"] for e in report.undelivered + report.in_flight]
    accepted = report.accepted + late.accepted
    assert not set(refused) & set(returned)
    assert len(reported) == len(set(reported))
    assert not set(reported) & set(refused)
    # Every event whose enqueue returned is either confirmed by the server or named.
    assert set(returned) <= set(srv.ledger) | set(reported)
    assert accepted <= len(srv.ledger)
    assert len(returned) + len(refused) == 1600


# --- flush waits for what was queued when it was called, not for an empty queue.


def test_flush_returns_while_other_threads_keep_enqueueing() -> None:
    with FaultServer(token=SECRET, latency=0.005) as srv:
        sender = BackgroundSender(_client(srv.url), flush_interval=0.05, batch_size=20)
        stop = threading.Event()

        def produce(slot: int) -> None:
            i = 0
            while not stop.is_set():
                sender.enqueue(wire_event(id=f"p{slot}-{i}"))
                i += 1
                time.sleep(0.0005)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        sender.enqueue(wire_event(id="before-flush"))
        done = threading.Event()
        result: list[Any] = []

        def flush() -> None:
            result.append(sender.flush())
            done.set()

        flusher = threading.Thread(target=flush)
        flusher.start()
        finished = done.wait(10)
        stop.set()
        for thread in threads:
            thread.join()
        sender.close(timeout=10)
    assert finished, "flush() did not return while other threads kept enqueueing"
    assert "before-flush" in srv.ledger


# --- Settings that cannot work are refused at construction.


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 0},
        {"batch_size": openapi.limit("IngestBatchEventRequest", "events", "maxItems") + 1},
        {"batch_size": True},
        {"max_queue_size": 0},
        {"max_queue_size": -1},
        {"flush_interval": -1},
        {"flush_interval": math.nan},
        {"flush_interval": math.inf},
        {"block_timeout": -0.5},
        {"block_timeout": math.nan},
        {"exit_timeout": math.nan},
        {"max_spool_bytes": 0},
        {"when_full": "drop"},
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any]) -> None:
    client = _client("http://127.0.0.1:9")
    with pytest.raises(ConfigurationError):
        BackgroundSender(client, **options)


@pytest.mark.parametrize("timeout", [-1.0, math.nan, math.inf])
def test_bad_flush_and_close_timeouts_are_refused(timeout: float) -> None:
    sender = BackgroundSender(_client("http://127.0.0.1:9"))
    with pytest.raises(ConfigurationError):
        sender.flush(timeout)
    with pytest.raises(ConfigurationError):
        sender.close(timeout)
    assert sender.close().ok


# --- Nothing but a TogaiError leaves enqueue; a raising callback kills nothing.


@pytest.mark.parametrize(
    "event",
    [
        wire_event(accountId="a\ud800"),  # a lone surrogate
        wire_event(dimensions={1: "x"}),  # a key that is not a string
        wire_event(accountId=b"bytes"),
        {"id": "x"},
        "not an event",
        None,
        wire_event(eventAttributes=[{"attributeName": "n", "attributeValue": math.nan}]),
    ],
)
def test_enqueue_raises_only_togai_errors(event: Any) -> None:
    sender = BackgroundSender(_client("http://127.0.0.1:9"))
    with pytest.raises(ValidationError):
        sender.enqueue(event)
    assert sender.close().ok


def test_enqueue_after_close_raises_a_named_error() -> None:
    sender = BackgroundSender(_client("http://127.0.0.1:9"))
    sender.close()
    with pytest.raises(ClosedError) as raised:
        sender.enqueue(wire_event(id="late"))
    assert isinstance(raised.value, TogaiError)
    assert "late" in str(raised.value)


def test_a_raising_callback_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(events: list[RejectedEvent]) -> None:
        raise RuntimeError("callback bug")

    with FaultServer(token=SECRET, reject_if=lambda i: i.startswith("bad")) as srv:
        sender = BackgroundSender(
            _client(srv.url), flush_interval=0.01, batch_size=1, on_rejected=explode
        )
        with caplog.at_level(logging.ERROR, logger="togai_ingest"):
            sender.enqueue(wire_event(id="bad-1"))
            sender.flush(timeout=10)
            sender.enqueue(wire_event(id="good-1"))
            report = sender.close(timeout=10)
    assert "callback raised" in caplog.text
    assert "good-1" in srv.ledger
    assert report.accepted == 1
