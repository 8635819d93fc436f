"""The spool's leases (``leases`` table): a batch being sent is held by one process only; a lease
that expires, or whose owner died or shut down, frees its events for another; a late answer
of a process whose lease was taken over changes nothing another holds; a spool written before
the ``leases`` table (row leases in ``events.owner``/``events.due``) is honoured.

Several processes are several ``SpoolQueue`` objects on one file: each has its own owner name
and connection, as separate processes do (tests/sender/test_crash.py and test_spool.py run real
ones)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.sender.machines import run_machine
from togai_ingest.queues import Item
from togai_ingest.spool import SpoolQueue
from togai_ingest.validation import EncodedEvent


def _event(event_id: str) -> EncodedEvent:
    return EncodedEvent(event_id, b'{"id":"%s"}' % event_id.encode())


def _sql(path: Path, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def _ids(items: list[Item]) -> set[str]:
    return {item.event.id for item in items}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # gone: nothing else of ours is likely to get it back this soon


def test_a_batch_is_held_by_one_process_and_a_shut_down_one_gives_it_back(tmp_path: Path) -> None:
    path = tmp_path / "s"
    a, b = SpoolQueue(path), SpoolQueue(path)
    for i in range(250):
        a.put(_event(f"e{i}"), None)
    first, second = a.take(100, 0), b.take(100, 0)
    assert len(first) == len(second) == 100 and not _ids(first) & _ids(second)
    assert _sql(path, "SELECT count(*) FROM leases") == [(2,)]
    a.shutdown()  # gives its lease back at once: no wait for it to expire
    again = b.take(100, 0)
    assert _ids(again) == _ids(first)
    b.ack([*second, *again])
    rest = b.take(100, 0)
    assert len(rest) == 50
    b.ack(rest)
    assert _sql(path, "SELECT count(*) FROM events") == [(0,)]
    assert _sql(path, "SELECT count(*) FROM leases") == [(0,)], "an acknowledged lease goes"
    b.shutdown()


def test_a_released_part_of_a_batch_is_free_while_the_rest_is_held(tmp_path: Path) -> None:
    path = tmp_path / "s"
    a, b = SpoolQueue(path), SpoolQueue(path)
    for i in range(4):
        a.put(_event(f"e{i}"), None)
    batch = a.take(4, 0)
    a.release(batch[:2], 0.0)  # failed; the other two are still being sent
    assert _ids(b.take(10, 0)) == {"e0", "e1"}, "released events stayed held by their lease"
    assert b.take(10, 0) == []
    a.ack(batch[2:])
    a.shutdown()
    b.shutdown()


def test_an_expired_lease_is_taken_over_and_its_late_owner_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    slow, fast, third = SpoolQueue(path), SpoolQueue(path), SpoolQueue(path)
    for i in range(10):
        slow.put(_event(f"e{i}"), None)
    held = slow.take(10, 0)
    assert fast.take(10, 0) == []
    # The slow process stalls past its lease (SIGSTOP, a long GC): its lease expires.
    _sql(path, "UPDATE leases SET due = 0 WHERE owner = ?", (slow.owner,))
    taken = fast.take(10, 0)
    assert _ids(taken) == _ids(held)
    slow.release(held, 0.0)  # its late answer: a failure; the rows are the fast one's now
    assert third.take(10, 0) == [], "a stale release freed rows another process holds"
    assert _sql(path, "SELECT max(attempts) FROM events") == [(0,)]
    fast.ack(taken)
    assert _sql(path, "SELECT count(*) FROM events") == [(0,)]
    for queue in (slow, fast, third):
        queue.shutdown()
    assert _sql(path, "SELECT count(*) FROM leases") == [(0,)]


def test_the_leases_of_a_dead_process_of_this_host_are_freed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s"
    live = SpoolQueue(path)
    for i in range(5):
        live.put(_event(f"e{i}"), None)
    dead = f"{socket.gethostname()}:{_dead_pid()}:dead"
    _sql(
        path,
        "INSERT INTO leases (owner, due, seqs) VALUES (?, ?, ?)",
        (dead, time.time() + 3600, b"".join(s.to_bytes(8, "little") for s in range(1, 6))),
    )
    assert _ids(live.take(10, 0)) == {f"e{i}" for i in range(5)}
    assert _sql(path, "SELECT owner FROM leases") == [(live.owner,)]
    live.shutdown()


def test_an_older_spool_with_leases_in_its_rows_is_honoured(tmp_path: Path) -> None:
    """A spool written before the ``leases`` table: a row lease (``owner``, ``due``) of a
    live process elsewhere is not taken until it expires; a dead local owner's rows are freed."""
    path = tmp_path / "s"
    writer = SpoolQueue(path)
    for i in range(6):
        writer.put(_event(f"e{i}"), None)
    writer.shutdown()
    _sql(path, "DROP TABLE leases")  # as the older version made it
    elsewhere = "another-host:1234:beef"
    dead = f"{socket.gethostname()}:{_dead_pid()}:dead"
    ahead = time.time() + 3600
    _sql(path, "UPDATE events SET owner = ?, due = ? WHERE seq <= 2", (elsewhere, ahead))
    _sql(path, "UPDATE events SET owner = ?, due = ? WHERE seq IN (3, 4)", (dead, ahead))
    queue = SpoolQueue(path)
    assert _ids(queue.take(10, 0)) == {"e2", "e3", "e4", "e5"}
    _sql(path, "UPDATE events SET due = 0 WHERE owner = ?", (elsewhere,))  # it expired
    assert _ids(queue.take(10, 0)) == {"e0", "e1"}
    queue.shutdown()


