"""The enqueue fast paths (issue 8's enqueue cost): the in-memory put takes no lock; the spool's
put writes its event to the journal (durability "process", ``test_journal.py``) or joins a
group that one writer thread commits (``"power"``: the put waits for the commit, and its
fsync). What they must still guarantee: nothing lost or doubled under concurrent puts, a put
that returned is committed (or in the journal), group commit shares commits, a put racing
close or shutdown stored its event or raised ``ClosedError``, and the writer thread is a
daemon, stopped by ``shutdown``, made again after a fork, and never leaves a put waiting when
it fails."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SECRET
from tests.faultserver import FaultServer
from tests.sender.producers import Producers
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, RetryPolicy
from togai_ingest import spool as spool_module
from togai_ingest.errors import ClosedError, QueueFullError, SpoolError, SpoolFullError
from togai_ingest.queues import Item, MemoryQueue
from togai_ingest.spool import SpoolQueue
from togai_ingest.validation import EncodedEvent, encode_event

ROOT = Path(__file__).resolve().parents[2]
THREADS = 6


def _event(event_id: str) -> EncodedEvent:
    return EncodedEvent(event_id, b'{"id":"%s"}' % event_id.encode())


def _run(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a put did not return"


def _committed_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM events ORDER BY seq")]
    finally:
        conn.close()


# --- In memory.


def test_memory_puts_from_many_threads_while_taking_lose_and_double_nothing() -> None:
    queue = MemoryQueue(10**6)
    per_thread = 3000
    taken: list[Item] = []
    done = threading.Event()

    def take() -> None:
        while not done.is_set() or queue.size():
            items = queue.take(100, 0.01)
            queue.ack(items)
            taken.extend(items)

    def put(slot: int) -> None:
        for i in range(per_thread):
            queue.put(_event(f"m{slot}-{i}"), 0)

    taker = threading.Thread(target=take)
    taker.start()
    _run([threading.Thread(target=put, args=(k,)) for k in range(THREADS)])
    done.set()
    taker.join(30)
    ids = [item.event.id for item in taken]
    assert len(ids) == len(set(ids)) == THREADS * per_thread
    assert len({item.key for item in taken}) == len(taken), "keys are unique"
    for slot in range(THREADS):  # each thread's events in the order it put them
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"m{slot}-")]
        assert mine == sorted(mine)


def test_a_full_memory_queue_raises_and_overshoots_by_at_most_the_putting_threads() -> None:
    queue = MemoryQueue(200)
    producers = Producers(
        lambda event_id: queue.put(_event(event_id), 0), "f", (QueueFullError,), THREADS
    )
    producers.start()
    producers.join()
    returned, refused = producers.returned, producers.refused
    assert all(event_id in why for event_id, why in producers.why.items())
    held = queue.ids()
    assert sorted(held) == sorted(returned), "every put that returned is queued, no other"
    assert 200 <= len(held) <= 200 + THREADS - 1
    assert len(returned) + len(refused) == THREADS * 400


def test_a_blocked_memory_put_goes_on_when_a_take_makes_room() -> None:
    queue = MemoryQueue(2)
    queue.put(_event("a"), 0)
    queue.put(_event("b"), 0)
    threading.Timer(0.2, lambda: queue.ack(queue.take(1, 0))).start()
    started = time.monotonic()
    queue.put(_event("c"), 5.0)
    assert 0.15 <= time.monotonic() - started < 4.0
    assert queue.ids() == ["b", "c"]


def test_close_ends_a_blocked_memory_put_with_closed_error() -> None:
    queue = MemoryQueue(1)
    queue.put(_event("a"), 0)
    threading.Timer(0.2, queue.close).start()
    with pytest.raises(ClosedError, match="'b'"):
        queue.put(_event("b"), None)


def test_a_waiting_take_wakes_for_a_full_batch_not_at_its_deadline() -> None:
    queue = MemoryQueue(100)
    got: list[list[Item]] = []
    taker = threading.Thread(target=lambda: got.append(queue.take(5, 10.0)))
    taker.start()
    time.sleep(0.1)
    started = time.monotonic()
    for i in range(5):
        queue.put(_event(f"w{i}"), 0)
    taker.join(5)
    assert time.monotonic() - started < 4.0
    assert [item.event.id for item in got[0]] == [f"w{i}" for i in range(5)]


# --- The spool.


def test_spool_group_commit_shares_commits_and_a_returned_put_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    real = SpoolQueue._commit

    def counting(self: SpoolQueue, group: Any) -> None:
        commits.append(len(group.rows))
        real(self, group)

    monkeypatch.setattr(SpoolQueue, "_commit", counting)
    path = tmp_path / "s"
    queue = SpoolQueue(path, durability="power")  # a put waits for its group's commit
    per_thread = 300
    unseen: list[str] = []

    def put(slot: int) -> None:
        reader = sqlite3.connect(path)  # another connection: sees only what is committed
        try:
            for i in range(per_thread):
                event_id = f"g{slot}-{i}"
                queue.put(_event(event_id), None)
                if i % 30 == 0:
                    row = reader.execute("SELECT 1 FROM events WHERE id = ?", (event_id,))
                    if row.fetchone() is None:
                        unseen.append(event_id)
        finally:
            reader.close()

    _run([threading.Thread(target=put, args=(k,)) for k in range(THREADS)])
    queue.shutdown()
    assert unseen == [], "a put returned before its event was committed"
    assert sum(commits) == THREADS * per_thread
    assert len(commits) < THREADS * per_thread, "concurrent puts must share commits"
    ids = _committed_ids(path)
    assert sorted(ids) == sorted(f"g{k}-{i}" for k in range(THREADS) for i in range(per_thread))


def test_spool_puts_racing_shutdown_stored_their_event_or_raised_closed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    queue = SpoolQueue(path)
    returned: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(THREADS + 1)

    tried = [0] * THREADS

    def put(slot: int) -> None:
        started.wait()
        for i in range(1_000_000):  # until shutdown, and a few puts after it
            event_id = f"r{slot}-{i}"
            tried[slot] += 1
            try:
                queue.put(_event(event_id), 1.0)
            except ClosedError:
                with lock:
                    refused.append(event_id)
                if sum(1 for r in refused if r.startswith(f"r{slot}-")) >= 20:
                    return
                continue
            with lock:
                returned.append(event_id)

    threads = [threading.Thread(target=put, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.1)
    queue.shutdown()
    for thread in threads:
        thread.join(60)
    assert refused, "shutdown came too late to race the puts"
    ids = _committed_ids(path)
    assert sorted(ids) == sorted(returned)
    assert not set(ids) & set(refused)
    assert len(returned) + len(refused) == sum(tried)


def test_the_spool_writer_is_a_daemon_stopped_by_shutdown(tmp_path: Path) -> None:
    queue = SpoolQueue(tmp_path / "s")
    assert queue._writer is None, "no thread before the first put"
    queue.put(_event("one"), None)
    writer = queue._writer
    assert writer is not None and writer.is_alive() and writer.daemon
    assert writer.name == "togai-spool-writer"
    queue.shutdown()
    assert not writer.is_alive()
    with pytest.raises(ClosedError):
        queue.put(_event("two"), None)
    assert _committed_ids(tmp_path / "s") == ["one"]


def test_a_failing_writer_fails_the_waiting_put_and_the_next_put_starts_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = SpoolQueue(tmp_path / "s", durability="power")
    real = SpoolQueue._commit

    def bug(self: SpoolQueue, group: Any) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(SpoolQueue, "_commit", bug)
    with caplog.at_level(logging.ERROR, logger="togai_ingest"):
        started = time.monotonic()
        with pytest.raises(SpoolError, match=r"writer.*'lost'"):
            queue.put(_event("lost"), None)
        assert time.monotonic() - started < 10
    assert "spool writer" in caplog.text
    monkeypatch.setattr(SpoolQueue, "_commit", real)
    queue.put(_event("kept"), None)
    queue.shutdown()
    assert _committed_ids(tmp_path / "s") == ["kept"]


def test_a_failing_writer_leaves_a_journaled_event_for_the_next_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In the journal the event is spooled when the put returns: a writer that fails (a bug)
    leaves it there, and the next writer (started by the next put) imports it."""
    queue = SpoolQueue(tmp_path / "s")
    real = SpoolQueue._commit

    def bug(self: SpoolQueue, group: Any) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(SpoolQueue, "_commit", bug)
    with caplog.at_level(logging.ERROR, logger="togai_ingest"):
        queue.put(_event("kept-1"), None)
        deadline = time.monotonic() + 10
        while "spool writer" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "spool writer" in caplog.text
    assert queue._writer is None, "the writer did not stop"
    monkeypatch.setattr(SpoolQueue, "_commit", real)
    queue.put(_event("kept-2"), None)
    queue.shutdown()
    assert _committed_ids(tmp_path / "s") == ["kept-1", "kept-2"]


