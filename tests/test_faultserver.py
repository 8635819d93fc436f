"""Tests of the fault-injecting server itself, with raw httpx (no client code)."""

from __future__ import annotations

import email.utils
import errno
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import httpx
import pytest

from tests import openapi
from tests.faults import metered_answer
from tests.faultserver import (
    Action,
    BadGateway,
    EmptyAccept,
    Error,
    FaultServer,
    GarbageAccept,
    GatewayTimeout,
    IdSample,
    Odd,
    Ok,
    Reject,
    ResetAfter,
    ResetBefore,
    Slow,
    Throttle,
    Unavailable,
    check_request,
    mixed_script,
    schema_errors,
    unavailable_burst,
)

TOKEN = "t0k3n"
BATCH_RESPONSE = "/components/schemas/IngestBatchEventResponse"
ERROR_RESPONSE = "/components/schemas/ErrorResponse"


def make_event(n: int | str) -> dict[str, Any]:
    return {
        "eventName": "travelCompletedEvent",
        "id": f"ev-{n}",
        "eventTimestamp": "2022-06-15T07:30:35.123Z",
        "accountId": "1",
        "eventAttributes": [
            {
                "attributeName": "distanceTravelled",
                "attributeValue": "50",
                "attributeValueUnit": "Miles",
            }
        ],
        "dimensions": {"location": "Seattle"},
    }


def batch(*ns: int | str) -> dict[str, Any]:
    return {"events": [make_event(n) for n in ns]}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2.0) as c:
        yield c


def serve(*script: Action, **options: Any) -> FaultServer:
    return FaultServer(TOKEN, list(script), **options)


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def was_reset(error: BaseException) -> bool:
    """True if a ConnectionResetError (RST) is among the causes of an httpx error."""
    seen: BaseException | None = error
    while seen is not None:
        if (
            isinstance(seen, ConnectionResetError)
            or getattr(seen, "errno", None) == errno.ECONNRESET
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def test_ok_meters_and_answers_like_the_spec(client: httpx.Client) -> None:
    with serve(Ok(), Ok()) as srv:
        one = client.post(f"{srv.url}/ingest", json={"event": make_event(1)})
        many = client.post(f"{srv.url}/ingestBatch", json=batch(2, 3))
        after_script = client.post(f"{srv.url}/ingestBatch", json=batch(4))
    assert (one.status_code, one.content) == (202, b"")
    assert (many.status_code, many.json()) == (202, {"errors": []})
    assert after_script.status_code == 202
    assert srv.violations == []
    assert srv.ledger == {f"ev-{n}": make_event(n) for n in (1, 2, 3, 4)}
    assert srv.ambiguous_ids == set() and srv.rejected_ids == set()
    assert [(r.path, r.status, r.action, r.metered, r.seen) for r in srv.requests] == [
        ("/ingest", 202, "Ok", True, True),
        ("/ingestBatch", 202, "Ok", True, True),
        ("/ingestBatch", 202, "Ok", True, True),
    ]
    assert srv.requests[1].event_ids == ("ev-2", "ev-3")


def test_ledger_meters_an_id_once_and_keeps_the_first_payload(client: httpx.Client) -> None:
    changed = make_event(1) | {"eventName": "other"}
    with serve() as srv:
        client.post(f"{srv.url}/ingestBatch", json=batch(1, 2))
        client.post(f"{srv.url}/ingestBatch", json={"events": [changed]})
        client.post(f"{srv.url}/ingest", json={"event": make_event(1)})
    assert srv.ledger == {"ev-1": make_event(1), "ev-2": make_event(2)}
    assert srv.deliveries == {"ev-1": 3, "ev-2": 1}
    assert srv.ambiguous_ids == set()


def test_missing_or_wrong_token_is_401_and_not_metered() -> None:
    with serve() as srv, httpx.Client(timeout=2.0) as anonymous:
        missing = anonymous.post(f"{srv.url}/ingestBatch", json=batch(1))
        wrong = anonymous.post(
            f"{srv.url}/ingest",
            json={"event": make_event(2)},
            headers={"Authorization": "Bearer nope"},
        )
    assert missing.status_code == wrong.status_code == 401
    assert schema_errors(missing.json(), ERROR_RESPONSE) == []
    assert schema_errors(wrong.json(), ERROR_RESPONSE) == []
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert srv.ledger == {}
    # A missing header is a client bug; a wrong token is configuration.
    assert len(srv.violations) == 1 and "Authorization" in srv.violations[0]


def _too_many_attributes(body: dict[str, Any]) -> None:
    attribute = {"attributeName": "a", "attributeValue": "1"}
    body["events"][0]["eventAttributes"] = [attribute] * (
        openapi.limit("Event", "eventAttributes", "maxItems") + 1
    )


def _unknown_property(body: dict[str, Any]) -> None:
    body["events"][0]["eventAttribute"] = []


def _bad_timestamp(body: dict[str, Any]) -> None:
    body["events"][0]["eventTimestamp"] = "15/06/2022 07:30"


def _numeric_attribute(body: dict[str, Any]) -> None:
    body["events"][0]["eventAttributes"][0]["attributeValue"] = 50


def _missing_account(body: dict[str, Any]) -> None:
    del body["events"][0]["accountId"]


def _no_events(body: dict[str, Any]) -> None:
    body["events"] = []


def _too_many_events(body: dict[str, Any]) -> None:
    body["events"] = [
        make_event(n)
        for n in range(openapi.limit("IngestBatchEventRequest", "events", "maxItems") + 1)
    ]


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_too_many_attributes, "eventAttributes"),
        (_unknown_property, "eventAttribute' was unexpected"),
        (_bad_timestamp, "is not a 'date-time'"),
        (_numeric_attribute, "is not of type 'string'"),
        (_missing_account, "'accountId' is a required property"),
        (_no_events, "$.events"),
        (_too_many_events, "$.events"),
    ],
)
def test_schema_violations_are_400_and_recorded(
    client: httpx.Client, spoil: Callable[[dict[str, Any]], None], expected: str
) -> None:
    body = batch(1)
    spoil(body)
    with serve() as srv:
        answer = client.post(f"{srv.url}/ingestBatch", json=body)
    assert answer.status_code == 400
    assert schema_errors(answer.json(), ERROR_RESPONSE) == []
    assert any(expected in violation for violation in srv.violations), srv.violations
    assert all(len(violation) < 300 for violation in srv.violations)
    assert expected in answer.json()["message"]
    assert srv.ledger == {}


