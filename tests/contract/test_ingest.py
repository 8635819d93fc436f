"""The generated client, sync and async, against Prism serving the OpenAPI document.

Every test runs twice (`api` is parametrized "sync"/"async"). Every request goes through a
client wired to the violation recorder; the `recorder` fixture fails the test if Prism reported
a violation that the test did not expect, and `api` fails it if a request went unrecorded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import httpx
import pytest
from togai_client import AuthenticatedClient, Client
from togai_client.api.event_ingestion import ingest, ingest_batch
from togai_client.models import (
    ErrorResponse,
    Event,
    EventAttribute,
    EventDimensions,
    IngestBatchEventRequest,
    IngestBatchEventResponse,
    IngestEventRequest,
)
from togai_client.types import UNSET, Response

from tests.prism import (
    JSON_MEDIA_TYPE,
    PrismServer,
    ViolationRecorder,
    load_spec,
    resolve,
    schema_keyword,
)

TOKEN = "contract-test-token"
TIMEOUT = httpx.Timeout(15.0)  # Prism never answers a body that is not JSON: never wait forever
SPEC = load_spec()
PATHS = {"ingest": "/ingest", "ingest_batch": "/ingestBatch"}


def error_cases() -> list[tuple[str, str]]:
    """(operation, response key) for every documented error response, `default` included."""
    cases = []
    for operation, path in PATHS.items():
        for key in SPEC["paths"][path]["post"]["responses"]:
            if key == "default" or int(key) >= 400:
                cases.append((operation, str(key)))
    return cases


class Api:
    """Calls the generated operations the `mode` way ("sync" or "async").

    Clients are made per (Prefer header, token) and reused; all of them record into `recorder`.
    `calls` counts the operations called, to prove that every request was recorded.
    """

    def __init__(self, mode: str, base_url: str, recorder: ViolationRecorder) -> None:
        self.mode = mode
        self.base_url = base_url
        self.recorder = recorder
        self.calls = 0
        self._clients: dict[tuple[str | None, str | None], AuthenticatedClient | Client] = {}

    def client(
        self, *, prefer: str | None = None, token: str | None = TOKEN
    ) -> AuthenticatedClient:
        key = (prefer, token)
        if key not in self._clients:
            hooks = (
                self.recorder.sync_hooks() if self.mode == "sync" else self.recorder.async_hooks()
            )
            headers = {"Prefer": prefer} if prefer else {}
            args: dict[str, Any] = {"event_hooks": hooks}
            if token is None:
                self._clients[key] = Client(
                    base_url=self.base_url, headers=headers, timeout=TIMEOUT, httpx_args=args
                )
            else:
                self._clients[key] = AuthenticatedClient(
                    base_url=self.base_url,
                    token=token,
                    headers=headers,
                    timeout=TIMEOUT,
                    httpx_args=args,
                )
        # The generated operations are annotated to take an AuthenticatedClient only; a plain
        # Client is what an unauthenticated request looks like, so it is passed as one.
        return cast(AuthenticatedClient, self._clients[key])

    async def ingest(
        self, body: IngestEventRequest, *, prefer: str | None = None, token: str | None = TOKEN
    ) -> Response[Any | ErrorResponse]:
        client = self.client(prefer=prefer, token=token)
        self.calls += 1
        if self.mode == "sync":
            return ingest.sync_detailed(client=client, body=body)
        return await ingest.asyncio_detailed(client=client, body=body)

    async def ingest_parsed(
        self, body: IngestEventRequest, *, prefer: str | None = None
    ) -> Any | ErrorResponse | None:
        client = self.client(prefer=prefer)
        self.calls += 1
        if self.mode == "sync":
            return ingest.sync(client=client, body=body)
        return await ingest.asyncio(client=client, body=body)

    async def ingest_batch(
        self, body: IngestBatchEventRequest, *, prefer: str | None = None, token: str | None = TOKEN
    ) -> Response[ErrorResponse | IngestBatchEventResponse]:
        client = self.client(prefer=prefer, token=token)
        self.calls += 1
        if self.mode == "sync":
            return ingest_batch.sync_detailed(client=client, body=body)
        return await ingest_batch.asyncio_detailed(client=client, body=body)

    async def ingest_batch_parsed(
        self, body: IngestBatchEventRequest, *, prefer: str | None = None
    ) -> ErrorResponse | IngestBatchEventResponse | None:
        client = self.client(prefer=prefer)
        self.calls += 1
        if self.mode == "sync":
            return ingest_batch.sync(client=client, body=body)
        return await ingest_batch.asyncio(client=client, body=body)

    async def send(
        self, operation: str, event: Event, *, prefer: str | None = None, token: str | None = TOKEN
    ) -> Response[Any]:
        """`event` alone to /ingest, or as a batch of one to /ingestBatch."""
        if operation == "ingest":
            return await self.ingest(IngestEventRequest(event=event), prefer=prefer, token=token)
        batch = IngestBatchEventRequest(events=[event])
        return await self.ingest_batch(batch, prefer=prefer, token=token)

    async def aclose(self) -> None:
        for client in self._clients.values():
            if self.mode == "sync":
                client.get_httpx_client().close()
            else:
                await client.get_async_httpx_client().aclose()


@pytest.fixture(params=["sync", "async"])
async def api(
    request: pytest.FixtureRequest, prism: PrismServer, recorder: ViolationRecorder
) -> AsyncIterator[Api]:
    api = Api(request.param, prism.url, recorder)
    yield api
    await api.aclose()
    assert len(recorder.exchanges) == api.calls, (
        f"{api.calls} operation(s) called but {len(recorder.exchanges)} response(s) recorded: "
        "the recorder is not wired to every request"
    )


def make_event(
    *,
    name: str = "travelCompletedEvent",
    timestamp: datetime | None = None,
    attributes: list[EventAttribute] | None = None,
    dimensions: dict[str, str] | None = None,
    account_id: str = "ACC-1",
) -> Event:
    return Event(
        event_name=name,
        id=str(uuid.uuid4()),
        event_timestamp=timestamp or datetime(2024, 3, 1, 12, 30, 15, 123000, tzinfo=UTC),
        account_id=account_id,
        event_attributes=(
            attributes
            if attributes is not None
            else [EventAttribute("distanceTravelled", "50", attribute_value_unit="Miles")]
        ),
        dimensions=EventDimensions.from_dict(
            dimensions if dimensions is not None else {"location": "Seattle"}
        ),
    )


def max_event(index: int, spec: dict[str, Any]) -> Event:
    """An event at every limit of the document: longest strings, most attributes."""

    def text(schema: str, prop: str, seed: str) -> str:
        length: int = schema_keyword(spec, schema, prop, "maxLength")
        return (seed * length)[:length]

    attributes = [
        EventAttribute(
            attribute_name=text("EventAttribute", "attributeName", f"n{i}-"),
            attribute_value=text("EventAttribute", "attributeValue", str(i)),
            attribute_value_unit=text("EventAttribute", "attributeValueUnit", "u"),
        )
        for i in range(schema_keyword(spec, "Event", "eventAttributes", "maxItems"))
    ]
    return Event(
        event_name=text("Event", "eventName", "e"),
        id=text("Event", "id", f"{index:04d}-{uuid.uuid4()}-"),
        event_timestamp=datetime(2024, 3, 1, 12, 0, index % 60, tzinfo=UTC),
        account_id=text("Event", "accountId", "a"),
        event_attributes=attributes,
        dimensions=EventDimensions.from_dict({"location": "Seattle", "index": str(index)}),
    )


def expected_error_message(spec: dict[str, Any], path: str, key: str) -> str:
    response = resolve(spec, spec["paths"][path]["post"]["responses"][key])
    media = response["content"][JSON_MEDIA_TYPE]
    example = media["example"] if "example" in media else next(iter(media["examples"].values()))
    message: str = resolve(spec, example).get("value", example)["message"]
    return message


# --- success -------------------------------------------------------------------------------


async def test_ingest_one_event_is_accepted(api: Api, recorder: ViolationRecorder) -> None:
    event = make_event()
    response = await api.ingest(IngestEventRequest(event=event))

    assert response.status_code == 202
    assert response.content == b""
    assert response.parsed is None
    exchange = recorder.exchanges[-1]
    assert exchange.method == "POST" and exchange.url.endswith("/ingest")
    assert exchange.request_headers["authorization"] == f"Bearer {TOKEN}"
    assert exchange.json_body() == {"event": event.to_dict()}
    assert set(exchange.json_body()["event"]) == {
        "eventName",
        "id",
        "eventTimestamp",
        "accountId",
        "eventAttributes",
        "dimensions",
    }
    # The non-detailed variant (`sync` / `asyncio`) of the same operation.
    assert await api.ingest_parsed(IngestEventRequest(event=make_event())) is None


@pytest.mark.parametrize("size_name", ["one", "maxItems"])
async def test_ingest_batch_is_accepted(
    api: Api, recorder: ViolationRecorder, spec: dict[str, Any], size_name: str
) -> None:
    max_items: int = schema_keyword(spec, "IngestBatchEventRequest", "events", "maxItems")
    min_items: int = schema_keyword(spec, "IngestBatchEventRequest", "events", "minItems")
    if size_name == "one":
        assert min_items <= 1
        events = [make_event()]
    else:
        events = [max_event(index, spec) for index in range(max_items)]
    body = IngestBatchEventRequest(events=events)

    response = await api.ingest_batch(body)

    assert response.status_code == 202
    assert isinstance(response.parsed, IngestBatchEventResponse)
    assert response.parsed.errors == []
    assert response.parsed == IngestBatchEventResponse(errors=[])
    sent = recorder.exchanges[-1].json_body()
    assert len(sent["events"]) == len(events)
    assert sent == body.to_dict()

    parsed = await api.ingest_batch_parsed(body)
    assert isinstance(parsed, IngestBatchEventResponse) and parsed.errors == []


async def test_partial_failure_207_lists_rejected_events(api: Api, spec: dict[str, Any]) -> None:
    media = spec["paths"]["/ingestBatch"]["post"]["responses"]["207"]["content"][JSON_MEDIA_TYPE]
    example_name, example = next(iter(media["examples"].items()))
    expected_errors = resolve(spec, example)["value"]["errors"]
    assert expected_errors, "the 207 example must list at least one rejected event"

    response = await api.ingest_batch(
        IngestBatchEventRequest(events=[make_event(), make_event()]),
        prefer=f"code=207, example={example_name}",
    )

    assert response.status_code == 207
    parsed = response.parsed
    assert isinstance(parsed, IngestBatchEventResponse)
    assert len(parsed.errors) == len(expected_errors)
    for error, expected in zip(parsed.errors, expected_errors, strict=True):
        assert error.message == expected["message"]
        payload = error.event_payload
        assert isinstance(payload, Event)
        assert payload.id == expected["eventPayload"]["id"]
        timestamp = payload.event_timestamp
        assert isinstance(timestamp, datetime)
        assert timestamp.tzinfo is not None
        wire = expected["eventPayload"]["eventTimestamp"]
        assert timestamp == datetime.fromisoformat(wire)
        assert timestamp.utcoffset() == datetime.fromisoformat(wire).utcoffset()
        assert (
            payload.event_attributes[0].attribute_name
            == (expected["eventPayload"]["eventAttributes"][0]["attributeName"])
        )
        assert payload.dimensions.to_dict() == expected["eventPayload"]["dimensions"]
    # The parsed response round-trips through the models, `Z` timestamp and all.
    assert parsed == IngestBatchEventResponse.from_dict(resolve(spec, example)["value"])
    assert IngestBatchEventResponse.from_dict(parsed.to_dict()) == parsed

    parsed_again = await api.ingest_batch_parsed(
        IngestBatchEventRequest(events=[make_event()]), prefer="code=207"
    )
    assert parsed_again == parsed


# --- errors --------------------------------------------------------------------------------


def test_every_documented_error_status_is_covered() -> None:
    statuses = {key for _, key in error_cases()}
    assert {"400", "401", "422", "429", "503", "default"} <= statuses


@pytest.mark.parametrize(("operation", "key"), error_cases())
async def test_error_status_is_parsed_into_error_response(
    api: Api, spec: dict[str, Any], operation: str, key: str
) -> None:
    path = PATHS[operation]
    documented = spec["paths"][path]["post"]["responses"]
    # `default` stands for every undocumented status: ask for the first undocumented 5xx.
    status = (
        next(code for code in range(500, 600) if str(code) not in documented)
        if key == "default"
        else int(key)
    )

    response = await api.send(operation, make_event(), prefer=f"code={status}")

    assert response.status_code == status
    assert isinstance(response.parsed, ErrorResponse)
    assert response.parsed.message == expected_error_message(spec, path, key)
    assert ErrorResponse.from_dict(response.parsed.to_dict()) == response.parsed
    headers = resolve(spec, documented[key]).get("headers", {})
    for name in headers:
        assert name.lower() in {header.lower() for header in response.headers}, name


@pytest.mark.parametrize("operation", list(PATHS))
async def test_request_without_token_is_answered_401(
    api: Api, recorder: ViolationRecorder, spec: dict[str, Any], operation: str
) -> None:
    response = await api.send(operation, make_event(), token=None)

    assert response.status_code == 401
    assert isinstance(response.parsed, ErrorResponse)
    assert response.parsed.message == expected_error_message(spec, PATHS[operation], "401")
    assert "authorization" not in recorder.exchanges[-1].request_headers
    # Prism reports the missing credential as a violation of the security scheme: expected.
    violations = recorder.take_violations()
    assert [(v.location, v.code) for v in violations] == [(("request",), "401")], violations


# --- what goes on the wire -----------------------------------------------------------------


async def test_attribute_value_unit_present_and_absent(
    api: Api, recorder: ViolationRecorder
) -> None:
    with_unit = EventAttribute("distanceTravelled", "50", attribute_value_unit="Miles")
    without_unit = EventAttribute("timeSpent", "60")
    assert without_unit.attribute_value_unit is UNSET
    event = make_event(attributes=[with_unit, without_unit])

    response = await api.ingest(IngestEventRequest(event=event))

    assert response.status_code == 202
    sent = recorder.exchanges[-1].json_body()["event"]["eventAttributes"]
    assert sent == [
        {
            "attributeName": "distanceTravelled",
            "attributeValue": "50",
            "attributeValueUnit": "Miles",
        },
        {"attributeName": "timeSpent", "attributeValue": "60"},
    ]

    batch = IngestBatchEventRequest(events=[make_event(attributes=[without_unit]), event])
    batch_response = await api.ingest_batch(batch)
    assert batch_response.status_code == 202
    sent_batch = recorder.exchanges[-1].json_body()["events"]
    assert "attributeValueUnit" not in sent_batch[0]["eventAttributes"][0]
    assert sent_batch[1]["eventAttributes"][0]["attributeValueUnit"] == "Miles"


async def test_non_ascii_names_and_dimensions(api: Api, recorder: ViolationRecorder) -> None:
    event = make_event(
        name="Fahrt beendet – 東京 🚕",
        account_id="compte-é-ü-ß",
        attributes=[EventAttribute("distância", "五十", attribute_value_unit="Kilomètres")],
        dimensions={"städt": "Zürich", "都市": "東京", "مدينة": "القاهرة", "emoji 🚀": "ok ✓"},
    )

    response = await api.ingest(IngestEventRequest(event=event))
    batch_response = await api.ingest_batch(IngestBatchEventRequest(events=[event]))

    assert response.status_code == 202
    assert batch_response.status_code == 202
    for exchange in recorder.exchanges:
        assert exchange.request_headers["content-type"].startswith(JSON_MEDIA_TYPE)
        body = json.loads(exchange.request_body.decode("utf-8"))
        sent = body["event"] if "event" in body else body["events"][0]
        assert sent == event.to_dict()
        assert Event.from_dict(sent) == event
        assert sent["dimensions"]["都市"] == "東京"


TIMESTAMPS = [
    ("2022-06-15T07:30:35Z", timedelta(0)),
    ("2022-06-15T07:30:35.123Z", timedelta(0)),
    ("2022-06-15T07:30:35+00:00", timedelta(0)),
    ("2022-06-15T07:30:35+05:30", timedelta(hours=5, minutes=30)),
    ("2022-06-15T07:30:35.5-08:00", timedelta(hours=-8)),
    ("2022-12-31T23:59:59.999999+14:00", timedelta(hours=14)),
    ("2022-01-01T00:00:00-09:30", timedelta(hours=-9, minutes=-30)),
]


@pytest.mark.parametrize(("wire", "offset"), TIMESTAMPS, ids=[t for t, _ in TIMESTAMPS])
async def test_timestamps_with_z_and_offsets(
    api: Api, recorder: ViolationRecorder, wire: str, offset: timedelta
) -> None:
    event = Event.from_dict({**make_event().to_dict(), "eventTimestamp": wire})
    assert event.event_timestamp.utcoffset() == offset

    response = await api.ingest(IngestEventRequest(event=event))

    assert response.status_code == 202
    sent = recorder.exchanges[-1].json_body()["event"]["eventTimestamp"]
    # The client writes datetime.isoformat(): `Z` goes out as +00:00, the instant and the
    # offset are kept.
    assert sent == event.event_timestamp.isoformat()
    assert datetime.fromisoformat(sent) == datetime.fromisoformat(wire)
    assert datetime.fromisoformat(sent).utcoffset() == offset


async def test_aware_datetimes_in_several_zones(api: Api, recorder: ViolationRecorder) -> None:
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    events = [make_event(timestamp=datetime(2024, 2, 29, 23, 59, 59, tzinfo=z)) for z in zones]

    response = await api.ingest_batch(IngestBatchEventRequest(events=events))

    assert response.status_code == 202
    sent = [e["eventTimestamp"] for e in recorder.exchanges[-1].json_body()["events"]]
    assert sent == [
        "2024-02-29T23:59:59+00:00",
        "2024-02-29T23:59:59+05:30",
        "2024-02-29T23:59:59-08:00",
    ]


# --- what the generated client does not guard against (Prism reports it) -------------------


async def test_naive_datetime_goes_out_without_offset(
    api: Api, recorder: ViolationRecorder
) -> None:
    """The generated models accept a naive datetime and send it without offset: invalid."""
    event = make_event(timestamp=datetime(2024, 3, 1, 12, 0, 0))

    response = await api.ingest(IngestEventRequest(event=event))

    assert response.status_code == 422
    assert recorder.exchanges[-1].json_body()["event"]["eventTimestamp"] == "2024-03-01T12:00:00"
    violations = recorder.take_violations()
    assert [(v.location, v.code) for v in violations] == [
        (("request", "body", "event", "eventTimestamp"), "format")
    ]


async def test_offset_with_seconds_is_not_rfc3339(api: Api, recorder: ViolationRecorder) -> None:
    """Python allows offsets with seconds; isoformat() then writes +05:30:15, not RFC 3339."""
    zone = timezone(timedelta(hours=5, minutes=30, seconds=15))
    event = make_event(timestamp=datetime(2024, 3, 1, 12, 0, 0, tzinfo=zone))

    response = await api.ingest(IngestEventRequest(event=event))

    assert response.status_code == 422
    assert recorder.exchanges[-1].json_body()["event"]["eventTimestamp"].endswith("+05:30:15")
    assert [v.code for v in recorder.take_violations()] == ["format"]


async def test_limits_are_not_enforced_by_the_models(
    api: Api, recorder: ViolationRecorder, spec: dict[str, Any]
) -> None:
    """One event too many, and one character too many: the models send them, Prism refuses."""
    max_items: int = schema_keyword(spec, "IngestBatchEventRequest", "events", "maxItems")
    max_name: int = schema_keyword(spec, "Event", "eventName", "maxLength")

    too_many = await api.ingest_batch(
        IngestBatchEventRequest(events=[make_event() for _ in range(max_items + 1)])
    )
    too_long = await api.ingest(IngestEventRequest(event=make_event(name="x" * (max_name + 1))))

    assert too_many.status_code == 422
    assert too_long.status_code == 422
    violations = recorder.take_violations()
    assert [(v.location, v.code) for v in violations] == [
        (("request", "body", "events"), "maxItems"),
        (("request", "body", "event", "eventName"), "maxLength"),
    ]