def test_a_failing_writer_releases_a_put_that_waits_for_it_to_catch_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put past ``_MAX_PENDING`` waits for the writer; a writer that fails (a bug) puts the
    rows back for the next one and releases the put: its event is in the journal."""
    monkeypatch.setattr(spool_module, "_MAX_PENDING", 1)
    queue = SpoolQueue(tmp_path / "s")
    real = SpoolQueue._commit

    def bug(self: SpoolQueue, group: Any) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(SpoolQueue, "_commit", bug)
    put = threading.Thread(target=queue.put, args=(_event("waited"), None))
    put.start()
    put.join(10)
    assert not put.is_alive(), "the put still waits for a writer that failed"
    monkeypatch.setattr(SpoolQueue, "_commit", real)
    queue.put(_event("after"), None)
    queue.shutdown()
    assert _committed_ids(tmp_path / "s") == ["waited", "after"]


def test_a_full_disk_fails_every_put_of_the_group_with_its_own_id(tmp_path: Path) -> None:
    queue = SpoolQueue(tmp_path / "s", max_page_count=40)
    failures: list[str] = []
    lock = threading.Lock()

    def put(slot: int) -> None:
        for i in range(3000):
            event_id = f"d{slot}-{i}"
            try:
                queue.put(encode_event(wire_event(id=event_id)), None)
            except SpoolError as exc:
                assert f"'{event_id}'" in str(exc)
                with lock:
                    failures.append(event_id)
                return

    _run([threading.Thread(target=put, args=(k,)) for k in range(THREADS)])
    queue.shutdown()
    assert len(failures) == THREADS
    assert not set(failures) & set(_committed_ids(tmp_path / "s"))


def test_after_fork_the_child_gets_its_own_writer_and_reader(tmp_path: Path) -> None:
    code = """
    import os, sys, sqlite3
    from togai_ingest.spool import SpoolQueue
    from togai_ingest.validation import EncodedEvent
    queue = SpoolQueue(sys.argv[1])
    queue.put(EncodedEvent("parent-1", b'{}'), None)
    queue.release(queue.take(10, 0), 0)  # the read connection exists at the fork
    parent_writer, parent_reader = queue._writer, queue._rconn
    pid = os.fork()
    if pid == 0:
        ok = queue._writer is None and queue._rconn is None
        queue.put(EncodedEvent("child-1", b'{}'), None)
        ok = ok and queue._writer is not None and queue._writer is not parent_writer
        ok = ok and queue._writer.daemon and queue._writer.is_alive()
        taken = queue.take(10, 0)  # on a read connection of its own
        ok = ok and queue._rconn is not None and queue._rconn is not parent_reader
        ok = ok and {"child-1", "parent-1"} <= {i.event.id for i in taken}  # parent-2 may be
        queue.release(taken, 0)
        queue.shutdown()
        os._exit(0 if ok else 3)
    queue.put(EncodedEvent("parent-2", b'{}'), None)
    _, status = os.waitpid(pid, 0)
    queue.shutdown()
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert not parent_writer.is_alive()
    ids = sorted(r[0] for r in sqlite3.connect(sys.argv[1]).execute("SELECT id FROM events"))
    assert ids == ["child-1", "parent-1", "parent-2"], ids
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr


# --- The sender on a spool: enqueue racing close.


def test_spooled_enqueue_racing_close_leaves_no_event_unreported(tmp_path: Path) -> None:
    with FaultServer(token=SECRET, latency=0.002) as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None, retry=RetryPolicy(max_retries=0))
        spool = tmp_path / "s"
        sender = BackgroundSender(client, spool_path=spool, flush_interval=0.01, batch_size=10)
        producers = Producers(
            lambda event_id: sender.enqueue(wire_event(id=event_id)), "t", (ClosedError,)
        )
        producers.start()
        time.sleep(0.1)
        report = sender.close(timeout=0.05)
        producers.join()
    returned, refused = producers.returned, producers.refused
    held = set(SpoolQueue(spool).ids())
    assert not set(refused) & (held | set(srv.ledger))
    assert set(report.spooled) <= set(returned)
    # Every event whose enqueue returned is delivered, or named and still in the spool.
    assert set(returned) <= set(srv.ledger) | (set(report.spooled) & held)
    assert len(returned) + len(refused) == 1600


def test_the_writer_runs_each_job_of_the_worker_once_between_commits(tmp_path: Path) -> None:
    """The worker's transactions (lease, ack, release) run on the writer thread while puts
    keep it committing: each exactly once (a job added during a commit once ran twice)."""
    queue = SpoolQueue(tmp_path / "s")
    stop = threading.Event()
    runs: list[int] = []

    def put() -> None:
        i = 0
        while not stop.is_set():
            queue.put(_event(f"j-{i}"), None)
            i += 1

    putter = threading.Thread(target=put)
    putter.start()

    def job(n: int) -> Callable[[sqlite3.Connection], int]:
        def run(conn: sqlite3.Connection) -> int:
            runs.append(n)
            return n

        return run

    try:
        for n in range(300):
            assert queue._on_writer(job(n)) == n
    finally:
        stop.set()
        putter.join(30)
    queue.shutdown()
    assert runs == list(range(300))


