"""Round trips of the generated models, and their JSON against the document's schemas.

The Hypothesis strategies build events that satisfy the `Event` schema, with every limit read
from the OpenAPI document (so a limit changed there changes what is generated here).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from togai_client import AuthenticatedClient
from togai_client.api.event_ingestion import ingest_batch
from togai_client.models import (
    ErrorResponse,
    Event,
    EventAttribute,
    EventDimensions,
    IngestBatchEventRequest,
    IngestBatchEventResponse,
    IngestError,
    IngestEventRequest,
)
from togai_client.types import UNSET, Unset

from tests.prism import (
    JSON_MEDIA_TYPE,
    PrismServer,
    SchemaValidator,
    ViolationRecorder,
    load_spec,
    resolve,
    schema_keyword,
    schema_validator,
)

SPEC = load_spec()


def limit(schema: str, prop: str, keyword: str) -> int:
    value: int = schema_keyword(SPEC, schema, prop, keyword)
    return value


@functools.cache
def validator(schema: str) -> SchemaValidator:
    return schema_validator(SPEC, f"/components/schemas/{schema}")


def validate(schema: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components/schemas/`schema`."""
    validator(schema).validate(instance)


def is_valid(schema: str, instance: Any) -> bool:
    return validator(schema).is_valid(instance)


# --- strategies ----------------------------------------------------------------------------

# Any Unicode except lone surrogates, which JSON text in UTF-8 cannot carry.
CHARACTERS = st.characters(exclude_categories=["Cs"])


def text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(CHARACTERS, min_size=min_size, max_size=max_size)


# RFC 3339 offsets are whole minutes, strictly within a day; Python's also allow seconds,
# which isoformat() would write as +05:30:15 (not a date-time: see test_ingest.py).
OFFSETS: st.SearchStrategy[tzinfo] = st.one_of(
    st.just(UTC),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    ),
)
AWARE_DATETIMES = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=OFFSETS
)

ATTRIBUTES = st.builds(
    EventAttribute,
    attribute_name=text(limit("EventAttribute", "attributeName", "maxLength")),
    attribute_value=text(limit("EventAttribute", "attributeValue", "maxLength")),
    attribute_value_unit=st.one_of(
        st.just(UNSET), text(limit("EventAttribute", "attributeValueUnit", "maxLength"))
    ),
)
# `dimensions` has no limit in the document; keep the generated ones small.
DIMENSIONS = st.dictionaries(text(40), text(60), max_size=6).map(EventDimensions.from_dict)
EVENTS = st.builds(
    Event,
    event_name=text(limit("Event", "eventName", "maxLength")),
    id=text(limit("Event", "id", "maxLength")),
    event_timestamp=AWARE_DATETIMES,
    account_id=text(limit("Event", "accountId", "maxLength")),
    event_attributes=st.lists(ATTRIBUTES, max_size=limit("Event", "eventAttributes", "maxItems")),
    dimensions=DIMENSIONS,
)
BATCHES = st.builds(
    IngestBatchEventRequest,
    events=st.lists(
        EVENTS,
        min_size=limit("IngestBatchEventRequest", "events", "minItems"),
        max_size=limit("IngestBatchEventRequest", "events", "maxItems"),
    ),
)
INGEST_ERRORS = st.builds(
    IngestError,
    message=st.one_of(st.just(UNSET), text(200)),
    event_payload=st.one_of(st.just(UNSET), EVENTS),
)
BATCH_RESPONSES = st.builds(
    IngestBatchEventResponse,
    errors=st.lists(
        INGEST_ERRORS, max_size=limit("IngestBatchEventResponse", "errors", "maxItems")
    ),
)
ERROR_RESPONSES = st.builds(
    ErrorResponse, message=text(limit("ErrorResponse", "message", "maxLength"))
)


# --- property-based round trips ------------------------------------------------------------


@given(EVENTS)
def test_event_round_trip_and_schema(event: Event) -> None:
    wire = event.to_dict()
    validate("Event", wire)
    again = Event.from_dict(wire)
    assert again == event
    assert again.event_timestamp.utcoffset() == event.event_timestamp.utcoffset()
    assert again.to_dict() == wire


@given(EVENTS)
def test_ingest_event_request_round_trip(event: Event) -> None:
    request = IngestEventRequest(event=event)
    validate("IngestEventRequest", request.to_dict())
    assert IngestEventRequest.from_dict(request.to_dict()) == request


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(BATCHES)
def test_batch_request_round_trip(batch: IngestBatchEventRequest) -> None:
    validate("IngestBatchEventRequest", batch.to_dict())
    assert IngestBatchEventRequest.from_dict(batch.to_dict()) == batch


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(BATCH_RESPONSES)
def test_batch_response_round_trip(response: IngestBatchEventResponse) -> None:
    wire = response.to_dict()
    validate("IngestBatchEventResponse", wire)
    again = IngestBatchEventResponse.from_dict(wire)
    assert again == response
    for error in again.errors:
        assert isinstance(error.message, str | Unset)
        if isinstance(error.event_payload, Event):
            assert error.event_payload.event_timestamp.tzinfo is not None