def test_rows_settled_elsewhere_between_the_search_and_the_lease_are_left_out(
    tmp_path: Path,
) -> None:
    """The search for due rows runs outside the writer's transaction; the lease checks them
    again: what another process leased, acknowledged or released with a backoff meanwhile is
    not leased a second time."""
    path = tmp_path / "s"
    a, b = SpoolQueue(path), SpoolQueue(path)
    for i in range(12):
        a.put(_event(f"e{i}"), None)
    assert a.imported(10)  # b sees them
    found = a._candidates("due <= ?", (time.time(),), 0, 12)  # a's search, then b acts
    assert len(found) == 12
    held = b.take(4, 0)  # b leases e0-e3
    settled = b.take(2, 0)  # e4, e5: b acknowledges one, releases the other for later
    b.ack(settled[:1])
    b.release(settled[1:], 3600)
    a._candidates = lambda *args: found  # type: ignore[method-assign]
    items = a.take(12, 0)
    assert _ids(items) == {f"e{i}" for i in range(6, 12)}
    assert not _ids(items) & _ids(held)
    a.shutdown()
    b.shutdown()


def test_a_take_past_many_backed_off_rows_costs_the_writer_no_more(tmp_path: Path) -> None:
    """After a long outage the rows that back off come first in seq order, and the search for
    due rows scans past them all (about 0.3 us each: 13 ms for 50,000). That search runs on
    the read connection: the writer, whom every put waits for, does the same work for a take
    whether 100 or 20,000 rows back off (counted in SQLite's VM steps on its connection)."""

    def writer_work(backed_off: int) -> int:
        queue = SpoolQueue(tmp_path / f"s{backed_off}", max_bytes=None)
        later = time.time() + 3600
        rows = [(f"b{i}", b'{"id":"b%d"}' % i, later) for i in range(backed_off)]
        queue._on_writer(
            lambda conn: conn.executemany(
                "INSERT INTO events (id, body, due) VALUES (?, ?, ?)", rows
            )
        )
        for i in range(150):
            queue.put(_event(f"f{i}"), None)
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        queue._on_writer(lambda conn: conn.set_progress_handler(count, 100))
        items = queue.take(100, 0)
        queue._on_writer(lambda conn: conn.set_progress_handler(None, 100))
        assert _ids(items) == {f"f{i}" for i in range(100)}
        queue.shutdown()
        return steps[0]

    few, many = writer_work(100), writer_work(20_000)
    assert many < 2 * few + 20, (few, many)


