"""The token: read from the environment, never shown, never sent in clear to a remote host."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.faultserver import Action, BadGateway, Error, FaultServer, ResetBefore
from tests.unit.conftest import wire_event
from togai_ingest import (
    APIError,
    BackgroundSender,
    Client,
    ConfigurationError,
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


# --- The token as read from a file or the environment.


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t\r\n"])
def test_a_token_with_a_line_ending_is_stripped(suffix: str) -> None:
    with FaultServer(token=SECRET) as srv:
        with Client(SECRET + suffix, base_url=srv.url, rate_limit=None) as client:
            client.ingest(wire_event())
    assert list(srv.ledger) == ["evt-1"]


@pytest.mark.parametrize(
    "bad", [SECRET[:5] + "\r\n" + SECRET[5:], SECRET + "\x00x", "é" + SECRET, ""]
)
def test_a_token_that_cannot_go_in_a_header_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Client(bad, base_url="https://api.togai.com")
    assert SECRET not in str(info.value) and SECRET[:5] + "\r" not in str(info.value)


# --- The route the token really takes.


def test_plain_http_to_loopback_through_a_remote_proxy_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(InsecureTransportError, match="proxy"):
        Client(SECRET, base_url="http://127.0.0.1:8080")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    Client(SECRET, base_url="http://127.0.0.1:8080")  # the proxy is bypassed: loopback only
    Client(SECRET, base_url="https://api.togai.com")  # TLS through any proxy is fine


def test_a_loopback_proxy_to_a_loopback_server_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:3128")
    Client(SECRET, base_url="http://localhost:8080")
    with pytest.raises(InsecureTransportError):
        Client(SECRET, base_url="http://api.togai.com")


def test_an_explicit_proxy_is_judged_like_the_environments() -> None:
    with pytest.raises(InsecureTransportError):
        Client(SECRET, base_url="http://127.0.0.1:1", httpx_args={"proxy": "http://10.1.1.1:80"})


def test_the_password_in_a_base_url_is_never_shown() -> None:
    client = Client(SECRET, base_url="https://user:hunter2@api.togai.com")
    assert "hunter2" not in repr(client) and "hunter2" not in str(client)
    with pytest.raises(ConfigurationError) as info:
        Client(SECRET, base_url="ftp://user:hunter2@api.togai.com")
    assert "hunter2" not in str(info.value)


def test_a_server_echoing_the_token_gets_it_redacted_everywhere() -> None:
    from tests.hostile import Reply, replies, serving

    echo = f'{{"message": "bad token {SECRET} (Authorization: Bearer {SECRET})"}}'.encode()
    reply = Reply(400, echo, (("Content-Type", "application/json"), ("X-Echo", SECRET)))
    with serving(replies([], then=reply)) as server:
        with Client(SECRET, base_url=server.url, rate_limit=None) as client:
            result = client.send([wire_event()])
            with pytest.raises(APIError) as info:
                client.ingest(wire_event())
    error = result.failed[0].error
    for exc in (error, info.value):
        texts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
        assert not [t for t in texts if SECRET in t]


def test_the_fault_script_leaks_the_token_nowhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CR/LF token and a proxy in the environment; the mixed fault script through the
    library (DEBUG logs, results, errors) and the command line (stderr, stdout, the rejected
    file): the token appears in none of them."""
    import json
    import subprocess
    import sys

    from tests.faultserver import IdSample, mixed_script

    token = SECRET + "\r\n"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    caplog.set_level(logging.DEBUG)
    events = [wire_event(id=f"leak-{i}") for i in range(400)]
    outputs: list[str] = []
    with FaultServer(
        token=SECRET, script=mixed_script(seed=3, n=40), reject_if=IdSample(one_in=13)
    ) as srv:
        fast = RetryPolicy(max_retries=1, initial_delay=0.001, max_delay=0.002)
        with Client(token, base_url=srv.url, rate_limit=None, retry=fast, timeout=1.0) as c:
            result = c.send(events, batch_size=20)
        outputs += [repr(r) for r in result.rejected] + [repr(f) for f in result.failed]
        outputs += [str(f.error) for f in result.failed]
        source = tmp_path / "events.jsonl"
        source.write_text("".join(json.dumps(e) + "\n" for e in events))
        rejected = tmp_path / "rejected.jsonl"
        env = {**os.environ, "TOGAI_API_TOKEN": token, "TOGAI_BASE_URL": srv.url}
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "togai_ingest.cli",
                "send",
                str(source),
                "--rejected",
                str(rejected),
                "--retries",
                "1",
                "--timeout",
                "1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    outputs += [run.stdout, run.stderr, rejected.read_text() if rejected.exists() else ""]
    outputs += [record.getMessage() for record in caplog.records]
    assert run.returncode in (0, 1), run.stderr
    assert result.total == 400
    assert any("HTTP Request" in t for t in outputs)
    leaked = [t[:200] for t in outputs if SECRET in t]
    assert not leaked


def test_the_route_judged_is_the_route_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loopback proxy from the environment is really used (requests arrive at it in absolute
    form), so the rule above judges the route the token takes; NO_PROXY bypasses it."""
    from tests.hostile import replies, serving

    with serving(replies([])) as proxy, serving(replies([])) as direct:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        target = direct.url.replace("127.0.0.1", "localhost")
        with Client(SECRET, base_url=target, rate_limit=None) as client:
            assert client.send([wire_event()]).accepted == 1
        monkeypatch.setenv("NO_PROXY", "localhost")
        with Client(SECRET, base_url=target, rate_limit=None) as client:
            assert client.send([wire_event(id="evt-2")]).accepted == 1
    [through_proxy] = proxy.requests
    assert through_proxy.path == f"{target}/ingestBatch"
    assert through_proxy.headers["authorization"] == f"Bearer {SECRET}"
    assert [r.path for r in direct.requests] == ["/ingestBatch"]
