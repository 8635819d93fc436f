"""``TOGAI_LOG=debug|info``: the library's logging on stderr, token and Authorization redacted."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.faults import Throttle
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import _logging

ROOT = Path(__file__).resolve().parents[2]
# Not one of the suite's known tokens (tests/conftest.py): this one is meant to be redacted
# in a child process, and is searched for in what the child printed.
CHILD_TOKEN = "tgi_child_Zq81-secret-token"


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("togai_ingest", logging.INFO, __file__, 1, message, args, None)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi",
        "headers={'authorization': 'Bearer abc.def-ghi'}",
        "[(b'Authorization', b'Bearer abc.def-ghi')]",
        "Authorization: Basic dXNlcjpwYXNz",
        "token=bearer abc.def-ghi;",
    ],
)
def test_bearer_tokens_and_authorization_values_are_masked(text: str) -> None:
    cleaned = _logging.redact(text)
    assert "abc.def-ghi" not in cleaned and "dXNlcjpwYXNz" not in cleaned
    assert _logging.MASK in cleaned


def test_registered_secrets_are_masked_in_messages_and_arguments() -> None:
    _logging.register_secret("s3cr3t-value-123")
    entry = record("sending with %s to %s", "s3cr3t-value-123", "http://127.0.0.1")
    assert _logging.RedactingFilter().filter(entry)
    assert entry.getMessage() == f"sending with {_logging.MASK} to http://127.0.0.1"


def test_nothing_happens_without_togai_log() -> None:
    assert _logging.configure_from_env({}) is None
    assert _logging.configure_from_env({"TOGAI_LOG": ""}) is None


def run_child(level: str, url: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import togai_ingest\n"
        "from togai_ingest import _logging\n"
        "_logging.configure_from_env()\n"
        "from togai_ingest import Client, RetryPolicy\n"
        "policy = RetryPolicy(initial_delay=0.01)\n"
        f"with Client(base_url={url!r}, retry=policy, rate_limit=None) as client:\n"
        f"    print(client.send([{wire_event(id='log-1')!r}]))\n"
        "import logging\n"
        "logging.getLogger('togai_ingest').info('token is %s', "
        f"{CHILD_TOKEN!r})\n"
    )
    env = {**os.environ, "TOGAI_LOG": level, "TOGAI_API_TOKEN": CHILD_TOKEN}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_debug_shows_the_library_and_httpx_with_the_token_redacted() -> None:
    with FaultServer(token=CHILD_TOKEN, script=[Throttle(retry_after=0)]) as srv:
        child = run_child("debug", srv.url)
        assert list(srv.ledger) == ["log-1"]
    assert "accepted=1" in child.stdout
    err = child.stderr
    assert CHILD_TOKEN not in err and CHILD_TOKEN not in child.stdout
    assert "httpcore" in err and "httpx" in err  # the HTTP libraries at debug
    assert "retry 1" in err  # the library's own record of the 429
    assert f"token is {_logging.MASK}" in err


def test_info_shows_the_library_only() -> None:
    with FaultServer(token=CHILD_TOKEN, script=[Throttle(retry_after=0)]) as srv:
        child = run_child("info", srv.url)
    err = child.stderr
    assert "retry 1" in err and CHILD_TOKEN not in err
    assert "httpcore" not in err


def test_an_unknown_level_is_ignored_with_a_note() -> None:
    with FaultServer(token=CHILD_TOKEN) as srv:
        child = run_child("loud", srv.url)
    assert "TOGAI_LOG='loud' ignored" in child.stderr
    assert "retry" not in child.stderr and CHILD_TOKEN not in child.stderr


def test_the_suites_token_never_leaks_through_the_filter() -> None:
    entry = record("Authorization: Bearer %s", SECRET)
    _logging.RedactingFilter().filter(entry)
    assert SECRET not in entry.getMessage()
