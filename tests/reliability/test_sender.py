"""The background sender: exit without close, fork, full queue, flush, callbacks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import openapi
from tests.conftest import SECRET
from tests.faultserver import FaultServer, Slow
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, QueueFullError, RejectedEvent, RetryPolicy

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOGAI_API_TOKEN": SECRET, "SERVER_URL": url}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


PRELUDE = """
    import os, sys
    from tests.unit.conftest import wire_event
    from togai_ingest import BackgroundSender
    sender = BackgroundSender(base_url=os.environ["SERVER_URL"], rate_limit=None,
                              flush_interval=30.0)
"""


def test_process_that_exits_without_close_delivers_everything() -> None:
    code = (
        PRELUDE
        + """
    for i in range(250):
        sender.enqueue(wire_event(id=f"exit-{i}"))
    # no flush, no close: the interpreter's exit drains the queue
    """
    )
    with FaultServer(token=SECRET) as srv:
        done = run_python(code, srv.url)
    assert done.returncode == 0, done.stderr
    assert sorted(srv.ledger) == sorted(f"exit-{i}" for i in range(250))
    assert set(srv.deliveries.values()) == {1}


def test_forked_child_gets_a_working_sender_and_nothing_is_sent_twice() -> None:
    code = (
        PRELUDE
        + """
    for i in range(30):
        sender.enqueue(wire_event(id=f"before-fork-{i}"))  # still queued at the fork
    pid = os.fork()
    if pid == 0:
        for i in range(40):
            sender.enqueue(wire_event(id=f"child-{i}"))
        sys.exit(0)  # the child's own exit drains the child's queue
    for i in range(20):
        sender.enqueue(wire_event(id=f"parent-{i}"))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    """
    )
    with FaultServer(token=SECRET) as srv:
        done = run_python(code, srv.url)
    assert done.returncode == 0, done.stderr
    expected = (
        [f"before-fork-{i}" for i in range(30)]
        + [f"child-{i}" for i in range(40)]
        + [f"parent-{i}" for i in range(20)]
    )
    assert sorted(srv.ledger) == sorted(expected)
    assert set(srv.deliveries.values()) == {1}, "an event queued before the fork was sent twice"
    assert srv.violations == []


@pytest.fixture
def stalled_server() -> FaultServer:
    """The first request takes 1.5 s, so the worker is busy while the queue fills up."""
    return FaultServer(token=SECRET, script=[Slow(1.5)])


def test_full_queue_raise_policy(stalled_server: FaultServer) -> None:
    with stalled_server as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None)
        sender = BackgroundSender(client, max_queue_size=3, flush_interval=0.01, when_full="raise")
        sender.enqueue(wire_event(id="first"))
        time.sleep(0.3)  # the worker took "first" and waits for the slow answer
        for i in range(3):
            sender.enqueue(wire_event(id=f"q{i}"))
        started = time.monotonic()
        with pytest.raises(QueueFullError, match="'refused'"):
            sender.enqueue(wire_event(id="refused"))
        assert time.monotonic() - started < 0.5
        report = sender.close(timeout=10)
    assert report.ok
    assert sorted(srv.ledger) == ["first", "q0", "q1", "q2"]


def test_full_queue_block_policy_times_out_then_succeeds(stalled_server: FaultServer) -> None:
    with stalled_server as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None)
        sender = BackgroundSender(
            client, max_queue_size=2, flush_interval=0.01, when_full="block", block_timeout=0.2
        )
        sender.enqueue(wire_event(id="first"))
        time.sleep(0.3)
        sender.enqueue(wire_event(id="q0"))
        sender.enqueue(wire_event(id="q1"))
        started = time.monotonic()
        with pytest.raises(QueueFullError):
            sender.enqueue(wire_event(id="refused"))
        assert time.monotonic() - started >= 0.19
        sender.block_timeout = 10.0
        sender.enqueue(wire_event(id="waited"))  # blocks until the worker frees a slot
        report = sender.close(timeout=10)
    assert report.ok
    assert sorted(srv.ledger) == ["first", "q0", "q1", "waited"]


def test_flush_sends_at_once_and_callbacks_report_rejections() -> None:
    rejected: list[RejectedEvent] = []
    with FaultServer(token=SECRET, reject_if=lambda event_id: event_id == "bad") as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None)
        with BackgroundSender(client, flush_interval=60, on_rejected=rejected.extend) as sender:
            for event_id in ("a", "bad", "b"):
                sender.enqueue(wire_event(id=event_id))
            started = time.monotonic()
            report = sender.flush(timeout=10)
            assert time.monotonic() - started < 5, "flush waited for the interval"
    assert sorted(srv.ledger) == ["a", "b"]
    assert [r.event["id"] for r in rejected] == ["bad"]
    assert [r.event["id"] for r in report.rejected] == ["bad"]
    assert report.accepted == 2


def test_flush_interval_sends_a_partial_batch() -> None:
    with FaultServer(token=SECRET) as srv:
        sender = BackgroundSender(Client(SECRET, base_url=srv.url), flush_interval=0.2)
        sender.enqueue(wire_event(id="lonely"))
        deadline = time.monotonic() + 5
        while "lonely" not in srv.ledger and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "lonely" in srv.ledger
        sender.close()


def test_batches_follow_the_documents_limit() -> None:
    with FaultServer(token=SECRET) as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None)
        with BackgroundSender(client, flush_interval=5) as sender:
            assert sender.batch_size == client.max_batch_size
            for i in range(client.max_batch_size * 2 + 1):
                sender.enqueue(wire_event(id=f"e{i}"))
            sender.flush(timeout=10)
    sizes = sorted(len(r.event_ids) for r in srv.requests)
    assert max(sizes) == client.max_batch_size
    assert sum(sizes) == client.max_batch_size * 2 + 1


def test_failed_events_are_reported_after_retries() -> None:
    with FaultServer(token="a-different-token") as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None, retry=RetryPolicy(max_retries=0))
        sender = BackgroundSender(client, flush_interval=0.01)
        sender.enqueue(wire_event(id="x"))
        report = sender.close(timeout=10)
    assert [(f.event["id"], getattr(f.error, "status", None)) for f in report.failed] == [
        ("x", 401)
    ]
    assert not report.ok


def test_invalid_event_is_refused_at_enqueue() -> None:
    sender = BackgroundSender(Client(SECRET, base_url="http://127.0.0.1:9"))
    limit = openapi.limit("Event", "accountId", "maxLength")
    with pytest.raises(ValueError, match=rf"event\.accountId: longer than {limit}"):
        sender.enqueue(wire_event(accountId="a" * (limit + 1)))
    assert sender.close().ok


def test_close_reports_events_it_could_not_send() -> None:
    with FaultServer(token=SECRET, script=[Slow(3.0)]) as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None, timeout=10)
        sender = BackgroundSender(client, flush_interval=0.01, batch_size=1)
        for i in range(5):
            sender.enqueue(wire_event(id=f"e{i}"))
        report = sender.close(timeout=0.5)
        assert [e["id"] for e in report.in_flight] == ["e0"]  # named, not only counted
        assert [e["id"] for e in report.undelivered] == ["e1", "e2", "e3", "e4"]
        assert report.unconfirmed_ids() == ["e0", "e1", "e2", "e3", "e4"]
        # The abandoned worker finishes its batch in flight (answered after 3 s) and stops;
        # it must not go on into the next test, retrying against a closed server.
        worker = sender._worker
        assert worker is not None
        worker.join(10)
        assert not worker.is_alive()


def test_at_exit_what_could_not_be_delivered_is_logged_with_ids() -> None:
    code = """
    import logging, os
    from tests.unit.conftest import wire_event
    from togai_ingest import BackgroundSender, Client, RetryPolicy
    logging.basicConfig(level=logging.WARNING)
    client = Client(base_url=os.environ["SERVER_URL"], retry=RetryPolicy(max_retries=0))
    sender = BackgroundSender(client, flush_interval=30.0)
    sender.enqueue(wire_event(id="lost-at-exit-1"))
    """
    with FaultServer(token="the-server-wants-another-token") as srv:
        done = run_python(code, srv.url)
    assert done.returncode == 0, done.stderr
    assert "ERROR" in done.stderr and "lost-at-exit-1" in done.stderr
    assert SECRET not in done.stderr
