"""Invariant 1, accounting: every input ends in exactly one of accepted / rejected / failed /
invalid, at its own index, and the counts add up to the inputs read — whatever the server
answers (207 entries that name no event, name one twice, or name a stranger; a 422 that
splits a batch) and whatever the source does (raises midway)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import SECRET
from tests.hardening.conftest import FAST, client_for, event, indexes_of
from tests.hostile import Reply, Request, batch_errors, replies, serving
from togai_ingest import AsyncClient, MalformedResponseError, SendAbortedError


@pytest.mark.parametrize(
    "listed",
    [
        [None],  # an error without eventPayload: the schema allows it
        ["stranger"],  # an id that was not in the batch
        ["evt-1", "evt-1"],  # the same event twice
    ],
    ids=["no-payload", "stranger", "twice"],
)
def test_a_207_that_does_not_identify_its_events_is_retried_then_failed(
    listed: list[str | None],
) -> None:
    with serving(replies([], then=Reply(207, batch_errors(listed)))) as server:
        with client_for(server.url) as client:
            result = client.send([event(i) for i in range(5)])
    assert result.total == 5
    assert result.accepted == 0 and result.n_rejected == 0
    assert [f.index for f in result.failed] == [0, 1, 2, 3, 4]
    assert all(isinstance(f.error, MalformedResponseError) for f in result.failed)
    assert len(server.requests) == 1 + FAST.max_retries


def test_a_207_that_names_its_events_rejects_exactly_those() -> None:
    body = batch_errors(["evt-3", "evt-1"])
    with serving(replies([Reply(207, body)])) as server, client_for(server.url) as client:
        result = client.send([event(i) for i in range(5)])
    assert (result.accepted, result.n_rejected, result.total) == (3, 2, 5)
    assert sorted(r.index for r in result.rejected) == [1, 3]


def test_duplicate_ids_in_a_batch_are_matched_one_entry_each() -> None:
    events = [event("same"), event("same"), event("other")]
    body = batch_errors(["evt-same"])
    with serving(replies([Reply(207, body)])) as server, client_for(server.url) as client:
        result = client.send(events)
    assert (result.accepted, result.n_rejected) == (2, 1)
    assert [r.index for r in result.rejected] == [0]


def test_a_422_splits_a_multi_event_batch_until_it_fits() -> None:
    """The server refuses any request of more than 3 events with 422: a batch of 10 is sent
    as halves of halves; every event is accepted once and reported nowhere else."""

    def script(request: Request) -> Reply:
        if len(request.event_ids()) > 3:
            return Reply(422, b'{"message": "Payload exceeds the supported size limit"}')
        return Reply(202, b'{"errors": []}')

    with serving(script) as server, client_for(server.url) as client:
        result = client.send([event(i) for i in range(10)])
    assert (result.accepted, result.total) == (10, 10)
    accepted = [i for r in server.requests if len(r.event_ids()) <= 3 for i in r.event_ids()]
    assert sorted(accepted) == sorted(f"evt-{i}" for i in range(10))


def test_a_422_of_a_single_event_fails_it_alone() -> None:
    def script(request: Request) -> Reply:
        if "evt-4" in request.event_ids():
            return Reply(422, b'{"message": "too large"}')
        return Reply(202, b'{"errors": []}')

    with serving(script) as server, client_for(server.url) as client:
        result = client.send([event(i) for i in range(8)])
    assert (result.accepted, result.n_failed, result.total) == (7, 1, 8)
    assert [f.index for f in result.failed] == [4]


def _raising_source(n: int, fail_at: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        if i == fail_at:
            raise OSError("the source's disk went away")
        yield event(i)


@pytest.mark.parametrize("fail_at", [0, 1, 42, 99, 100, 150])
def test_a_source_that_raises_midway_loses_nothing_it_yielded(fail_at: int) -> None:
    with serving(replies([])) as server, client_for(server.url) as client:
        with pytest.raises(SendAbortedError) as info:
            client.send(_raising_source(1000, fail_at))
    result = info.value.result
    assert isinstance(info.value.cause, OSError) and info.value.__cause__ is info.value.cause
    assert result.total == result.accepted == fail_at
    sent = [i for r in server.requests for i in r.event_ids()]
    assert sorted(sent) == sorted(f"evt-{i}" for i in range(fail_at))


async def _araising_source(n: int, fail_at: int) -> AsyncIterator[dict[str, Any]]:
    for i in range(n):
        if i == fail_at:
            raise ValueError("bad row")
        yield event(i)
        await asyncio.sleep(0)


@pytest.mark.parametrize("fail_at", [0, 57, 250])
async def test_async_send_with_a_raising_source_reports_what_it_read(fail_at: int) -> None:
    with serving(replies([])) as server:
        async with AsyncClient(
            SECRET, base_url=server.url, retry=FAST, rate_limit=None, timeout=2.0
        ) as client:
            with pytest.raises(SendAbortedError) as info:
                await client.send(_araising_source(1000, fail_at), batch_size=50, concurrency=3)
    assert info.value.result.total == info.value.result.accepted == fail_at
    assert len({i for r in server.requests for i in r.event_ids()}) == fail_at


def test_invalid_events_are_reported_at_their_own_index_among_valid_ones() -> None:
    events: list[Any] = [event(i) for i in range(7)]
    events[2] = event(2, eventName=None)
    events[5] = "not an event"
    with serving(replies([])) as server, client_for(server.url) as client:
        result = client.send(events, batch_size=3)
    assert (result.accepted, result.n_invalid, result.total) == (5, 2, 7)
    assert indexes_of(result) == [2, 5]


def test_send_encoded_reports_at_the_callers_indexes() -> None:
    from togai_ingest import encode_event

    encoded = [encode_event(event(i)) for i in range(4)]
    body = batch_errors(["evt-2"])
    with serving(replies([Reply(207, body)])) as server, client_for(server.url) as client:
        outcome = client.send_encoded(encoded, indexes=[10, 11, 12, 13])
    assert outcome.accepted == 3
    assert [(r.index, r.event["id"]) for r in outcome.rejected] == [(12, "evt-2")]
