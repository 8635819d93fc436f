"""The token: read from the environment, never shown, never sent in clear to a remote host."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import SECRET
from tests.faultserver import Action, BadGateway, Error, FaultServer, ResetBefore
from tests.unit.conftest import wire_event
from togai_ingest import (
    APIError,
    BackgroundSender,
    Client,
    InsecureTransportError,
    RetryPolicy,
    TogaiError,
)


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGAI_API_TOKEN", SECRET)
    with FaultServer(token=SECRET) as srv, Client(base_url=srv.url, rate_limit=None) as client:
        client.ingest(wire_event())
    assert list(srv.ledger) == ["evt-1"]


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGAI_API_TOKEN", raising=False)
    with pytest.raises(TogaiError, match="TOGAI_API_TOKEN"):
        Client(base_url="http://127.0.0.1:9")


def test_default_base_url_is_the_sandbox_over_https() -> None:
    client = Client(SECRET)
    assert client.base_url == "https://sandbox-api.togai.com"
    assert client._api._verify_ssl is True  # TLS verification stays on


@pytest.mark.parametrize("url", ["http://api.togai.com", "http://10.0.0.5:8080", "http://example"])
def test_no_token_over_plain_http_to_a_remote_host(url: str) -> None:
    with pytest.raises(InsecureTransportError) as info:
        Client(SECRET, base_url=url)
    assert SECRET not in str(info.value)
    Client(SECRET, base_url=url, allow_insecure_http=True)  # explicit opt-in


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"])
def test_plain_http_to_loopback_is_fine(url: str) -> None:
    Client(SECRET, base_url=url)


def test_token_never_in_repr_str_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script: list[Action] = [Error(400, "bad"), BadGateway(), ResetBefore()]
    texts: list[str] = []
    with FaultServer(token=SECRET, script=script) as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None, retry=RetryPolicy(max_retries=0))
        sender = BackgroundSender(client)
        texts += [repr(client), str(client), repr(sender), repr(client._api), repr(client._auth)]
        for _ in script:
            with pytest.raises(APIError) as info:
                client.ingest(wire_event())
            texts += [str(info.value), repr(info.value)]
            if info.value.__cause__ is not None:
                texts.append(repr(info.value.__cause__))
        sender.close()
        client.close()
    texts += [record.getMessage() for record in caplog.records]
    assert any("HTTP Request: POST" in t for t in texts), "httpx's DEBUG/INFO logs were captured"
    assert not [t for t in texts if SECRET in t]