class SharedSpool(RuleBasedStateMachine):
    """Two processes (queues) on one spool, in any order: put, take, acknowledge, release,
    stall past their lease, shut down and start again. Never is one event held by both (bar a
    holder whose lease expired, which is then stale); never is an event lost or left in the
    spool once acknowledged; every event put is in the spool until one holder acknowledges it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory(prefix="togai-leases-")
        self.path = Path(self.folder.name) / "s"
        self.queues = [SpoolQueue(self.path), SpoolQueue(self.path)]
        self.held: list[dict[str, Item]] = [{}, {}]  # fresh leases, by id
        self.stale: list[dict[str, Item]] = [{}, {}]  # leases that expired under their holder
        self.spooled: set[str] = set()
        self.journaled: list[set[str]] = [set(), set()]  # put, maybe not imported yet
        self.acked: set[str] = set()
        self.count = 0

    @rule(q=st.integers(0, 1), n=st.integers(1, 30), wait=st.booleans())
    def put(self, q: int, n: int, wait: bool) -> None:
        """A put returns once its event is in the process's journal; the other process sees
        it once the writer imported it (``imported`` waits for that)."""
        for _ in range(n):
            event_id = f"e{self.count}"
            self.count += 1
            self.queues[q].put(_event(event_id), None)
            self.spooled.add(event_id)
            self.journaled[q].add(event_id)
        if wait:
            assert self.queues[q].imported(10)
            self.journaled[q].clear()

    @rule(q=st.integers(0, 1), n=st.integers(1, 40))
    def take(self, q: int, n: int) -> None:
        items = self.queues[q].take(n, 0)  # what q put is imported first
        self.journaled[q].clear()
        ids = _ids(items)
        assert len(ids) == len(items) <= n
        other = self.held[1 - q]
        assert not ids & set(other), f"held by both: {sorted(ids & set(other))[:5]}"
        assert not ids & set(self.held[q]), "taken twice by one process"
        assert ids <= self.spooled, "an acknowledged event came back"
        free = self.spooled - set(self.held[0]) - set(self.held[1])
        seen = free - self.journaled[1 - q]  # the rest may not be imported yet
        assert min(n, len(seen)) <= len(items) <= min(n, len(free)), "a free event not taken"
        self.journaled[1 - q] -= ids
        for item in items:
            self.stale[q].pop(item.event.id, None)
            self.held[q][item.event.id] = item

    def _some(self, held: dict[str, Item], data: st.DataObject) -> list[Item]:
        keys = sorted(held)
        chosen = data.draw(st.lists(st.sampled_from(keys), unique=True, min_size=1))
        return [held.pop(key) for key in chosen]

    @precondition(lambda self: self.held[0] or self.held[1])
    @rule(q=st.integers(0, 1), data=st.data())
    def ack(self, q: int, data: st.DataObject) -> None:
        if not self.held[q]:
            q = 1 - q
        items = self._some(self.held[q], data)
        self.queues[q].ack(items)
        self.spooled -= _ids(items)
        self.acked |= _ids(items)

    @precondition(lambda self: self.held[0] or self.held[1])
    @rule(q=st.integers(0, 1), data=st.data())
    def release(self, q: int, data: st.DataObject) -> None:
        if not self.held[q]:
            q = 1 - q
        self.queues[q].release(self._some(self.held[q], data), 0.0)

    @precondition(lambda self: self.stale[0] or self.stale[1])
    @rule(q=st.integers(0, 1), data=st.data(), acked=st.booleans())
    def late_answer(self, q: int, data: st.DataObject, acked: bool) -> None:
        """A holder whose lease expired answers after all: an acceptance deletes the rows
        (delivered twice: harmless, the ids are the same); a failure must change nothing."""
        if not self.stale[q]:
            q = 1 - q
        items = self._some(self.stale[q], data)
        if acked:
            self.queues[q].ack(items)
            self.spooled -= _ids(items)
            self.acked |= _ids(items)
            for held in self.held:
                for event_id in _ids(items):
                    held.pop(event_id, None)  # its new holder's ack will delete nothing
        else:
            self.queues[q].release(items, 0.0)

    @precondition(lambda self: self.held[0] or self.held[1])
    @rule(q=st.integers(0, 1))
    def stall(self, q: int) -> None:
        """The holder stalls past its lease (another process sees it expired)."""
        if not self.held[q]:
            q = 1 - q
        _sql(self.path, "UPDATE leases SET due = 0 WHERE owner = ?", (self.queues[q].owner,))
        self.stale[q].update(self.held[q])
        self.held[q] = {}

    @rule(q=st.integers(0, 1))
    def restart(self, q: int) -> None:
        """Shut down (its leases given back) and start again on the same spool."""
        self.queues[q].shutdown()  # imports what its journal holds
        self.queues[q] = SpoolQueue(self.path)
        self.held[q] = {}
        self.stale[q] = {}
        self.journaled[q].clear()

    @invariant()
    def the_spool_holds_what_was_put_and_not_acknowledged(self) -> None:
        ids = {str(row[0]) for row in _sql(self.path, "SELECT id FROM events")}
        assert ids <= self.spooled, sorted(ids - self.spooled)[:5]
        unseen = self.spooled - ids
        assert unseen <= self.journaled[0] | self.journaled[1], sorted(unseen)[:5]
        pending = set(self.queues[0].ids()) | set(self.queues[1].ids())
        assert pending == self.spooled, sorted(pending ^ self.spooled)[:5]

    def teardown(self) -> None:
        try:
            for q in (0, 1):
                self.queues[q].ack(list(self.held[q].values()))
                self.spooled -= set(self.held[q])
            self.queues[1].shutdown()
            last = self.queues[0]
            while items := last.take(100, 0):
                assert not _ids(items) & self.acked
                last.ack(items)
                self.spooled -= _ids(items)
            assert not self.spooled, f"never delivered: {sorted(self.spooled)[:5]}"
            last.shutdown()
            assert _sql(self.path, "SELECT count(*) FROM leases") == [(0,)]
        finally:
            self.folder.cleanup()


def test_two_processes_sharing_a_spool_state_machine() -> None:
    run_machine(SharedSpool, examples=40, steps=30)