def test_protocol_violations(client: httpx.Client) -> None:
    with serve() as srv:
        text = client.post(
            f"{srv.url}/ingest",
            content=json.dumps({"event": make_event(1)}),
            headers={"Content-Type": "text/plain"},
        )
        not_json = client.post(
            f"{srv.url}/ingest", content=b"{event:", headers={"Content-Type": "application/json"}
        )
        unknown = client.post(f"{srv.url}/ingestEvents", json=batch(1))
        get = client.get(f"{srv.url}/ingest")
        fine = client.post(
            f"{srv.url}/ingest",
            json={"event": make_event(2)},
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
    assert [a.status_code for a in (text, not_json, unknown, get, fine)] == [
        400,
        400,
        404,
        405,
        202,
    ]
    assert len(srv.violations) == 4
    assert "Content-Type" in srv.violations[0] and "JSON" in srv.violations[1]
    assert list(srv.ledger) == ["ev-2"]


def test_throttle_with_integer_seconds_and_http_date(client: httpx.Client) -> None:
    script = [Throttle(retry_after=2), Throttle(retry_after=1, http_date=True), Throttle(None)]
    with serve(*script) as srv:
        answers = [client.post(f"{srv.url}/ingestBatch", json=batch(n)) for n in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 429]
    assert answers[0].headers["Retry-After"] == "2"
    when = email.utils.parsedate_to_datetime(answers[1].headers["Retry-After"])
    assert 0.9 <= (when - datetime.now(UTC)).total_seconds() <= 2.0
    assert "Retry-After" not in answers[2].headers
    assert all(schema_errors(a.json(), ERROR_RESPONSE) == [] for a in answers)
    assert srv.ledger == {} and srv.violations == []


def test_unavailable_burst_then_success(client: httpx.Client) -> None:
    with serve(*unavailable_burst(3), Unavailable(retry_after=0)) as srv:
        answers = [
            client.post(f"{srv.url}/ingest", json={"event": make_event(1)}) for _ in range(5)
        ]
    assert [a.status_code for a in answers] == [503, 503, 503, 503, 202]
    assert answers[3].headers["Retry-After"] == "0"
    assert answers[0].json() == {"message": "Service temporarily unavailable"}
    assert srv.deliveries == {"ev-1": 1}


def test_gateway_errors(client: httpx.Client) -> None:
    with serve(BadGateway(), GatewayTimeout(), GatewayTimeout(metered=True)) as srv:
        bad = client.post(f"{srv.url}/ingestBatch", json=batch(1))
        timeout = client.post(f"{srv.url}/ingestBatch", json=batch(2))
        timeout_metered = client.post(f"{srv.url}/ingestBatch", json=batch(3))
    assert bad.status_code == 502 and bad.headers["Content-Type"] == "text/html"
    assert bad.text.startswith("<html>")
    assert (timeout.status_code, timeout.content) == (504, b"")
    assert (timeout_metered.status_code, timeout_metered.content) == (504, b"")
    assert list(srv.ledger) == ["ev-3"] and srv.ambiguous_ids == {"ev-3"}


def test_odd_status_and_error_bodies(client: httpx.Client) -> None:
    script: list[Action] = [
        Odd(),
        Odd(499),
        Error(400),
        Error(401, "Token revoked"),
        Error(422),
        Error(422, None),
    ]
    with serve(*script) as srv:
        answers = [client.post(f"{srv.url}/ingestBatch", json=batch(n)) for n in range(6)]
    assert [a.status_code for a in answers] == [520, 499, 400, 401, 422, 422]
    for garbage in answers[:2]:
        with pytest.raises(json.JSONDecodeError):
            garbage.json()
    assert answers[3].json() == {"message": "Token revoked"}
    assert schema_errors(answers[4].json(), ERROR_RESPONSE) == []
    assert "message" not in answers[5].json()
    assert srv.ledger == {} and srv.violations == []


def test_202_with_empty_or_garbage_body_meters(client: httpx.Client) -> None:
    with serve(EmptyAccept(), GarbageAccept()) as srv:
        empty = client.post(f"{srv.url}/ingestBatch", json=batch(1))
        garbage = client.post(f"{srv.url}/ingestBatch", json=batch(2))
    assert (empty.status_code, empty.content) == (202, b"")
    assert garbage.status_code == 202
    with pytest.raises(json.JSONDecodeError):
        garbage.json()
    assert list(srv.ledger) == ["ev-1", "ev-2"] and srv.ambiguous_ids == set()


def test_reset_before_processing_is_a_connection_error(client: httpx.Client) -> None:
    with serve(ResetBefore()) as srv:
        with pytest.raises(httpx.TransportError) as raised:
            client.post(f"{srv.url}/ingestBatch", json=batch(1, 2))
        again = client.post(f"{srv.url}/ingestBatch", json=batch(1, 2))
    assert was_reset(raised.value), repr(raised.value)
    assert again.status_code == 202
    assert srv.deliveries == {"ev-1": 1, "ev-2": 1} and srv.ambiguous_ids == set()
    assert (srv.requests[0].status, srv.requests[0].metered) == (None, False)


def test_reset_after_processing_is_ambiguous(client: httpx.Client) -> None:
    with serve(ResetAfter()) as srv:
        with pytest.raises(httpx.TransportError) as raised:
            client.post(f"{srv.url}/ingestBatch", json=batch(1, 2))
        client.post(f"{srv.url}/ingestBatch", json=batch(1, 2))
    assert was_reset(raised.value), repr(raised.value)
    assert srv.ambiguous_ids == {"ev-1", "ev-2"}
    assert srv.deliveries == {"ev-1": 2, "ev-2": 2} and len(srv.ledger) == 2
    assert (srv.requests[0].status, srv.requests[0].seen, srv.requests[0].metered) == (
        None,
        False,
        True,
    )


def test_slow_answer_times_out_and_is_ambiguous() -> None:
    with serve(Slow(0.5), Slow(0.05)) as srv:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=0.15) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post(f"{srv.url}/ingestBatch", json=batch(1))
            in_time = client.post(f"{srv.url}/ingestBatch", json=batch(2))
        wait_for(lambda: len(srv.requests) == 2)
    assert in_time.status_code == 202
    assert srv.ambiguous_ids == {"ev-1"}
    late, fast = sorted(srv.requests, key=lambda r: r.started)
    assert (late.action, late.metered, late.seen) == ("Slow", True, False)
    assert (fast.metered, fast.seen) == (True, True)


