"""The violation check itself: it must flag requests that break the document, and only those.

These tests send raw httpx requests (no generated client), so that what is sent is exactly what
the test says. Each invalid request asks Prism for a success (`Prefer: code=202`), to show that
a violation is detected even when the status looks like the one asked for would have been.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.prism import PrismServer, ViolationRecorder, load_spec, schema_keyword, violations_of

SPEC = load_spec()
AUTH = {"Authorization": "Bearer raw-test-token"}
VALID_EVENT: dict[str, Any] = copy.deepcopy(
    SPEC["components"]["examples"]["IngestEventRequestExample"]["value"]["event"]
)


def event(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(VALID_EVENT)
    for key, value in changes.items():
        if value is None:
            del result[key]
        else:
            result[key] = value
    return result


MAX_EVENTS: int = schema_keyword(SPEC, "IngestBatchEventRequest", "events", "maxItems")
MAX_NAME: int = schema_keyword(SPEC, "Event", "eventName", "maxLength")

# (id, path, JSON body or raw bytes, extra headers, expected (location, code) among violations)
INVALID: list[tuple[str, str, Any, dict[str, str], tuple[tuple[str, ...], str]]] = [
    (
        "missing-accountId",
        "/ingest",
        {"event": event(accountId=None)},
        {},
        (("request", "body", "event"), "required"),
    ),
    (
        "unknown-property",
        "/ingest",
        {"event": event(costCentre="1234")},
        {},
        (("request", "body", "event"), "additionalProperties"),
    ),
    (
        "number-not-string",
        "/ingest",
        {"event": event(dimensions={"location": 12})},
        {},
        (("request", "body", "event", "dimensions", "location"), "type"),
    ),
    (
        "timestamp-without-offset",
        "/ingest",
        {"event": event(eventTimestamp="2022-06-15T07:30:35")},
        {},
        (("request", "body", "event", "eventTimestamp"), "format"),
    ),
    (
        "name-too-long",
        "/ingest",
        {"event": event(eventName="x" * (MAX_NAME + 1))},
        {},
        (("request", "body", "event", "eventName"), "maxLength"),
    ),
    (
        "empty-batch",
        "/ingestBatch",
        {"events": []},
        {},
        (("request", "body", "events"), "minItems"),
    ),
    (
        "batch-too-large",
        "/ingestBatch",
        {"events": [event(id=str(i)) for i in range(MAX_EVENTS + 1)]},
        {},
        (("request", "body", "events"), "maxItems"),
    ),
    ("no-body", "/ingest", b"", {}, (("request",), "required")),
    ("no-token", "/ingest", {"event": event()}, {"Authorization": ""}, (("request",), "401")),
    (
        "basic-auth",
        "/ingest",
        {"event": event()},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        (("request",), "401"),
    ),
    (
        "form-encoded",
        "/ingest",
        b"event=1",
        {"Content-Type": "application/x-www-form-urlencoded"},
        (("request",), "415"),
    ),
    # Prism 5.16 accepts this one silently (202); the recorder's own content-type check flags it.
    (
        "text-plain",
        "/ingest",
        b'{"event": {}}',
        {"Content-Type": "text/plain"},
        (("request", "header", "content-type"), "content-type"),
    ),
    ("unknown-path", "/ingestMany", {"event": event()}, {}, (("request",), "")),
]


@pytest.fixture
def raw_client(prism: PrismServer, recorder: ViolationRecorder) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=prism.url, event_hooks=recorder.sync_hooks(), timeout=15.0
    ) as client:
        yield client


def send(client: httpx.Client, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    merged = {**AUTH, "Prefer": "code=202", **headers}
    if merged["Authorization"] == "":
        del merged["Authorization"]
    if isinstance(body, bytes):
        merged.setdefault("Content-Type", "application/json")
        return client.post(path, content=body, headers=merged)
    return client.post(path, json=body, headers=merged)


def test_valid_request_has_no_violation(
    raw_client: httpx.Client, recorder: ViolationRecorder
) -> None:
    """The control: the check does not flag everything."""
    for path, body in [("/ingest", {"event": event()}), ("/ingestBatch", {"events": [event()]})]:
        response = send(raw_client, path, body, {})
        assert response.status_code == 202
        assert "sl-violations" not in response.headers
        assert violations_of(response) == []
    assert len(recorder.exchanges) == 2
    recorder.assert_clean()


@pytest.mark.parametrize(
    ("path", "body", "headers", "expected"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_request_is_detected(
    raw_client: httpx.Client,
    recorder: ViolationRecorder,
    path: str,
    body: Any,
    headers: dict[str, str],
    expected: tuple[tuple[str, ...], str],
) -> None:
    response = send(raw_client, path, body, headers)

    assert len(recorder.exchanges) == 1
    found = recorder.exchanges[0].violations
    assert found, f"no violation detected for {path} -> {response.status_code}"
    location, code = expected
    if code:
        assert (location, code) in [(v.location, v.code) for v in found], found
    # The same check as a plain function of the response, and as the fixtures' teardown.
    assert violations_of(response) == found
    with pytest.raises(AssertionError, match="Prism reported violations for 1 of 1 request"):
        recorder.assert_clean()
    # Prism answers an invalid request 422 whatever status was asked for (never the 202).
    assert response.status_code != 202
    assert recorder.take_violations() == found
    recorder.assert_clean()


async def test_invalid_request_is_detected_async(
    prism: PrismServer, recorder: ViolationRecorder
) -> None:
    async with httpx.AsyncClient(
        base_url=prism.url, event_hooks=recorder.async_hooks(), timeout=15.0
    ) as client:
        ok = await client.post("/ingest", json={"event": event()}, headers=AUTH)
        bad = await client.post("/ingest", json={"event": event(id=None)}, headers=AUTH)

    assert (ok.status_code, bad.status_code) == (202, 422)
    assert [len(exchange.violations) for exchange in recorder.exchanges] == [0, 1]
    assert recorder.take_violations()[0].message.endswith("must have required property 'id'")


def test_unparsable_violations_header_fails_closed() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/ingest", json={})
    response = httpx.Response(202, headers={"sl-violations": "not json"}, request=request)
    assert [v.code for v in violations_of(response)] == ["unparsable"]
