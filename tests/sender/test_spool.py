"""The spool (issue 8) in one process: it outlives a sender, an outage, a refused token, a
damaged file and a full disk; it is bounded; rejected events can be kept; fork shares it."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import SECRET
from tests.faultserver import Error, FaultServer, Slow, unavailable_burst
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, RetryPolicy
from togai_ingest.errors import QueueFullError, SpoolFullError
from togai_ingest.spool import SpoolQueue

ROOT = Path(__file__).resolve().parents[2]
DOWN = "http://127.0.0.1:9"  # nothing listens: every request fails to connect


def _client(url: str, retries: int = 0, **options: Any) -> Client:
    retry = RetryPolicy(max_retries=retries, initial_delay=0.001, max_delay=0.002)
    return Client(SECRET, base_url=url, rate_limit=None, retry=retry, **options)


def _wait(predicate: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_what_one_sender_could_not_send_the_next_one_delivers(tmp_path: Path) -> None:
    spool = tmp_path / "events.spool"
    first = BackgroundSender(_client(DOWN), spool_path=spool, flush_interval=0.01)
    ids = [f"kept-{i}" for i in range(120)]
    for event_id in ids:
        first.enqueue(wire_event(id=event_id))
    report = first.close(timeout=0.5)
    assert sorted(report.spooled) == sorted(ids), "close must name what stays spooled"
    assert report.failed == [] and report.undelivered == []
    with FaultServer(token=SECRET) as srv:
        second = BackgroundSender(_client(srv.url), spool_path=spool, flush_interval=0.01)
        assert _wait(lambda: len(srv.ledger) == len(ids))  # delivered at start, no enqueue
        assert second.close(timeout=10).ok
    assert sorted(srv.ledger) == sorted(ids)
    assert set(srv.deliveries.values()) == {1}
    assert SpoolQueue(spool).ids() == []


def test_an_outage_longer_than_the_retry_budget_loses_nothing(tmp_path: Path) -> None:
    # 30 answers 503 in a row: every batch fails after its retry, again and again.
    with FaultServer(token=SECRET, script=unavailable_burst(30)) as srv:
        queue = SpoolQueue(tmp_path / "s", retry_delay=0.02, max_retry_delay=0.1)
        sender = BackgroundSender(_client(srv.url, retries=1), queue=queue, flush_interval=0.01)
        ids = [f"outage-{i}" for i in range(250)]
        for event_id in ids:
            sender.enqueue(wire_event(id=event_id))
        during = sender.flush(timeout=20)  # returns once each batch failed (stays spooled)
        assert during.failed == [], "a failed batch must stay spooled, not be failed"
        assert _wait(lambda: len(srv.ledger) == len(ids), 30)
        report = sender.close(timeout=10)
    assert sorted(srv.ledger) == sorted(ids)
    assert report.ok
    assert sum(1 for r in srv.requests if r.status == 503) == 30


def test_a_refused_token_keeps_the_events_spooled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FaultServer(token="another-token") as srv:
        sender = BackgroundSender(_client(srv.url), spool_path=tmp_path / "s", flush_interval=0.01)
        with caplog.at_level(logging.ERROR, logger="togai_ingest"):
            for i in range(5):
                sender.enqueue(wire_event(id=f"tok-{i}"))
            report = sender.flush(timeout=10)
            closed = sender.close(timeout=1)
        requests = len(srv.requests)
    assert report.failed == []
    assert sorted(closed.spooled) == [f"tok-{i}" for i in range(5)]
    assert "refused the token" in caplog.text
    assert requests == 1, "after a 401 the worker must pause, not fail batch after batch"
    assert sorted(SpoolQueue(tmp_path / "s").ids()) == [f"tok-{i}" for i in range(5)]


@pytest.mark.parametrize("when_full", ["raise", "block"])
def test_the_spool_is_bounded(tmp_path: Path, when_full: str) -> None:
    with FaultServer(token=SECRET, script=[Slow(1.0)]) as srv:
        queue = SpoolQueue(tmp_path / "s", max_events=3)
        sender = BackgroundSender(
            _client(srv.url, timeout=10),
            queue=queue,
            flush_interval=0.01,
            batch_size=1,
            when_full=when_full,  # type: ignore[arg-type]
            block_timeout=0.2,
        )
        for i in range(3):
            sender.enqueue(wire_event(id=f"b{i}"))
        started = time.monotonic()
        with pytest.raises(QueueFullError, match="'b3'"):
            sender.enqueue(wire_event(id="b3"))
        waited = time.monotonic() - started
        assert waited < 0.15 if when_full == "raise" else waited >= 0.19
        sender.block_timeout = 10
        if when_full == "block":
            sender.enqueue(wire_event(id="b4"))  # waits until the slow batch is acknowledged
        report = sender.close(timeout=10)
    assert report.ok
    expected = ["b0", "b1", "b2"] + (["b4"] if when_full == "block" else [])
    assert sorted(srv.ledger) == expected


def test_max_spool_bytes_bounds_the_spool(tmp_path: Path) -> None:
    event_bytes = len(orjson.dumps(wire_event(id="x-0")))
    sender = BackgroundSender(
        _client(DOWN),
        spool_path=tmp_path / "s",
        max_spool_bytes=event_bytes * 4,
        when_full="raise",
        flush_interval=60,
    )
    for i in range(4):
        sender.enqueue(wire_event(id=f"x-{i}"))
    with pytest.raises(QueueFullError):
        sender.enqueue(wire_event(id="x-4"))
    assert sorted(sender.close(timeout=0.2).spooled) == [f"x-{i}" for i in range(4)]


def _damaged_spool_starts_fresh(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Path, FaultServer]:
    with caplog.at_level(logging.ERROR, logger="togai_ingest"), FaultServer(token=SECRET) as srv:
        sender = BackgroundSender(_client(srv.url), spool_path=spool, flush_interval=0.01)
        sender.enqueue(wire_event(id="after-damage"))
        assert sender.close(timeout=10).ok
    moved = re.search(r"moved it aside to (\S+)", caplog.text)
    assert moved is not None, caplog.text
    assert "after-damage" in srv.ledger
    return Path(moved.group(1)), srv


def test_a_garbage_spool_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "s"
    garbage = os.urandom(8192)
    spool.write_bytes(garbage)
    moved, _ = _damaged_spool_starts_fresh(spool, caplog)
    assert moved.read_bytes() == garbage, "the damaged file is kept for salvage"
    assert moved.name.startswith("s.corrupt-")


def test_a_truncated_spool_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "s"
    sender = BackgroundSender(_client(DOWN), spool_path=spool, flush_interval=60)
    for i in range(3000):
        sender.enqueue(wire_event(id=f"t-{i}"))
    # Wait for the worker to stop: one still writing to the file while the test damages it
    # (a loaded machine, a 0.1 s close) made this test flaky.
    sender.close(timeout=30)
    assert sender._worker is None or not sender._worker.is_alive()
    conn = sqlite3.connect(spool)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = spool.stat().st_size
    with open(spool, "r+b") as file:
        file.truncate(size // 3)
    moved, _ = _damaged_spool_starts_fresh(spool, caplog)
    assert moved.stat().st_size == size // 3


def test_a_full_disk_raises_a_named_error_and_keeps_what_is_spooled(tmp_path: Path) -> None:
    spool = tmp_path / "s"
    queue = SpoolQueue(spool, max_page_count=40)  # 40 pages of 4 KiB: a tiny disk
    sender = BackgroundSender(_client(DOWN), queue=queue, flush_interval=60)
    returned: list[str] = []
    with pytest.raises(SpoolFullError) as raised:
        for i in range(10_000):
            sender.enqueue(wire_event(id=f"full-{i}"))
            returned.append(f"full-{i}")
    assert f"'full-{len(returned)}'" in str(raised.value)
    assert len(returned) > 50
    assert sorted(sender.close(timeout=0.1).spooled) == sorted(returned)
    with FaultServer(token=SECRET) as srv:
        sender = BackgroundSender(_client(srv.url), spool_path=spool, flush_interval=0.01)
        assert _wait(lambda: len(srv.ledger) == len(returned))
        assert sender.close(timeout=10).ok
    assert sorted(srv.ledger) == sorted(returned)


def test_rejected_events_leave_the_spool_and_can_be_kept_as_dead_letters(tmp_path: Path) -> None:
    with FaultServer(token=SECRET, reject_if=lambda i: i.startswith("no")) as srv:
        sender = BackgroundSender(
            _client(srv.url), spool_path=tmp_path / "s", dead_letter=True, flush_interval=0.01
        )
        for event_id in ("yes-1", "no-1", "yes-2", "no-2"):
            sender.enqueue(wire_event(id=event_id))
        report = sender.flush(timeout=10)
        sender.close(timeout=10)
    assert sorted(r.event["id"] for r in report.rejected) == ["no-1", "no-2"]
    queue = SpoolQueue(tmp_path / "s")
    assert queue.ids() == []
    assert [(i, reason) for i, _, reason in queue.dead_letters()] == [
        ("no-1", "Event rejected: the server always rejects this id"),
        ("no-2", "Event rejected: the server always rejects this id"),
    ]


def test_a_failed_request_leaves_the_batch_spooled_not_failed(tmp_path: Path) -> None:
    with FaultServer(token=SECRET, script=[Error(400)]) as srv:
        queue = SpoolQueue(tmp_path / "s", retry_delay=0.05)
        sender = BackgroundSender(_client(srv.url), queue=queue, flush_interval=0.01)
        sender.enqueue(wire_event(id="once-refused"))
        assert sender.flush(timeout=10).failed == []
        assert _wait(lambda: "once-refused" in srv.ledger)
        assert sender.close(timeout=10).ok


def test_a_forked_child_shares_the_spool_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    code = """
    import os, sys
    from tests.unit.conftest import wire_event
    from togai_ingest import BackgroundSender
    sender = BackgroundSender(base_url=os.environ["SERVER_URL"], rate_limit=None,
                              spool_path=os.environ["SPOOL"], flush_interval=0.02)
    for i in range(300):
        sender.enqueue(wire_event(id=f"before-fork-{i}"))
    pid = os.fork()
    if pid == 0:
        for i in range(200):
            sender.enqueue(wire_event(id=f"child-{i}"))
        sys.exit(0)
    for i in range(100):
        sender.enqueue(wire_event(id=f"parent-{i}"))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = sender.close(30)
    """
    with FaultServer(token=SECRET, latency=0.002) as srv:
        env = {
            **os.environ,
            "TOGAI_API_TOKEN": SECRET,
            "SERVER_URL": srv.url,
            "SPOOL": str(tmp_path / "s"),
        }
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    expected = (
        [f"before-fork-{i}" for i in range(300)]
        + [f"child-{i}" for i in range(200)]
        + [f"parent-{i}" for i in range(100)]
    )
    assert sorted(srv.ledger) == sorted(expected)
    assert set(srv.deliveries.values()) == {1}
    assert SpoolQueue(tmp_path / "s").ids() == []


def test_a_process_holding_the_open_lock_costs_a_bounded_wait(tmp_path: Path) -> None:
    """Another process stopped (SIGSTOP, a debugger) while it opens the spool must not hang
    this one: after ``busy_timeout`` the put raises a named error."""
    import fcntl
    import os

    from togai_ingest.errors import SpoolError
    from togai_ingest.validation import encode_event

    spool = tmp_path / "s"
    holder = os.open(f"{spool}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        with pytest.raises(SpoolError, match="lock"):
            SpoolQueue(spool, busy_timeout=0.3).put(encode_event(wire_event(id="out")), 1.0)
        assert time.monotonic() - started < 5.0
    finally:
        os.close(holder)


def test_damaged_rows_are_set_aside_and_the_rest_of_their_batch_is_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows that SQLite reads back fine but that are no valid event any more (a flipped bit,
    # a page zero-filled, an id that does not match): sent, they would fail their whole
    # batch with a 400 on every attempt, and the good events beside them would never go.
    # And one that is still a valid event with its id, but another value: its checksum tells
    # (sent, it would bill 13 ms where 12 were spooled).
    spool = tmp_path / "events.spool"
    first = BackgroundSender(_client(DOWN), spool_path=spool, flush_interval=0.01)
    ids = [f"row-{i}" for i in range(30)]
    for event_id in ids:
        first.enqueue(wire_event(id=event_id))
    first.close(timeout=0.5)
    damage = {
        "row-3": b"\x00" * 40,  # a page cut short and zero-filled
        "row-7": orjson.dumps(wire_event(id="row-7")).replace(b'"eventName"', b'"eventNbme"'),
        "row-9": orjson.dumps(wire_event(id="someone-else")),
        "row-11": orjson.dumps(wire_event(id="row-11")).replace(b'"12"', b'"13"'),
    }
    assert b'"13"' in damage["row-11"]
    with sqlite3.connect(spool) as conn:
        for event_id, body in damage.items():
            conn.execute("UPDATE events SET body = ? WHERE id = ?", (body, event_id))
    rejected: list[Any] = []
    with caplog.at_level(logging.ERROR, logger="togai_ingest"), FaultServer(token=SECRET) as srv:
        second = BackgroundSender(
            _client(srv.url),
            spool_path=spool,
            flush_interval=0.01,
            dead_letter=True,
            on_rejected=rejected.extend,
        )
        assert _wait(lambda: len(srv.ledger) == len(ids) - len(damage))
        second.close(timeout=10)
    assert sorted(srv.ledger) == sorted(set(ids) - set(damage))
    assert srv.violations == []  # nothing damaged reached the server
    assert len(rejected) == len(damage)
    assert all(r.message.startswith("damaged in the spool") for r in rejected)
    queue = SpoolQueue(spool)
    assert queue.ids() == []
    assert sorted(i for i, _, _ in queue.dead_letters()) == sorted(damage)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(event_id in logged for event_id in damage)
