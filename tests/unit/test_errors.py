"""Every answer becomes an outcome or one of our exceptions, whatever its body; never a
JSONDecodeError, KeyError, TypeError or ValueError from the generated code."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import SECRET
from tests.faultserver import (
    Action,
    BadGateway,
    EmptyAccept,
    Error,
    FaultServer,
    GarbageAccept,
    GatewayTimeout,
    Odd,
    Reject,
    ResetBefore,
    Throttle,
    Unavailable,
)
from tests.unit.conftest import wire_event
from togai_ingest import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Client,
    MalformedResponseError,
    PayloadTooLargeError,
    RateLimitedError,
    RetryPolicy,
    ServiceUnavailableError,
    UnexpectedStatusError,
)

NO_RETRY = RetryPolicy(max_retries=0)


def one_batch(script: list[Action], token: str = SECRET) -> APIError:
    with (
        FaultServer(token=SECRET, script=script) as srv,
        Client(token, base_url=srv.url, rate_limit=None, retry=NO_RETRY) as client,
    ):
        with pytest.raises(APIError) as info:
            client.ingest_batch([wire_event()])
        assert srv.violations == []
    return info.value


@pytest.mark.parametrize(
    ("action", "cls", "status", "message"),
    [
        (Error(400, "Bad things"), BadRequestError, 400, "Bad things"),
        (Error(422, "Too big"), PayloadTooLargeError, 422, "Too big"),
        (Throttle(retry_after=3), RateLimitedError, 429, "Rate limit exceeded"),
        (Unavailable(), ServiceUnavailableError, 503, "Service temporarily unavailable"),
        (Error(500, "Internal"), UnexpectedStatusError, 500, "Internal"),
    ],
)
def test_statuses_map_to_typed_errors(
    action: Action, cls: type[APIStatusError], status: int, message: str
) -> None:
    error = one_batch([action])
    assert type(error) is cls
    assert isinstance(error, APIStatusError)
    assert (error.status, error.message) == (status, message)
    assert str(error).startswith(f"HTTP {status} ")


def test_retry_after_header_is_kept() -> None:
    error = one_batch([Throttle(retry_after=7)])
    assert isinstance(error, RateLimitedError)
    assert error.headers["retry-after"] == "7"


def test_wrong_token_is_an_authentication_error() -> None:
    error = one_batch([], token="not-the-token")
    assert isinstance(error, AuthenticationError)
    assert error.status == 401


@pytest.mark.parametrize(
    ("action", "status", "fragment"),
    [
        (BadGateway(), 502, "<html>"),
        (GatewayTimeout(), 504, None),
        (Odd(520, b'{"message": "upstream went aw'), 520, "upstream went aw"),
        (Odd(499, b"\xff\xfe not json"), 499, "not json"),
        (Error(400, None), 400, None),
        (Odd(503, b'{"message": 12}'), 503, '{"message": 12}'),
        (Odd(400, b"[1, 2]"), 400, "[1, 2]"),
    ],
)
def test_malformed_error_bodies(action: Action, status: int, fragment: str | None) -> None:
    error = one_batch([action])
    assert isinstance(error, APIStatusError)
    assert error.status == status
    if fragment is None:
        assert error.message is None or "no ErrorResponse" in error.message
    else:
        assert error.message is not None and fragment in error.message


def test_reset_is_a_connection_error() -> None:
    assert isinstance(one_batch([ResetBefore()]), APIConnectionError)


@pytest.mark.parametrize("action", [EmptyAccept(), GarbageAccept()])
def test_202_with_empty_or_garbage_body_means_accepted(action: Action) -> None:
    with (
        FaultServer(token=SECRET, script=[action]) as srv,
        Client(SECRET, base_url=srv.url, rate_limit=None, retry=NO_RETRY) as client,
    ):
        outcome = client.ingest_batch([wire_event(id="a"), wire_event(id="b")])
    assert (outcome.accepted, outcome.rejected) == (2, [])


def test_207_maps_rejections_back_to_the_events_sent() -> None:
    events = [wire_event(id=f"e{i}") for i in range(6)]
    with (
        FaultServer(token=SECRET, script=[Reject(every=3, message="nope")]) as srv,
        Client(SECRET, base_url=srv.url, rate_limit=None, retry=NO_RETRY) as client,
    ):
        outcome = client.ingest_batch(events)
    assert outcome.accepted == 4
    assert [(r.index, r.event["id"], r.message) for r in outcome.rejected] == [
        (2, "e2", "nope"),
        (5, "e5", "nope"),
    ]
    assert outcome.rejected[0].event == events[2]  # a snapshot of it


def test_207_with_unreadable_body_is_malformed_and_retried() -> None:
    garbage_207 = Odd(207, b"<html>partial</html>")
    assert isinstance(one_batch([garbage_207]), MalformedResponseError)
    with (
        FaultServer(token=SECRET, script=[garbage_207]) as srv,
        Client(
            SECRET, base_url=srv.url, rate_limit=None, retry=RetryPolicy(initial_delay=0.01)
        ) as client,
    ):
        outcome = client.ingest_batch([wire_event(id="a")])
    assert outcome.accepted == 1
    assert srv.deliveries["a"] == 1


def test_single_event_errors_are_typed_too() -> None:
    with (
        FaultServer(token=SECRET, script=[BadGateway()]) as srv,
        Client(SECRET, base_url=srv.url, rate_limit=None, retry=NO_RETRY) as client,
        pytest.raises(UnexpectedStatusError) as info,
    ):
        client.ingest(wire_event())
    assert info.value.status == 502


def test_every_documented_error_status_has_its_own_exception() -> None:
    from togai_ingest.errors import _BY_STATUS
    from togai_ingest.spec import spec

    documented = {
        int(status)
        for item in spec().document["paths"].values()
        for operation in item.values()
        for status in operation["responses"]
        if status.isdigit() and int(status) >= 400
    }
    assert documented == set(_BY_STATUS), "a documented status has no exception class"


def test_send_stops_at_a_refused_token_and_accounts_for_every_event_read() -> None:
    from collections.abc import Iterator

    from togai_ingest import AsyncClient, SendAbortedError

    read = 0

    def events() -> Iterator[dict[str, object]]:
        nonlocal read
        for i in range(5_000):
            read += 1
            yield wire_event(id=f"e{i}")

    with FaultServer(token="the-right-token") as srv:
        with (
            Client(SECRET, base_url=srv.url, rate_limit=None) as client,
            pytest.raises(SendAbortedError) as sync_info,
        ):
            client.send(events())
        assert sync_info.value.result.total == read < 5_000
        assert isinstance(sync_info.value.cause, AuthenticationError)

        read = 0

        async def run_async() -> None:
            async with AsyncClient(SECRET, base_url=srv.url, rate_limit=None) as aclient:
                await aclient.send(events(), concurrency=4)

        with pytest.raises(SendAbortedError) as async_info:
            asyncio.run(run_async())
        result = async_info.value.result
        assert result.total == read < 5_000, "an event was read and neither sent nor reported"
        assert result.n_failed == read and result.accepted == 0
    assert srv.ledger == {}