def test_client_timeout_hint_marks_late_answers_unseen(client: httpx.Client) -> None:
    with serve(latency=0.2, client_timeout=0.2) as srv:
        answer = client.post(f"{srv.url}/ingest", json={"event": make_event(1)})
    assert answer.status_code == 202
    assert srv.ambiguous_ids == {"ev-1"}


def test_reject_every_kth_and_by_predicate(client: httpx.Client) -> None:
    sent = batch(*range(7))
    script = [Reject(every=3), Reject(predicate=lambda i: i == "ev-5", message="no")]
    with serve(*script) as srv:
        first = client.post(f"{srv.url}/ingestBatch", json=sent)
        second = client.post(f"{srv.url}/ingestBatch", json=sent)
    assert first.status_code == 207 and schema_errors(first.json(), BATCH_RESPONSE) == []
    errors = first.json()["errors"]
    assert [e["eventPayload"] for e in errors] == [make_event(2), make_event(5)]
    assert srv.requests[0].metered_ids == tuple(f"ev-{n}" for n in (0, 1, 3, 4, 6))
    # The second Reject matches ev-5 again; ev-2 is accepted now; the rest were metered already.
    assert second.status_code == 207
    assert second.json() == {"errors": [{"message": "no", "eventPayload": make_event(5)}]}
    assert set(srv.ledger) == {f"ev-{n}" for n in (0, 1, 2, 3, 4, 6)}
    assert srv.rejected_ids == {"ev-2", "ev-5"}
    assert srv.requests[0].rejected_ids == ("ev-2", "ev-5")