@given(ERROR_RESPONSES)
def test_error_response_round_trip(error: ErrorResponse) -> None:
    validate("ErrorResponse", error.to_dict())
    assert ErrorResponse.from_dict(error.to_dict()) == error


@given(ATTRIBUTES)
def test_attribute_round_trip_keeps_unit_presence(attribute: EventAttribute) -> None:
    wire = attribute.to_dict()
    validate("EventAttribute", wire)
    assert ("attributeValueUnit" in wire) == (not isinstance(attribute.attribute_value_unit, Unset))
    assert EventAttribute.from_dict(wire) == attribute


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=BATCHES)
def test_generated_batches_are_accepted_by_prism(
    prism: PrismServer, batch: IngestBatchEventRequest
) -> None:
    """What the strategies call schema-valid, Prism (an independent validator) accepts too."""
    recorder = ViolationRecorder()  # per example: function-scoped fixtures do not mix with @given
    with AuthenticatedClient(
        base_url=prism.url,
        token="property-token",
        timeout=httpx.Timeout(15.0),
        httpx_args={"event_hooks": recorder.sync_hooks()},
    ) as client:
        response = ingest_batch.sync_detailed(client=client, body=batch)
    assert len(recorder.exchanges) == 1
    recorder.assert_clean()
    assert response.status_code == 202
    assert response.parsed == IngestBatchEventResponse(errors=[])


# --- examples and edges --------------------------------------------------------------------


def spec_example(name: str) -> Any:
    return resolve(SPEC, SPEC["components"]["examples"][name])["value"]


def test_spec_request_examples_round_trip() -> None:
    single = spec_example("IngestEventRequestExample")
    batch = spec_example("IngestBatchEventRequestExample")
    parsed_single = IngestEventRequest.from_dict(single)
    assert parsed_single.to_dict()["event"]["dimensions"] == single["event"]["dimensions"]
    assert IngestEventRequest.from_dict(parsed_single.to_dict()) == parsed_single
    validate("IngestEventRequest", parsed_single.to_dict())
    parsed_batch = IngestBatchEventRequest.from_dict(batch)
    assert len(parsed_batch.events) == len(batch["events"])
    assert IngestBatchEventRequest.from_dict(parsed_batch.to_dict()) == parsed_batch
    validate("IngestBatchEventRequest", parsed_batch.to_dict())


def test_spec_207_example_round_trips_with_z_timestamp() -> None:
    media = SPEC["paths"]["/ingestBatch"]["post"]["responses"]["207"]["content"][JSON_MEDIA_TYPE]
    wire = next(iter(media["examples"].values()))["value"]
    parsed = IngestBatchEventResponse.from_dict(wire)
    payload = parsed.errors[0].event_payload
    assert isinstance(payload, Event)
    assert wire["errors"][0]["eventPayload"]["eventTimestamp"].endswith("Z")
    assert payload.event_timestamp == datetime(2019, 1, 1, tzinfo=UTC)
    assert payload.event_timestamp.utcoffset() == timedelta(0)
    # Z comes back as +00:00: the same instant, still valid against the schema.
    assert payload.to_dict()["eventTimestamp"] == "2019-01-01T00:00:00+00:00"
    validate("IngestBatchEventResponse", parsed.to_dict())
    assert IngestBatchEventResponse.from_dict(parsed.to_dict()) == parsed


@pytest.mark.parametrize(
    ("schema", "prop"),
    [
        ("Event", "eventName"),
        ("Event", "id"),
        ("Event", "accountId"),
        ("EventAttribute", "attributeName"),
        ("EventAttribute", "attributeValue"),
        ("EventAttribute", "attributeValueUnit"),
    ],
)
def test_schema_check_is_not_vacuous_for_max_length(schema: str, prop: str) -> None:
    """The validator used above applies the document's limits: at the limit ok, over it not."""
    base: dict[str, Any] = {
        "Event": spec_example("IngestEventRequestExample")["event"],
        "EventAttribute": {"attributeName": "a", "attributeValue": "1"},
    }[schema]
    size = limit(schema, prop, "maxLength")
    assert is_valid(schema, {**base, prop: "é" * size})
    assert not is_valid(schema, {**base, prop: "é" * (size + 1)})


def test_schema_check_is_not_vacuous_for_timestamps_and_shape() -> None:
    event = spec_example("IngestEventRequestExample")["event"]
    assert is_valid("Event", event)
    naive = Event.from_dict(event)
    naive.event_timestamp = naive.event_timestamp.replace(tzinfo=None)
    assert not is_valid("Event", naive.to_dict())  # no offset: not a date-time
    assert not is_valid("Event", {**event, "eventTimestamp": "2022-06-15T07:30:35+05:30:15"})
    assert not is_valid("Event", {**event, "extra": "x"})
    assert not is_valid("Event", {**event, "dimensions": {"n": 1}})
    too_many = [{"attributeName": "a", "attributeValue": "1"}] * (
        limit("Event", "eventAttributes", "maxItems") + 1
    )
    assert not is_valid("Event", {**event, "eventAttributes": too_many})
