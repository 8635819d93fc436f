"""Invariant 2, snapshot: an event is what it was when ``send``/``ingest``/``encode_event``
received it. Changing the caller's object afterwards, at any depth, changes nothing that is
sent or reported; a reused object yielded with new values each time is N events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.hardening.conftest import client_for, event
from tests.hostile import Reply, Request, replies, serving
from togai_ingest import encode_event, new_event, to_wire


def test_a_reused_dict_yielded_with_new_values_is_n_events() -> None:
    def reuse() -> Iterator[dict[str, Any]]:
        shared = event(0)
        for i in range(10):
            shared["id"] = f"evt-{i}"
            shared["eventAttributes"][0]["attributeValue"] = str(i)
            shared["dimensions"]["n"] = str(i)
            yield shared

    with serving(replies([])) as server, client_for(server.url) as client:
        result = client.send(reuse(), batch_size=100)
    assert (result.accepted, result.total) == (10, 10)
    sent = [e for r in server.requests for e in r.json()["events"]]
    assert [e["id"] for e in sent] == [f"evt-{i}" for i in range(10)]
    assert [e["eventAttributes"][0]["attributeValue"] for e in sent] == [str(i) for i in range(10)]
    assert [e["dimensions"]["n"] for e in sent] == [str(i) for i in range(10)]


def test_what_is_reported_is_what_was_sent_not_what_the_caller_changed_later() -> None:
    events = [event(i) for i in range(3)]

    def script(request: Request) -> Reply:
        # The caller changes its objects while the request is in flight.
        for e in events:
            e["id"] = "changed"
            e["eventAttributes"][0]["attributeValue"] = "changed"
            e["dimensions"].clear()
        ids = request.event_ids()
        body = {"errors": [{"message": "no", "eventPayload": {"id": ids[1]}}]}
        return Reply(207, json.dumps(body).encode())

    with serving(script) as server, client_for(server.url) as client:
        result = client.send(events)
    assert result.accepted == 2
    [rejected] = result.rejected
    assert rejected.index == 1 and rejected.event["id"] == "evt-1"
    assert rejected.event["eventAttributes"][0]["attributeValue"] == "1"
    assert rejected.event["dimensions"] == {"region": "eu"}
    assert server.requests[0].event_ids() == ["evt-0", "evt-1", "evt-2"]


def test_encode_event_and_to_wire_are_snapshots_at_every_depth() -> None:
    original = event(1)
    encoded = encode_event(original)
    wire = to_wire(original)
    original["eventAttributes"][0]["attributeValue"] = "999"
    original["eventAttributes"].append({"attributeName": "x", "attributeValue": "y"})
    original["dimensions"]["region"] = "us"
    assert encoded.wire() == wire == event(1)
    assert wire is not original and wire["eventAttributes"] is not original["eventAttributes"]
    first, second = encoded.wire(), encoded.wire()
    first["id"] = "mutated"
    assert second["id"] == "evt-1"  # every wire() is a fresh dict


def test_a_model_changed_after_encoding_changes_nothing() -> None:
    model = new_event("apiCall", "acct-1", {"calls": 1}, {"region": "eu"}, id="evt-m")
    encoded = encode_event(model)
    model.event_attributes[0].attribute_value = "7"
    model.dimensions.additional_properties["region"] = "us"
    model.id = "other"
    assert encoded.id == "evt-m"
    assert encoded.wire()["eventAttributes"][0]["attributeValue"] == "1"
    assert encoded.wire()["dimensions"] == {"region": "eu"}


def test_ingest_sends_the_event_as_it_was_passed() -> None:
    original = event("single")
    with serving(replies([])) as server, client_for(server.url) as client:
        client.ingest(original)
        original["id"] = "changed"
    assert server.requests[0].json()["event"]["id"] == "evt-single"


def test_ingest_batch_of_a_reused_dict_is_n_events() -> None:
    def reuse() -> Iterator[dict[str, Any]]:
        shared = event(0)
        for i in range(4):
            shared["id"] = f"evt-{i}"
            yield shared

    with serving(replies([])) as server, client_for(server.url) as client:
        outcome = client.ingest_batch(reuse())
    assert outcome.accepted == 4
    assert server.requests[0].event_ids() == [f"evt-{i}" for i in range(4)]
