"""Invariant 4, no raw exception: nothing but a ``TogaiError`` leaves the library for bad input,
a bad setting or a bad answer, and no single record stops a ``send``: it is reported invalid
at its index and the rest go on. Whatever the validator accepts can be encoded."""

from __future__ import annotations

import asyncio
import decimal
import math
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import httpx
import pytest

from tests import openapi
from tests.conftest import SECRET
from tests.hardening.conftest import client_for, event
from tests.hostile import replies, serving
from togai_ingest import (
    AsyncClient,
    Client,
    ClosedError,
    ConfigurationError,
    RetryPolicy,
    TogaiError,
    ValidationError,
    encode_event,
    new_event,
)


class Text(str):
    pass


def _deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    top = node
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return top


UNREADABLE: list[tuple[str, Any, str]] = [
    ("lone surrogate", event(0, eventName="a\ud800"), "eventName"),
    ("surrogate in a dimension", event(0, dimensions={"k": "\udcff"}), "dimensions.k"),
    ("non-string key", {**event(0), 1: "x"}, "event"),
    ("non-string key deep", event(0, dimensions={1: "x"}), "event"),
    ("bytes", event(0, accountId=b"acct"), "accountId"),
    ("nan", event(0, eventName=math.nan), "eventName"),
    ("deep nesting", event(0, dimensions=_deep(100_000)), "event"),
    ("deep list", event(0, eventAttributes=[[[[[[[[[[]]]]]]]]]]), "eventAttributes"),
    ("decimal", event(0, accountId=decimal.Decimal("1")), "accountId"),
    ("a set", event(0, eventAttributes={1, 2}), "eventAttributes"),
]


@pytest.mark.parametrize(("case", "wire", "where"), UNREADABLE, ids=[c[0] for c in UNREADABLE])
def test_unreadable_events_are_invalid_naming_the_field(case: str, wire: Any, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        encode_event(wire)
    assert where in info.value.path or where in str(info.value)


def test_one_bad_record_never_stops_a_send() -> None:
    events: list[Any] = [event(i) for i in range(30)]
    for position, (_, wire, _) in zip(range(0, 30, 3), UNREADABLE, strict=False):
        events[position] = wire
    with serving(replies([])) as server, client_for(server.url) as client:
        result = client.send(events, batch_size=7)
    assert result.total == 30 and result.n_invalid == 10 and result.accepted == 20
    assert sorted(i.index for i in result.invalid) == list(range(0, 30, 3))


@pytest.mark.parametrize(
    "wire",
    [
        {**event(0), "eventName": Text("subclass")},
        OrderedDict(event(0)),
        MappingProxyType(event(0)),
        event(0, eventAttributes=({"attributeName": "a", "attributeValue": "1"},)),
        event(0, dimensions=OrderedDict(region=Text("eu"))),
    ],
    ids=["str-subclass", "ordered-dict", "mapping-proxy", "tuple", "nested-subclass"],
)
def test_what_the_validator_accepts_can_be_encoded(wire: Any) -> None:
    encoded = encode_event(wire)
    assert encoded.wire()["id"] == "evt-0"
    assert type(encoded.wire()["eventName"]) is str


@pytest.mark.parametrize("value", [None, True, math.nan, math.inf, b"x", {"a": 1}, [1], object()])
def test_new_event_refuses_what_is_not_an_attribute_value(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        new_event("apiCall", "acct-1", {"calls": value})
    assert "calls" in info.value.path


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (12.5, "12.5"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
        (decimal.Decimal("1.50"), "1.50"),
        ("7", "7"),
    ],
)
def test_new_event_writes_numbers_without_surprises(value: Any, text: str) -> None:
    model = new_event("apiCall", "acct-1", {"calls": value})
    assert model.event_attributes[0].attribute_value == text


BAD_URLS = [
    "api.togai.com",
    "ftp://api.togai.com",
    "https://",
    "https://api.togai.com\n",
    " https://api.togai.com",
    "http://[::1",
    "https://api.togai.com/?x=1",
    "https://api.togai.com:99999",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_base_url_is_a_configuration_error_at_once(url: str) -> None:
    with pytest.raises(ConfigurationError):
        Client(SECRET, base_url=url)
    with pytest.raises(ConfigurationError):
        AsyncClient(SECRET, base_url=url)


def test_a_bad_base_url_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOGAI_BASE_URL", "https://api.togai.com\n")
    with pytest.raises(ConfigurationError, match="TOGAI_BASE_URL"):
        Client(SECRET)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": httpx.Timeout(5.0, read=None)},
        {"timeout": "5"},
        {"rate_limit": math.nan},
        {"rate_limit": 0},
        {"rate_limit": -5},
        {"rate_limit": "50"},
        {"retry": "twice"},
        {"httpx_args": {"proxy": "socks5://127.0.0.1:1080"}},
        {"httpx_args": {"proxy": "gopher://127.0.0.1:70"}},
    ],
)
def test_bad_settings_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Client(SECRET, base_url="https://api.togai.com", **options)