def test_reject_if_is_permanent_and_applies_to_ingest(client: httpx.Client) -> None:
    always = IdSample(one_in=3, salt="x")
    ids = [n for n in range(30) if always(f"ev-{n}")]
    assert 3 <= len(ids) <= 20  # the sample is neither empty nor everything
    script: list[Action] = [Ok(), Reject(), EmptyAccept(), GarbageAccept(), ResetAfter()]
    with serve(*script, reject_if=always) as srv:
        answers = [client.post(f"{srv.url}/ingestBatch", json=batch(*range(30))) for _ in range(4)]
        with pytest.raises(httpx.TransportError):
            client.post(f"{srv.url}/ingestBatch", json=batch(*range(30)))
        single = client.post(f"{srv.url}/ingest", json={"event": make_event(ids[0])})
    for answer in answers:  # a 202 says "all accepted": EmptyAccept and GarbageAccept too
        assert answer.status_code == 207
        assert [e["eventPayload"]["id"] for e in answer.json()["errors"]] == [
            f"ev-{n}" for n in ids
        ]
    assert single.status_code == 400 and schema_errors(single.json(), ERROR_RESPONSE) == []
    assert srv.rejected_ids == {f"ev-{n}" for n in ids}
    assert not srv.rejected_ids & set(srv.ledger)
    assert len(srv.ledger) == 30 - len(ids) and srv.violations == []


def test_rate_limit_answers_429_without_using_the_script(client: httpx.Client) -> None:
    with serve(Ok(), Ok(), Ok(), Odd(), max_requests_per_second=3) as srv:
        answers = [
            client.post(f"{srv.url}/ingest", json={"event": make_event(n)}) for n in range(5)
        ]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    assert answers[3].headers["Retry-After"] == "1"
    assert [r.action for r in srv.requests] == ["Ok", "Ok", "Ok", "RateLimited", "RateLimited"]
    assert len(srv.ledger) == 3


def test_latency_delays_every_answer(client: httpx.Client) -> None:
    with serve(Throttle(), latency=0.1) as srv:
        started = time.monotonic()
        client.post(f"{srv.url}/ingest", json={"event": make_event(1)})
        client.post(f"{srv.url}/ingest", json={"event": make_event(1)})
    assert time.monotonic() - started >= 0.2


def test_concurrent_requests_are_counted_exactly() -> None:
    def send(worker: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5.0) as client:
            for n in range(10):
                client.post(f"{srv.url}/ingestBatch", json=batch(*range(n * 10, n * 10 + 10)))

    with serve() as srv:
        workers = [threading.Thread(target=send, args=(w,)) for w in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert len(srv.ledger) == 100 and sum(srv.deliveries.values()) == 600
    assert len(srv.requests) == 60 and srv.violations == []


def test_stop_is_bounded_with_sleeping_and_idle_connections(client: httpx.Client) -> None:
    srv = serve(Ok(), Slow(30)).start()
    client.post(f"{srv.url}/ingest", json={"event": make_event(1)})  # leaves a keep-alive socket
    outcome: list[BaseException] = []

    def send_slow() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0) as other:
            try:
                other.post(f"{srv.url}/ingest", json={"event": make_event(2)})
            except httpx.HTTPError as error:
                outcome.append(error)

    sender = threading.Thread(target=send_slow)
    sender.start()
    wait_for(lambda: "ev-2" in srv.ledger)  # metered, now sleeping 30 s
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2.0
    sender.join(2.0)
    assert not sender.is_alive() and len(outcome) == 1  # cut off, no answer
    assert srv.ambiguous_ids == {"ev-2"}
    with pytest.raises(RuntimeError):
        _ = srv.url


