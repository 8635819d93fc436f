"""``SpoolQueue``: the background sender's queue in a SQLite file that survives the process.

Storage: the standard library's ``sqlite3`` in WAL mode, one table ``events`` (rowid ``seq``,
``id``, the event's JSON ``body``, a lease: ``owner`` and ``due``, and ``attempts``). Nothing to
install, one file (plus ``-wal``/``-shm`` and a ``.lock`` file that serialises opening), safe
for several processes (SQLite's locks; leases below). Figures: ``bench/enqueue.py``.

- ``put`` returns once the event is committed. Commits are grouped: the ``put`` that finds no
  commit under way commits, in one statement and one transaction (and, in ``"power"`` mode,
  one fsync), every event queued while the previous commit ran; the others wait for it.
  Checkpoints (which fsync) run in a maintenance thread on their own connection, never on the
  enqueue path; the same thread renews leases.
- Durability ``"process"`` (``synchronous=NORMAL``): a committed event survives the death of
  the process (kill -9, OOM, a crash); a power loss or kernel crash may lose the last commits.
  ``"power"`` (``synchronous=FULL``): the WAL is fsynced at every commit, a committed event
  also survives a power loss.
- ``take`` leases rows (``owner`` = this process, ``due`` = now + ``lease_seconds``), renewed
  while the worker holds them; rows of a process that died are taken again when the lease
  expires, or at once when the owner is a dead process of this host. An event leaves the
  table only by ``ack`` (a final outcome); ``release`` makes it due again after a backoff.
- A file that is not a database, truncated or corrupt is moved aside (``PATH.corrupt-<time>``,
  an ERROR log names it) and a fresh spool starts. A full disk (SQLITE_FULL) makes ``put``
  raise ``SpoolFullError``; what is committed stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ClosedError, QueueFullError, SpoolError, SpoolFullError
from .queues import Item
from .validation import EncodedEvent

__all__ = ["Durability", "SpoolQueue"]

log = logging.getLogger("togai_ingest")

Durability = Literal["process", "power"]
_LEADER_ROUNDS = 4  # groups one put commits at most (its own, then those that wait)
_MAX_GROUP = 500  # events per commit (SQLite allows 32,766 variables in a statement)
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    owner TEXT,
    due REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_leased ON events (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(eq=False)
class _Group:
    """Events waiting for the next commit, and the commit's result."""

    rows: list[tuple[str, bytes]] = field(default_factory=list)
    finished: bool = False
    error: SpoolError | None = None


