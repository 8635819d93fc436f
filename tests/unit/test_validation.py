"""Bad input: one test per constraint of the document; the message names the field and the
limit, and no request reaches the server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests import openapi
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import Client, Event, ValidationError, new_event
from togai_ingest.spec import spec


def limit(schema: str, prop: str, key: str) -> int:
    return int(spec().schema_property(schema, prop)[key])


def rejected(client: Client, server: FaultServer, event: Any) -> str:
    with pytest.raises(ValidationError) as info:
        client.ingest(event)
    assert server.arrivals == 0, "a request was sent for an invalid event"
    return str(info.value)


@pytest.mark.parametrize("prop", ["eventName", "id", "accountId"])
def test_event_string_max_length(client: Client, server: FaultServer, prop: str) -> None:
    n = limit("Event", prop, "maxLength")
    message = rejected(client, server, wire_event(**{prop: "x" * (n + 1)}))
    assert message == f"event.{prop}: longer than {n} characters"


@pytest.mark.parametrize("prop", ["attributeName", "attributeValue", "attributeValueUnit"])
def test_attribute_max_length(client: Client, server: FaultServer, prop: str) -> None:
    n = limit("EventAttribute", prop, "maxLength")
    attrs = wire_event()["eventAttributes"]
    attrs[1][prop] = "é" * (n + 1)
    message = rejected(client, server, wire_event(eventAttributes=attrs))
    assert message == f"event.eventAttributes[1].{prop}: longer than {n} characters"


def test_max_length_is_allowed_exactly(client: Client, server: FaultServer) -> None:
    n = limit("Event", "eventName", "maxLength")
    client.ingest(wire_event(eventName="x" * n))
    assert list(server.ledger) == ["evt-1"]
    assert server.arrivals == 1  # the counter the other tests rely on does count


def test_too_many_attributes(client: Client, server: FaultServer) -> None:
    n = limit("Event", "eventAttributes", "maxItems")
    attrs = [{"attributeName": f"a{i}", "attributeValue": "1"} for i in range(n + 1)]
    message = rejected(client, server, wire_event(eventAttributes=attrs))
    assert message == f"event.eventAttributes: more than {n} items"


@pytest.mark.parametrize("prop", list(spec().schemas["Event"]["required"]))
def test_required_event_property(client: Client, server: FaultServer, prop: str) -> None:
    event = wire_event()
    del event[prop]
    assert rejected(client, server, event) == f"event.{prop}: required property is missing"


@pytest.mark.parametrize("prop", list(spec().schemas["EventAttribute"]["required"]))
def test_required_attribute_property(client: Client, server: FaultServer, prop: str) -> None:
    attrs = wire_event()["eventAttributes"]
    del attrs[0][prop]
    message = rejected(client, server, wire_event(eventAttributes=attrs))
    assert message == f"event.eventAttributes[0].{prop}: required property is missing"


def test_unknown_event_property(client: Client, server: FaultServer) -> None:
    message = rejected(client, server, wire_event(event_name="snake"))
    allowed = ", ".join(openapi.properties("Event"))
    assert message == f"event.event_name: unknown property (allowed: {allowed})"


def test_unknown_attribute_property(client: Client, server: FaultServer) -> None:
    attrs = [{"attributeName": "a", "attributeValue": "1", "unit": "Miles"}]
    message = rejected(client, server, wire_event(eventAttributes=attrs))
    assert message.startswith("event.eventAttributes[0].unit: unknown property")


@pytest.mark.parametrize(
    ("value", "kind"), [(5, "int"), (None, "NoneType"), (["a"], "list"), (1.5, "float")]
)
def test_dimension_values_are_strings(
    client: Client, server: FaultServer, value: object, kind: str
) -> None:
    message = rejected(client, server, wire_event(dimensions={"region": value}))
    assert message == f"event.dimensions.region: must be a string, not {kind}"


def test_attribute_value_must_be_a_string(client: Client, server: FaultServer) -> None:
    attrs = [{"attributeName": "requests", "attributeValue": 1}]
    message = rejected(client, server, wire_event(eventAttributes=attrs))
    assert message == "event.eventAttributes[0].attributeValue: must be a string, not int"


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-03-01T12:00:00",
        "2024-03-01",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "",
        "2024-03-01T12:00:00+05:30:15",
        "2024-03-01 12:00:00Z",
    ],
)
def test_timestamp_needs_date_time_with_offset(
    client: Client, server: FaultServer, stamp: str
) -> None:
    message = rejected(client, server, wire_event(eventTimestamp=stamp))
    assert message.startswith("event.eventTimestamp: not an ISO 8601 date-time with a UTC offset")
    assert repr(stamp) in message


@pytest.mark.parametrize(
    "stamp", ["2024-03-01T12:00:00Z", "2024-03-01T12:00:00.123+05:30", "2024-03-01t12:00:00-08:00"]
)
def test_timestamps_with_offsets_pass(client: Client, server: FaultServer, stamp: str) -> None:
    client.ingest(wire_event(eventTimestamp=stamp))
    assert server.violations == []
    assert server.ledger["evt-1"]["eventTimestamp"] == stamp


def test_naive_datetime_model_is_rejected(client: Client, server: FaultServer) -> None:
    event = new_event("apiCall", "acct-1", {"requests": 1}, timestamp=datetime(2024, 3, 1, 12))
    message = rejected(client, server, event)
    assert message.startswith("event.eventTimestamp: naive datetime without a UTC offset")


def test_event_must_be_a_model_or_dict(client: Client, server: FaultServer) -> None:
    assert rejected(client, server, "apiCall").startswith("event: must be a togai_client")


def test_batch_names_the_event_index(client: Client, server: FaultServer) -> None:
    events = [wire_event(id=f"e{i}") for i in range(5)]
    limit = openapi.limit("EventAttribute", "attributeValue", "maxLength")
    events[3]["eventAttributes"][1]["attributeValue"] = "9" * (limit + 1)
    with pytest.raises(ValidationError) as info:
        client.ingest_batch(events)
    assert str(info.value) == (
        f"events[3].eventAttributes[1].attributeValue: longer than {limit} characters"
    )
    assert info.value.path == "events[3].eventAttributes[1].attributeValue"
    assert info.value.limit == limit
    assert server.arrivals == 0


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        (spec().max_batch_size + 1, f"more than {spec().max_batch_size} items"),
        (0, f"fewer than {spec().min_batch_size} items"),
    ],
)
def test_batch_size_limits(client: Client, server: FaultServer, size: int, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        client.ingest_batch([wire_event(id=f"e{i}") for i in range(size)])
    assert str(info.value) == f"events: {problem}"
    assert server.arrivals == 0


def test_send_reports_invalid_events_and_sends_the_rest(
    client: Client, server: FaultServer
) -> None:
    events = [wire_event(id=f"e{i}") for i in range(10)]
    limit = openapi.limit("Event", "accountId", "maxLength")
    events[2]["accountId"] = "a" * (limit + 1)
    events[7] = wire_event(id="e7", dimensions={"n": 7})
    result = client.send(events)
    assert result.accepted == 8
    assert [(i.index, str(i.error)) for i in result.invalid] == [
        (2, f"events[2].accountId: longer than {limit} characters"),
        (7, "events[7].dimensions.n: must be a string, not int"),
    ]
    assert sorted(server.ledger) == sorted(f"e{i}" for i in range(10) if i not in (2, 7))
    assert server.violations == []


def test_send_of_only_invalid_events_sends_nothing(client: Client, server: FaultServer) -> None:
    too_long = "x" * (openapi.limit("Event", "id", "maxLength") + 1)
    result = client.send([wire_event(id=too_long)])
    assert len(result.invalid) == 1
    assert server.arrivals == 0


def test_typed_models_and_dicts_give_the_same_wire_form() -> None:
    model = Event.from_dict(wire_event())
    to_dict: Callable[[], dict[str, Any]] = model.to_dict
    assert to_dict()["eventTimestamp"] == "2024-03-01T12:00:00+00:00"


def test_model_with_a_string_timestamp(client: Client, server: FaultServer) -> None:
    event = new_event("apiCall", "acct-1", {"requests": 1})
    event.event_timestamp = "2024-03-01T12:00:00Z"  # type: ignore[assignment]
    message = rejected(client, server, event)
    assert message == "event.eventTimestamp: must be a datetime, not str"


def test_model_with_a_plain_dict_of_dimensions(client: Client, server: FaultServer) -> None:
    event = new_event("apiCall", "acct-1", {"requests": 1})
    event.dimensions = {"region": "eu"}  # type: ignore[assignment]
    message = rejected(client, server, event)
    assert message.startswith("event: the model cannot be converted to JSON:")
    assert "to_dict" in message