def test_a_job_in_steps_lets_the_puts_waiting_behind_it_commit_between_two_steps(
    tmp_path: Path,
) -> None:
    """An ``ack`` runs in steps so that a put waits behind one step, not a whole batch: the
    writer commits the group that formed during a step before it runs the next one."""
    queue = SpoolQueue(tmp_path / "s")
    queue.put(_event("first"), None)  # the writer runs
    seen: list[int] = []
    putter: list[threading.Thread] = []

    def job(conn: sqlite3.Connection) -> Any:
        seen.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        thread = threading.Thread(target=queue.put, args=(_event("during"), None))
        thread.start()
        putter.append(thread)
        deadline = time.monotonic() + 10
        while not queue._group.rows:  # the put joined the open group, and waits for it
            assert time.monotonic() < deadline, "the put never joined a group"
            time.sleep(0.001)
        yield
        seen.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        return "done"

    assert queue._on_writer(job) == "done"
    putter[0].join(10)
    assert seen == [1, 2], "the put made during the first step was not committed before the next"
    queue.shutdown()
    assert _committed_ids(tmp_path / "s") == ["first", "during"]


def _wal_resets(path: Path) -> int:
    """The -wal header's checkpoint sequence number: one more at each start of the WAL."""
    with open(f"{path}-wal", "rb") as wal:
        header = wal.read(16)
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else 0


def test_the_wal_starts_again_while_puts_never_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL starts again only at a write that finds every frame checkpointed, which never
    happens while puts commit during each checkpoint: it grew without end (225 MB in 10 s at
    2,000 events/s). Past its limit the writer checkpoints between two commits, and the WAL
    starts again, cut back to the limit."""
    monkeypatch.setattr(spool_module, "_WAL_LIMIT", 1 << 20)
    monkeypatch.setattr(spool_module, "_CHECKPOINT_EVERY", 0.1)
    path = tmp_path / "s"
    queue = SpoolQueue(path, max_bytes=None)
    stop = threading.Event()
    counts = [0, 0]

    def put(slot: int) -> None:
        while not stop.is_set():
            queue.put(_event(f"w{slot}-{counts[slot]}"), None)
            counts[slot] += 1

    putters = [threading.Thread(target=put, args=(k,)) for k in range(2)]
    for thread in putters:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{path}-wal").exists():
            time.sleep(0.01)
        first = _wal_resets(path)
        while _wal_resets(path) < first + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        resets = _wal_resets(path) - first
    finally:
        stop.set()
        for thread in putters:
            thread.join(30)
    queue.shutdown()
    assert resets >= 2, "the WAL never started again while puts went on"
    assert len(_committed_ids(path)) == sum(counts), "an event was lost"


class _SlowRelease:
    """The spool's ``_wlock``, whose release by the writer thread is followed by a pause: it
    widens the moments after the writer let go of the open group, where a put may join it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()
        if threading.current_thread().name == "togai-spool-writer":
            time.sleep(0.001)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_put_that_joins_the_group_the_writer_just_left_is_committed_once(
    tmp_path: Path,
) -> None:
    """The writer decided under its lock to take no group (it was empty; a job waited), then
    looked at the group again without the lock: a put that joined it in between was committed
    in this round, and again in the next (the group was never taken). Found by the kill trials
    under CPU load (an id twice in the spool, in consecutive rows)."""
    path = tmp_path / "s"
    queue = SpoolQueue(path)
    queue._wlock = _SlowRelease(queue._wlock)  # type: ignore[assignment]
    stop = threading.Event()

    def jobs() -> None:
        while not stop.is_set():
            queue._on_writer(lambda conn: None)

    worker = threading.Thread(target=jobs)
    worker.start()
    producers = Producers(lambda i: queue.put(_event(i), None), "once", (), threads=2, each=150)
    try:
        producers.start()
        producers.join()
    finally:
        stop.set()
        worker.join(30)
    queue.shutdown()
    ids = _committed_ids(path)
    assert len(ids) == len(set(ids)), "an event was committed twice"
    assert sorted(ids) == sorted(producers.returned)


