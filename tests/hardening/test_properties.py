"""Standing property tests of invariants 1-4 for ``send``: arbitrary events (any JSON-like
Python value, any unicode, any nesting, surrogates, bytes, subclasses) against arbitrary server
answers (any status, body and Retry-After). Every time: each input ends in exactly one outcome
at its own index and the counts add up; nothing but a ``TogaiError`` escapes; only events in a
request answered with a documented success status can be accepted."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SECRET
from tests.hardening.conftest import event
from tests.hostile import Reply, Request, serving
from togai_ingest import AsyncClient, Client, RetryPolicy, SendAbortedError, TogaiError
from togai_ingest.spec import spec

POLICY = RetryPolicy(max_retries=1, initial_delay=0.0, max_delay=0.0, max_retry_after=0.0)
SUCCESS = spec().success_statuses("ingestBatch")
STATUSES = sorted({*SUCCESS, 200, 201, 204, 301, 400, 401, 404, 422, 429, 500, 502, 503, 520})

json_like = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text() | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)
any_text = st.text(st.characters(codec=None), max_size=8)  # surrogates included


@st.composite
def an_event(draw: st.DrawFn, index: int) -> Any:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "mutated", "garbage"]))
    wire = event(index)
    if kind == "valid":
        return wire
    if kind == "garbage":
        return draw(json_like)
    key = draw(st.sampled_from([*wire, "extra"]))
    wire[key] = draw(json_like | any_text)
    return wire


@st.composite
def events(draw: st.DrawFn) -> list[Any]:
    count = draw(st.integers(0, 12))
    return [draw(an_event(i)) for i in range(count)]


answer = st.tuples(
    st.sampled_from(STATUSES),
    st.sampled_from(["empty", "garbage", "ok", "list-some", "list-stranger", "no-payload"]),
    st.integers(0, 3),
    st.sampled_from([None, "0", "abc", "-1", "nan", "1e9"]),
)


def _reply(spec_: tuple[int, str, int, str | None], request: Request) -> Reply:
    status, body_kind, k, retry_after = spec_
    try:
        ids = request.event_ids()
    except (ValueError, KeyError, TypeError, AttributeError):
        ids = []
    entries: list[dict[str, Any]] = []
    if body_kind == "list-some":
        entries = [{"message": "no", "eventPayload": {"id": i}} for i in ids[:k]]
    elif body_kind == "list-stranger":
        entries = [{"message": "no", "eventPayload": {"id": "stranger"}}]
    elif body_kind == "no-payload":
        entries = [{"message": "no"}]
    body = {
        "empty": b"",
        "garbage": b"<html>proxy</html>",
        "ok": b'{"errors": []}',
    }.get(body_kind, json.dumps({"errors": entries}).encode())
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    if retry_after is not None:
        headers += (("Retry-After", retry_after),)
    return Reply(status, body, headers)


class _Scripted:
    def __init__(self, answers: list[tuple[int, str, int, str | None]], then_ok: bool) -> None:
        self.answers = list(answers)
        self.then: tuple[int, str, int, str | None] = (
            (202, "ok", 0, None)
            if then_ok
            else (
                503,
                "empty",
                0,
                None,
            )
        )
        self.successes: set[str] = set()

    def __call__(self, request: Request) -> Reply:
        spec_ = self.answers.pop(0) if self.answers else self.then
        if spec_[0] in SUCCESS:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                self.successes.update(request.event_ids())
        return _reply(spec_, request)


def _check(result: Any, read: int, script: _Scripted, inputs: list[Any]) -> None:
    listed = [r.index for r in result.rejected]
    listed += [f.index for f in result.failed] + [i.index for i in result.invalid]
    assert len(listed) == len(set(listed)), "an input reported twice"
    assert all(0 <= i < read for i in listed), "an index outside the input read"
    assert result.total == read
    assert result.accepted == read - len(listed)
    possible = sum(
        1
        for i in range(read)
        if i not in set(listed)
        and isinstance(inputs[i], dict)
        and inputs[i].get("id") in script.successes
    )
    assert result.accepted <= possible, "accepted without a documented success answer"
    for rejected in result.rejected:
        assert rejected.event["id"] == inputs[rejected.index]["id"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(
    inputs=events(),
    answers=st.lists(answer, max_size=6),
    then_ok=st.booleans(),
    batch_size=st.integers(1, 5),
)
def test_send_accounts_for_every_input_whatever_the_server_answers(
    inputs: list[Any], answers: list[Any], then_ok: bool, batch_size: int
) -> None:
    script = _Scripted(answers, then_ok)
    with serving(script) as server:
        client = Client(SECRET, base_url=server.url, retry=POLICY, rate_limit=None, timeout=2.0)
        try:
            result = client.send(inputs, batch_size=batch_size)
            read = len(inputs)
        except SendAbortedError as aborted:  # a 401: the rest is not read
            result, read = aborted.result, aborted.result.total
            assert read <= len(inputs)
        except TogaiError:
            raise
        finally:
            client.close()
    _check(result, read, script, inputs)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(
    inputs=events(),
    answers=st.lists(answer, max_size=6),
    then_ok=st.booleans(),
    batch_size=st.integers(1, 5),
    concurrency=st.integers(1, 3),
)
def test_async_send_accounts_for_every_input_whatever_the_server_answers(
    inputs: list[Any], answers: list[Any], then_ok: bool, batch_size: int, concurrency: int
) -> None:
    import asyncio

    script = _Scripted(answers, then_ok)

    async def run(url: str) -> tuple[Any, int]:
        async with AsyncClient(
            SECRET, base_url=url, retry=POLICY, rate_limit=None, timeout=2.0
        ) as client:
            try:
                result = await client.send(inputs, batch_size=batch_size, concurrency=concurrency)
                return result, len(inputs)
            except SendAbortedError as aborted:
                return aborted.result, aborted.result.total

    with serving(script) as server:
        result, read = asyncio.run(run(server.url))
    _check(result, read, script, inputs)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(value=json_like | any_text)
def test_encode_event_raises_only_validation_errors(value: Any) -> None:
    from togai_ingest import ValidationError, encode_event

    for candidate in (value, {**event(1), "dimensions": value}, {**event(1), "id": value}):
        try:
            encoded = encode_event(candidate)
        except ValidationError:
            continue
        assert json.loads(encoded.json) == encoded.wire()
        assert set(encoded.wire()) <= set(spec().schemas["Event"]["properties"])
        assert all(ord(c) < 0xD800 or ord(c) > 0xDFFF for c in encoded.json.decode())