def test_socks_proxy_from_the_environment_is_a_named_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ConfigurationError, match="socks"):
        Client(SECRET, base_url="https://api.togai.com")


@pytest.mark.parametrize(
    "policy",
    [{"max_retries": -1}, {"total_timeout": math.nan}, {"initial_delay": -1}, {"max_retries": 1.5}],
)
def test_bad_retry_policies_are_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**policy)


MAX_BATCH = openapi.limit("IngestBatchEventRequest", "events", "maxItems")


@pytest.mark.parametrize("batch_size", [0, -1, MAX_BATCH + 1, 2.5, True])
def test_bad_batch_sizes_are_refused_not_defaulted(batch_size: Any) -> None:
    with serving(replies([])) as server, client_for(server.url) as client:
        with pytest.raises(ConfigurationError):
            client.send([event(1)], batch_size=batch_size)
    assert server.requests == []


def test_send_after_close_is_a_named_error() -> None:
    with serving(replies([])) as server:
        client = client_for(server.url)
        client.close()
        for call in (
            lambda: client.send([event(1)]),
            lambda: client.ingest(event(1)),
            lambda: client.ingest_batch([event(1)]),
        ):
            with pytest.raises(ClosedError):
                call()
    assert server.requests == []


def test_one_async_client_from_two_event_loops_is_a_named_error() -> None:
    with serving(replies([])) as server:
        client = AsyncClient(SECRET, base_url=server.url, rate_limit=None)
        first = asyncio.run(client.send([event(1)]))
        assert first.accepted == 1
        with pytest.raises(ClosedError, match="event loop"):
            asyncio.run(client.send([event(2)]))


def test_every_library_error_is_a_togai_error() -> None:
    for error in (ConfigurationError, ClosedError, ValidationError):
        assert issubclass(error, TogaiError)


@pytest.mark.parametrize(
    "httpx_args",
    [{"proxy": "http://[::1"}, {"no_such_option": 1}, {"limits": "many"}],
)
def test_bad_httpx_args_are_configuration_errors(httpx_args: dict[str, Any]) -> None:
    for cls in (Client, AsyncClient):
        with pytest.raises(ConfigurationError):
            cls(SECRET, base_url="https://api.togai.com", httpx_args=httpx_args)


@pytest.mark.parametrize("events", [None, 42, [event(1)] * (MAX_BATCH + 1)])
def test_ingest_batch_of_a_non_batch_is_a_validation_error(events: Any) -> None:
    with serving(replies([])) as server, client_for(server.url) as client:
        with pytest.raises(ValidationError):
            client.ingest_batch(events)
    assert server.requests == []


@pytest.mark.parametrize("token", [123, b"bytes-token", None])
def test_a_token_that_is_not_a_string_is_a_configuration_error(
    token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOGAI_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError):
        Client(token, base_url="https://api.togai.com")