def _error(exc: sqlite3.Error, what: str) -> SpoolError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return SpoolFullError(f"{what}: the disk or the spool is full ({exc})")
    return SpoolError(f"{what}: {exc}")


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: trust the lease
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class SpoolQueue:
    """An ``EventQueue`` in the SQLite file ``path``, shareable by several processes.

    ``max_bytes`` / ``max_events``: bounds on what this spool holds (event JSON bytes; None: no
    bound); ``put`` waits for room up to its timeout, then raises ``QueueFullError``.
    ``dead_letter``: keep rejected events in the ``dead_letter`` table. ``retry_delay`` and
    ``max_retry_delay``: the backoff of a released batch (doubling per failed attempt).
    ``max_page_count``: a hard size limit in pages (SQLite's ``PRAGMA max_page_count``), for a
    disk quota; above it ``put`` raises ``SpoolFullError``.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "process",
        max_bytes: int | None = 1 << 30,
        max_events: int | None = None,
        lease_seconds: float = 60.0,
        dead_letter: bool = False,
        retry_delay: float = 1.0,
        max_retry_delay: float = 300.0,
        max_page_count: int | None = None,
        busy_timeout: float = 30.0,
        move_damaged: bool = True,
    ) -> None:
        if durability not in ("process", "power"):
            raise ValueError("durability must be 'process' or 'power'")
        self.path = Path(path)
        self.durability = durability
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.lease_seconds = lease_seconds
        self.dead_letter = dead_letter
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_page_count = max_page_count
        self.busy_timeout = busy_timeout
        self.move_damaged = move_damaged
        self.reset_after_fork()
        with self._io:
            self._connection()  # damage is found (and moved aside) now, not at the first put
        _live_spools.add(self)

    def reset_after_fork(self) -> None:
        """Fresh state; the inherited connection is dropped, never used or closed (SQLite
        connections must not cross a fork)."""
        self._io = threading.RLock()  # every use of the connection
        self._conn: sqlite3.Connection | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._wcond = threading.Condition(threading.Lock())
        self._group = _Group()
        self._committing = False
        self._maintainer: threading.Thread | None = None
        self._ckpt_lock = threading.Lock()  # the checkpointing connection
        self._commits = 0
        self._stopping = False
        self._closed = False
        self._room = threading.Condition(threading.Lock())
        self._count = 0
        self._bytes = 0
        self._leased: dict[int, int] = {}  # seq -> body bytes
        self._woken = False
        self._committed = threading.Condition(threading.Lock())
        self._fresh = 0  # events committed here since the worker last counted
        self._want = 1  # events the worker waits for
        self._last_reap = 0.0

    # --- Opening, and damage.

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
            self._refresh_counts()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            try:
                return self._try_open()
            except sqlite3.DatabaseError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                if not self.move_damaged or (code not in _CORRUPT and "malformed" not in str(exc)):
                    raise _error(exc, f"cannot open the spool {self.path}") from None
                moved = self._move_aside()
                log.error(
                    "the spool %s is damaged (%s); moved it aside to %s and started a fresh "
                    "spool (try `togai-ingest drain %s` to salvage it)",
                    self.path,
                    exc,
                    moved,
                    moved,
                )
            try:
                return self._try_open()
            except sqlite3.Error as exc:
                raise _error(exc, f"cannot create the spool {self.path}") from None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise opening (and moving aside) between processes: a lock file beside it."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.busy_timeout
            while True:  # bounded: a process stopped while holding the lock must not hang us
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SpoolError(
                            f"the spool {self.path} is being opened by another process that "
                            f"holds {self.path}.lock for over {self.busy_timeout:g} s"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def _try_open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if self.durability == "power" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the maintenance thread does it
            if self.max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
            conn.executescript(_SCHEMA)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                error = sqlite3.DatabaseError(f"malformed: {'; '.join(problems[:3])}")
                error.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
                raise error
            conn.execute("SELECT count(*), sum(length(body)) FROM events").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
        return target

    def _refresh_counts(self) -> None:
        conn = self._conn
        assert conn is not None
        count, size = conn.execute("SELECT count(*), sum(length(body)) FROM events").fetchone()
        with self._room:
            self._count, self._bytes = int(count), int(size or 0)
            self._room.notify_all()

    # --- put: group commit.

    def _full(self, size: int) -> bool:
        return (self.max_events is not None and self._count + 1 > self.max_events) or (
            self.max_bytes is not None and self._bytes + size > self.max_bytes
        )

    def _reserve(self, size: int, timeout: float | None, event_id: str) -> None:
        """Count the event in, or wait for room (``timeout``), or raise ``QueueFullError``.
        The counts are this process's; at the bound they are read again from the file (other
        processes add and remove events too), not on every put (a scan of the table)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        recounted = False
        while True:
            with self._room:
                if self._closed or not self._full(size):
                    self._count += 1
                    self._bytes += size
                    return
                if recounted:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFullError(
                            f"the spool {self.path} is full ({self._count} events, "
                            f"{self._bytes} bytes); event {event_id!r} was not queued"
                        )
                    self._room.wait(0.25 if remaining is None else min(remaining, 0.25))
            with contextlib.suppress(sqlite3.Error, SpoolError), self._io:
                self._connection()
                self._refresh_counts()
            recounted = True

    def put(self, event: EncodedEvent, timeout: float | None) -> None:
        size = len(event.json)
        self._reserve(size, timeout, event.id)
        with self._wcond:
            if self._closed:
                self._wcond.notify_all()
                leader = closed = True
            else:
                closed = False
                if len(self._group.rows) >= _MAX_GROUP:
                    self._group = _Group()
                group = self._group
                group.rows.append((event.id, event.json))
                # Group commit: whoever finds no commit under way commits every event queued
                # so far in one transaction; the others wait for that commit or lead the next.
                while not group.finished and self._committing:
                    self._wcond.wait()
                leader = not group.finished
                if leader:
                    self._committing = True
                    if self._group is group:
                        self._group = _Group()
        if closed:
            self._uncount(1, size)
            raise ClosedError(f"the sender is closed; event {event.id!r} was not queued")
        if leader:
            if self._maintainer is None:
                self._start_maintenance()
            self._lead(group)
        if group.error is not None:
            self._uncount(1, size)
            raise type(group.error)(f"{group.error}; event {event.id!r} was not spooled")

    def _lead(self, group: _Group) -> None:
        """Commit ``group``, then (a few times at most) the group that filled up meanwhile:
        its members are waiting, so it goes now rather than after a newcomer's own commit."""
        current = group
        for round_ in range(_LEADER_ROUNDS):
            try:
                self._commit(current)
            except BaseException:
                with self._wcond:
                    current.error = current.error or SpoolError("the commit was interrupted")
                    current.finished = True
                    self._committing = False
                    self._wcond.notify_all()
                raise
            with self._wcond:
                current.finished = True
                waiting = self._group
                more = round_ + 1 < _LEADER_ROUNDS and bool(waiting.rows)
                if more:
                    self._group = _Group()
                    current = waiting
                else:
                    self._committing = False
                self._wcond.notify_all()
            if not more:
                return

    def _uncount(self, count: int, size: int) -> None:
        with self._room:
            self._count = max(0, self._count - count)
            self._bytes = max(0, self._bytes - size)
            self._room.notify_all()

    def _commit(self, group: _Group) -> None:
        try:
            with self._io:
                conn = self._connection()
                # One statement, one transaction, one (fsync in "power" mode) for the group.
                values = ", ".join(["(?, ?)"] * len(group.rows))
                params = [value for row in group.rows for value in row]
                conn.execute(f"INSERT INTO events (id, body) VALUES {values}", params)
        except sqlite3.Error as exc:
            group.error = _error(exc, f"cannot write to the spool {self.path}")
        except SpoolError as exc:
            group.error = exc
        if group.error is None:
            self._commits += 1
            self._fresh += len(group.rows)
            if self._fresh >= self._want:
                with self._committed:
                    self._committed.notify_all()

    def _start_maintenance(self) -> None:
        with self._wcond:
            if self._maintainer is None and not self._stopping:
                self._maintainer = threading.Thread(
                    target=self._maintain, name="togai-spool-maintenance", daemon=True
                )
                self._maintainer.start()

    def _maintain(self) -> None:
        """Off the enqueue path: checkpoint the WAL into the database (the put connection
        never does: a checkpoint fsyncs, which would stall an enqueue for milliseconds), and
        renew the leases this process holds (its worker may be in a long retry)."""
        checkpointer: sqlite3.Connection | None = None
        renewed = time.monotonic()
        try:
            while True:
                with self._wcond:
                    self._wcond.wait_for(lambda: self._stopping, 0.25)
                    if self._stopping:
                        return
                with contextlib.suppress(sqlite3.Error, SpoolError):
                    if self._commits:
                        self._commits = 0
                        with self._ckpt_lock:
                            if checkpointer is None:
                                checkpointer = sqlite3.connect(
                                    self.path,
                                    timeout=self.busy_timeout,
                                    isolation_level=None,
                                    check_same_thread=False,
                                )
                            checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if self._leased and time.monotonic() - renewed >= self.lease_seconds / 3:
                        renewed = time.monotonic()
                        with self._io:
                            self._connection().execute(
                                "UPDATE events SET due = ? WHERE owner = ?",
                                (time.time() + self.lease_seconds, self.owner),
                            )
        finally:
            if checkpointer is not None:
                with self._ckpt_lock:
                    checkpointer.close()

    # --- The worker's side.

    def _reap(self, conn: sqlite3.Connection) -> None:
        """Free at once the leases of dead processes of this host."""
        if time.monotonic() - self._last_reap < 1.0:
            return
        self._last_reap = time.monotonic()
        owners = conn.execute(
            "SELECT DISTINCT owner FROM events WHERE owner IS NOT NULL"
        ).fetchall()
        for (owner,) in owners:
            if owner != self.owner and not _owner_alive(owner):
                conn.execute("UPDATE events SET owner = NULL, due = 0 WHERE owner = ?", (owner,))

    def _due(self, limit: int) -> int:
        with self._io:
            conn = self._connection()
            self._reap(conn)
            row = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE due <= ? LIMIT ?)",
                (time.time(), limit),
            ).fetchone()
        return int(row[0])

    def take(self, max_items: int, wait: float) -> list[Item]:
        deadline = time.monotonic() + wait
        self._want = max_items
        try:
            while True:
                # Count what is due only when this process committed a batch's worth, or
                # every 0.25 s (other processes' events): not at every commit.
                self._fresh = 0
                if self._woken or self._due(max_items) >= max_items:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with self._committed:
                    self._committed.wait_for(
                        lambda: self._woken or self._fresh >= max_items, min(remaining, 0.25)
                    )
            self._woken = False
            return self._lease(
                "SELECT seq FROM events WHERE due <= ? ORDER BY seq LIMIT ?",
                (time.time(), max_items),
            )
        except (sqlite3.Error, SpoolError) as exc:
            log.error("cannot read the spool %s: %s; trying again in 1 s", self.path, exc)
            time.sleep(1.0)
            return []

    def take_range(self, after: int, upto: int, max_items: int) -> list[Item]:
        """For ``drain``: lease up to ``max_items`` events with ``after < seq <= upto`` that
        no live process holds, due or backing off."""
        with self._io:
            self._reap(self._connection())
        return self._lease(
            "SELECT seq FROM events WHERE seq > ? AND seq <= ? AND (owner IS NULL OR due <= ?) "
            "ORDER BY seq LIMIT ?",
            (after, upto, time.time(), max_items),
        )

    def last_seq(self) -> int:
        with self._io:
            row = self._connection().execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def _lease(self, select: str, params: tuple[float | int, ...]) -> list[Item]:
        with self._io:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(
                    f"UPDATE events SET owner = ?, due = ? WHERE seq IN ({select}) "
                    "RETURNING seq, id, body, attempts",
                    (self.owner, time.time() + self.lease_seconds, *params),
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        rows.sort()
        if rows and self._maintainer is None:
            self._start_maintenance()
        for seq, _, body, _ in rows:
            self._leased[seq] = len(body)
        return [
            Item(seq, EncodedEvent(i, bytes(body)), attempts) for seq, i, body, attempts in rows
        ]

    def _transaction(self, items: Sequence[Item], what: str, work: Any) -> None:
        """Run ``work(conn)`` in one write transaction. If it fails the leases of ``items`` are
        no longer renewed: the events come back when the lease expires (an accepted event is
        then sent again: harmless, its id is the same). Raises ``SpoolError``."""
        try:
            with self._io:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            for item in items:
                self._leased.pop(item.key, None)
            raise _error(exc, f"cannot {what} in the spool {self.path}") from None

    def ack(self, items: Sequence[Item], dead: Sequence[tuple[Item, str]] = ()) -> None:
        every = [*items, *(item for item, _ in dead)]
        if not every:
            return

        def work(conn: sqlite3.Connection) -> None:
            if dead and self.dead_letter:
                conn.executemany(
                    "INSERT OR REPLACE INTO dead_letter (seq, id, body, reason, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(i.key, i.event.id, i.event.json, why, time.time()) for i, why in dead],
                )
            marks = ", ".join("?" * len(every))
            conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", [i.key for i in every])

        self._transaction(every, "acknowledge events", work)
        size = sum(self._leased.pop(i.key, len(i.event.json)) for i in every)
        self._uncount(len(every), size)

    def release(self, items: Sequence[Item], delay: float) -> None:
        if not items:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE events SET owner = NULL, due = ?, attempts = attempts + 1 "
                "WHERE seq = ? AND owner = ?",
                [(time.time() + delay, i.key, self.owner) for i in items],
            )

        self._transaction(items, "release events", work)
        for item in items:
            self._leased.pop(item.key, None)

    def backoff(self, attempts: int) -> float:
        """Seconds before a batch that failed ``attempts`` times is tried again (jittered)."""
        delay = min(self.max_retry_delay, self.retry_delay * 2.0 ** min(attempts, 30))
        return delay * (1.0 - 0.25 * random.random())

    def size(self) -> int:
        with self._room:
            return self._count

    def ids(self) -> list[str]:
        try:
            with self._io:
                rows = self._connection().execute("SELECT id FROM events ORDER BY seq").fetchall()
        except (sqlite3.Error, SpoolError) as exc:
            log.error("cannot read the spool %s: %s", self.path, exc)
            return []
        return [row[0] for row in rows]

    def ids_upto(self, upto: int) -> list[str]:
        with self._io:
            rows = self._connection().execute(
                "SELECT id FROM events WHERE seq <= ? ORDER BY seq", (upto,)
            )
            return [row[0] for row in rows]

    def dead_letters(self) -> list[tuple[str, bytes, str]]:
        with self._io:
            rows = self._connection().execute(
                "SELECT id, body, reason FROM dead_letter ORDER BY seq"
            )
            return [(i, bytes(b), r) for i, b, r in rows]

    def wake(self) -> None:
        self._woken = True
        with self._committed:
            self._committed.notify_all()

    def close(self) -> None:
        with self._wcond:
            self._closed = True
        with self._room:
            self._room.notify_all()

    def shutdown(self) -> None:
        """Commit what is pending, give back this process's leases, close the connection."""
        self.close()
        with self._wcond:
            self._stopping = True
            self._wcond.notify_all()
            maintainer = self._maintainer
        if maintainer is not None:
            maintainer.join()
        with self._io:
            if self._conn is None:
                return
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(
                    "UPDATE events SET owner = NULL, due = 0 WHERE owner = ?", (self.owner,)
                )
            self._leased.clear()
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"SpoolQueue({str(self.path)!r}, durability={self.durability!r})"


_live_spools: weakref.WeakSet[SpoolQueue] = weakref.WeakSet()
_held: list[SpoolQueue] = []


def _before_fork() -> None:
    # No thread of this process may be inside SQLite when the child is made.
    for spool in list(_live_spools):
        spool._io.acquire()
        spool._ckpt_lock.acquire()
        _held.append(spool)


def _after_fork_in_parent() -> None:
    while _held:
        spool = _held.pop()
        spool._ckpt_lock.release()
        spool._io.release()


def _after_fork_in_child() -> None:
    while _held:
        _held.pop().reset_after_fork()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