@pytest.mark.parametrize("durability", ["process", "power"])
def test_more_puts_than_a_group_holds_all_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: Any
) -> None:
    """A group once closed at ``_MAX_GROUP`` events (the rows of one statement) and the puts
    after it opened the next: the closed group was nobody's, its puts waited for ever. Now a
    group of more rows commits in several statements of one transaction. Here the writer is
    held up while more puts than two statements hold join one group."""
    monkeypatch.setattr(spool_module, "_MAX_GROUP", 4)
    path = tmp_path / "s"
    queue = SpoolQueue(path, durability=durability)
    queue.put(_event("first"), None)  # the writer runs
    producers = Producers(lambda i: queue.put(_event(i), None), "big", (), threads=11, each=3)
    with queue._io:  # the writer cannot commit: every put joins a group and waits
        producers.start()
        deadline = time.monotonic() + 10
        while queue._count < 1 + 11 and time.monotonic() < deadline:
            time.sleep(0.001)
    producers.join(30)
    queue.shutdown()
    ids = _committed_ids(path)
    assert sorted(ids) == sorted(["first", *producers.returned])
    assert len(producers.returned) == producers.total


def test_a_group_of_several_statements_is_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of more rows than one statement holds is committed in one transaction: when
    the disk fills part-way (room is made for about a dozen rows of its 40), the statements
    before are taken back, so that no event whose put raised is in the spool (sent later, it
    would be delivered after it was reported not spooled)."""
    monkeypatch.setattr(spool_module, "_MAX_GROUP", 2)
    path = tmp_path / "s"
    queue = SpoolQueue(path, max_page_count=40, max_bytes=None, durability="power")

    def wide(event_id: str) -> EncodedEvent:
        return EncodedEvent(event_id, b'{"id":"%s","pad":"%s"}' % (event_id.encode(), b"x" * 420))

    filled = 0
    with pytest.raises(SpoolFullError):
        while True:
            queue.put(wide(f"fill-{filled}"), None)
            filled += 1
    queue._on_writer(lambda conn: conn.execute("DELETE FROM events WHERE seq <= 12"))
    producers = Producers(lambda i: queue.put(wide(i), None), "g", (SpoolError,), 40, each=1)
    running, go = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        running.set()
        go.wait(10)

    busy = threading.Thread(target=queue._on_writer, args=(hold,))
    busy.start()  # the writer runs this job: all 40 puts join one group of 20 statements
    assert running.wait(10)
    producers.start()
    deadline = time.monotonic() + 10
    while len(queue._group.rows) < 40:
        assert time.monotonic() < deadline, "the puts did not join one group"
        time.sleep(0.001)
    go.set()
    busy.join(10)
    producers.join(30)
    queue.shutdown()
    committed = set(_committed_ids(path))
    assert len(producers.refused) == 40, "the group's commit did not fail: no test"
    assert all("full" in producers.why[i] for i in producers.refused)
    assert not committed & set(producers.refused), "a refused event was committed"
    assert len(committed) == filled - 12