def test_mixed_script_is_reproducible_and_mostly_ok() -> None:
    first = mixed_script(seed=1, n=400)
    assert first == mixed_script(seed=1, n=400) and len(first) == 400
    assert first != mixed_script(seed=2, n=400)
    assert 0.6 < sum(isinstance(a, Ok) for a in first) / len(first) < 0.9
    kinds = {type(a).__name__ for a in first}
    assert {"Throttle", "Unavailable", "ResetBefore", "ResetAfter", "GatewayTimeout"} <= kinds
    assert "Slow" not in kinds and "Error" not in kinds
    extended = {type(a).__name__ for a in mixed_script(3, 400, slow=0.3, client_errors=True)}
    assert {"Slow", "Error"} <= kinds | extended


def test_mixed_script_end_to_end_with_a_naive_retrying_sender(client: httpx.Client) -> None:
    """The intended use: re-send a batch after anything but 202/207, then check the ledger."""
    events = [make_event(n) for n in range(1000)]
    reject = IdSample(one_in=40)
    reported: set[str] = set()
    script = mixed_script(seed=5, n=60, fault_rate=0.5)
    with serve(*script, reject_if=reject) as srv:
        for start in range(0, len(events), 100):
            body = {"events": events[start : start + 100]}
            for _ in range(20):
                try:
                    answer = client.post(f"{srv.url}/ingestBatch", json=body)
                except httpx.TransportError:
                    continue
                if answer.status_code == 207:
                    errors = answer.json()["errors"]
                    reported |= {e["eventPayload"]["id"] for e in errors}
                if answer.status_code in (202, 207):
                    break
    sent = {e["id"] for e in events}
    assert srv.violations == []
    assert set(srv.ledger) | reported == sent and not set(srv.ledger) & reported
    assert reported == srv.rejected_ids == {i for i in sent if reject(i)}
    assert {i for i, n in srv.deliveries.items() if n > 1} <= srv.ambiguous_ids
    assert srv.ambiguous_ids  # the script did produce ambiguous answers
    assert srv.ledger["ev-7"] == make_event(7) or "ev-7" in reported


def test_a_body_cut_short_by_a_dying_client_is_no_violation() -> None:
    with FaultServer(token=TOKEN) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /ingestBatch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 500\r\n\r\n".encode()
                + b'{"events": [{"eventName": "cut'
            )
        deadline = time.monotonic() + 5
        while not srv.requests and time.monotonic() < deadline:
            time.sleep(0.01)
    assert srv.violations == []
    assert srv.ledger == {}
    assert [r.status for r in srv.requests] == [None]


def test_answers_and_request_checks_need_no_socket() -> None:
    """The script's answers (tests/faults.py) and the request checks are plain functions."""
    events = [make_event(1), make_event(2)]
    status, headers, body = metered_answer(Reject(every=2), "/ingestBatch", {1: "no"}, events)
    assert (status, list(headers)) == (207, [("Content-Type", "application/json")])
    assert schema_errors(json.loads(body), BATCH_RESPONSE) == []
    assert json.loads(body)["errors"] == [{"message": "no", "eventPayload": events[1]}]
    assert metered_answer(ResetAfter(), "/ingest", {}, events[:1]) == (None, [], b"")
    assert metered_answer(Ok(), "/ingest", {}, events[:1]) == (202, [], b"")

    request = Message()
    request["Authorization"] = f"Bearer {TOKEN}"
    request["Content-Type"] = "application/json"
    good = json.dumps(batch(1)).encode()
    assert check_request("POST", "/ingestBatch", request, good, TOKEN) == (None, [])
    assert check_request("POST", "/ingestBatch", request, good, "other") == (401, [])
    status, violations = check_request(
        "POST", "/ingestBatch", request, json.dumps({"events": []}).encode(), TOKEN
    )
    assert status == 400
    assert len(violations) == 1 and violations[0].startswith("POST /ingestBatch: $.events:")
