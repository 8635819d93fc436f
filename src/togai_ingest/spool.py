"""``SpoolQueue``: the background sender's queue in a SQLite file that survives the process.

Storage: the standard library's ``sqlite3`` in WAL mode: a table ``events`` (rowid ``seq``,
``id``, the event's JSON ``body``, ``due``: when a batch that failed may be tried again,
``attempts``, and ``crc``: the checksum of id and body, ``validation.checksum``, by which the
worker, ``drain`` and salvage tell a damaged row; NULL in rows of an older version), a table
``leases`` (a batch being sent: its ``owner`` process, ``due``: when the lease expires, and its
rows' ``seqs``) and ``dead_letter``. Nothing to install, one file (plus
``-wal``/``-shm`` and a ``.lock`` file that serialises opening), safe for several processes
(SQLite's locks; leases below). Figures: ``bench/enqueue.py``.

- ``put`` returns once the event is committed. Commits are grouped by one writer thread: a
  ``put`` computes its row's checksum, adds the row to the open group (a few bytecodes under one
  lock) and waits on that group's own gate; the writer takes the whole group, commits it in one
  transaction (one statement per ``_MAX_GROUP`` rows; in ``"power"`` mode, one fsync), and opens
  the gate. Events put while a commit runs form the next group. The worker's write transactions
  (the lease of ``take``, ``ack``, ``release``) are run by the writer too, between two commits,
  on the same connection: one process never waits for itself in SQLite's busy handler (which
  sleeps milliseconds), and the writer never waits for a worker thread that holds the connection
  while it waits for the GIL or a CPU. Each is kept short, because every put waiting for a
  commit waits behind it: a lease writes one narrow row in ``leases`` (it used to rewrite a
  hundred wide rows of ``events``, 0.3-0.5 ms, which set the spooled enqueue's p99) and reads
  its rows by seq: the search for due rows, which scans past every row that backs off (13 ms for
  50,000 after a long outage), runs in the taking thread on a read connection of its own; an
  ``ack`` deletes its rows in steps of ``_STEP_ROWS``, one transaction each, with a group commit
  between two steps. A process killed between two steps has acknowledged part of a batch: the
  rest is sent again, with the same ids. The writer (``togai-spool-writer``, a daemon) starts at
  the first put or transaction, stops in ``shutdown`` once what is pending is committed, and is
  made anew in a forked child. Checkpoints (which fsync) run in a maintenance thread on its own
  connection, never on the enqueue path; the same thread renews leases.
- Durability ``"process"`` (``synchronous=NORMAL``): a committed event survives the death of
  the process (kill -9, OOM, a crash); a power loss or kernel crash may lose the last commits.
  ``"power"`` (``synchronous=FULL``): the WAL is fsynced at every commit, a committed event
  also survives a power loss.
- ``take`` leases rows no live lease holds: one ``leases`` row (``owner`` = this process,
  ``due`` = now + ``lease_seconds``), renewed while the worker holds it; the rows of a process
  that died are taken again when its lease expires, or at once when the owner is a dead
  process of this host. An event leaves ``events`` only by ``ack`` (a final outcome);
  ``release`` makes it due again after a backoff. The lease row goes when none of its events
  is held any more.
- Older spools: a spool written before the ``leases`` table kept leases in ``events.owner``
  and ``events.due``; those are honoured (a row whose ``due`` is ahead is not taken, a dead
  owner's rows are freed). Processes of the older version and of this one must not share one
  spool at the same time: the older ones do not see ``leases``, and may send a batch in
  flight twice (the ids make that harmless for the API).
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
import struct
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from .errors import ClosedError, QueueFullError, SpoolError, SpoolFullError
from .queues import Item
from .validation import EncodedEvent, checksum

__all__ = ["Durability", "SpoolQueue"]

log = logging.getLogger("togai_ingest")

Durability = Literal["process", "power"]
_MAX_GROUP = 500  # rows per INSERT statement (SQLite allows 32,766 variables in one)
_Row = tuple[str, bytes, int]  # an event's row: its id, its JSON, their checksum
_STEP_ROWS = 25  # rows a step of an ack deletes (see the module's docstring)
_SEQ = struct.Struct("<q")  # a lease's seqs (``leases.seqs``): little-endian int64s
_CHECKPOINT_EVERY = 1.0  # seconds between two checkpoints (each fsyncs), if anything was written
_WAL_LIMIT = 64 << 20  # bytes of WAL after which the writer lets the WAL start again
_WAIT_SLICE = 1.0  # seconds a put waits for its commit before it looks at the writer again
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    owner TEXT,
    due REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    crc INTEGER
);
CREATE INDEX IF NOT EXISTS events_leased ON events (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    due REAL NOT NULL,
    seqs BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class _Waited:
    """What a thread hands to the writer and waits for: ``gate`` is locked until the writer
    is done with it (``finish``, with an error or not); each waiting thread acquires it and
    releases it at once (the next one goes through): cheaper than an Event, and no Condition
    shared by every put."""

    __slots__ = ("error", "finished", "gate")

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.gate.acquire()
        self.finished = False
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        if not self.finished:
            self.error = self.error or error
            self.finished = True
            self.gate.release()


class _Group(_Waited):
    """Events waiting for the next commit; ``error`` (a ``SpoolError``) if it failed."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[_Row] = []


class _Job(_Waited):
    """Work of the worker's side (a lease, an acknowledgement) that the writer thread runs on
    its connection between two group commits. ``work(conn)`` returns the result, or is a
    generator: each ``yield`` ends a step (the writer commits the puts that wait before it
    takes the next), and what it returns is the result."""

    __slots__ = ("result", "steps", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        super().__init__()
        self.work = work
        self.steps: Generator[None, None, Any] | None = None
        self.result: Any = None

    def step(self, connect: Callable[[], sqlite3.Connection]) -> bool:
        """Run the next step on ``connect()``; True when the job is over (its result or error
        is set)."""
        try:
            conn = connect()
            if self.steps is None:
                out = self.work(conn)
                if not isinstance(out, Generator):
                    self.result = out
                    return True
                self.steps = out
            next(self.steps)
            return False
        except StopIteration as stop:
            self.result = stop.value
        except Exception as exc:
            self.error = exc
        return True


def _error(exc: sqlite3.Error, what: str) -> SpoolError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return SpoolFullError(f"{what}: the disk or the spool is full ({exc})")
    return SpoolError(f"{what}: {exc}")


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken at once (SQLite's busy handler waits for it):
    committed, or rolled back if the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _pack(seqs: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(seqs)}q", *seqs)


def _unpack(data: bytes) -> tuple[int, ...]:
    count = len(data) // _SEQ.size  # a damaged blob of another length: what it holds whole
    return struct.unpack_from(f"<{count}q", data)


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
        self._rlock = threading.Lock()  # every use of the worker side's read connection
        self._rconn: sqlite3.Connection | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        # The put side: one lock for the open group, the counts and the writer's state.
        self._wlock = threading.Lock()
        self._room = threading.Condition(self._wlock)  # puts waiting for room
        self._group = _Group()
        self._jobs: list[_Job] = []  # the worker's write transactions, for the writer
        self._writer: threading.Thread | None = None
        self._writer_idle = False  # the writer sleeps on ``_kick`` (locked while it sleeps)
        self._kick = threading.Lock()
        self._kick.acquire()
        self._blocked = 0  # puts waiting for room
        self._maintainer: threading.Thread | None = None
        self._halt = threading.Event()  # the maintenance thread stops
        self._ckpt_lock = threading.Lock()  # the checkpointing connection
        self._page = 0  # the file's page size, once read
        self._commits = 0
        self._stopping = False
        self._closed = False
        self._count = 0
        self._bytes = 0
        self._leased: dict[int, tuple[int, int]] = {}  # seq -> (body bytes, lease id)
        self._leases: dict[int, set[int]] = {}  # lease id -> the seqs it still holds
        self._woken = False
        self._committed = threading.Condition(threading.Lock())
        self._fresh = 0  # events committed here since the worker last counted
        self._want = 1  # events the worker waits for
        self._taking = False  # the worker waits in take for ``_want`` events
        self._backlog = False  # the last lease was a full batch: lease again without counting
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
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")  # the -wal file, once reset
            if self.max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
            conn.executescript(_SCHEMA)
            columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
            if "crc" not in columns:  # a spool made before the checksum: its rows have none
                conn.execute("ALTER TABLE events ADD COLUMN crc INTEGER")
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
        with self._wlock:
            self._count, self._bytes = int(count), int(size or 0)
            self._room.notify_all()

    # --- put: group commit.

    def _full(self, size: int) -> bool:
        return (self.max_events is not None and self._count + 1 > self.max_events) or (
            self.max_bytes is not None and self._bytes + size > self.max_bytes
        )

    def put(self, event: EncodedEvent, timeout: float | None) -> None:
        size = len(event.json)
        row = (event.id, event.json, checksum(event.id, event.json))
        with self._wlock:
            group = None if self._closed or self._full(size) else self._add(row, size)
        if group is None:
            group = self._add_when_room(row, size, timeout)
        self._wait(group)
        if group.error is not None:
            self._uncount(1, size)
            raise type(group.error)(f"{group.error}; event {event.id!r} was not spooled")

    def _add(self, row: _Row, size: int) -> _Group:
        """Count the event in and add it to the open group. Call with ``_wlock`` held."""
        self._count += 1
        self._bytes += size
        group = self._group
        group.rows.append(row)
        if self._writer_idle:
            self._writer_idle = False
            self._kick.release()
        return group

    def _add_when_room(self, row: _Row, size: int, timeout: float | None) -> _Group:
        """The spool is full (or closed): wait for room up to ``timeout``, or raise
        ``QueueFullError`` (``ClosedError``). The counts are this process's; at the bound they
        are read again from the file (other processes add and remove events too), not on
        every put (a scan of the table)."""
        event_id = row[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._wlock:
                if self._closed:
                    raise ClosedError(f"the sender is closed; event {event_id!r} was not queued")
                if not self._full(size):
                    return self._add(row, size)
            with contextlib.suppress(sqlite3.Error, SpoolError), self._io:
                self._connection()
                self._refresh_counts()
            with self._wlock:
                if self._closed:
                    raise ClosedError(f"the sender is closed; event {event_id!r} was not queued")
                if not self._full(size):
                    return self._add(row, size)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueFullError(
                        f"the spool {self.path} is full ({self._count} events, "
                        f"{self._bytes} bytes); event {event_id!r} was not queued"
                    )
                self._blocked += 1
                try:
                    self._room.wait(0.25 if remaining is None else min(remaining, 0.25))
                finally:
                    self._blocked -= 1

    def _uncount(self, count: int, size: int) -> None:
        with self._wlock:
            self._count = max(0, self._count - count)
            self._bytes = max(0, self._bytes - size)
            if self._blocked:
                self._room.notify_all()

    # --- The writer thread: group commit.

    def _start_writer(self) -> None:
        with self._wlock:
            if self._writer is not None:
                return
            self._writer = threading.Thread(
                target=self._write, name="togai-spool-writer", daemon=True
            )
        self._writer.start()

    def _write(self) -> None:
        """Commit each group that has rows, until ``shutdown`` (which waits for what is
        pending). Whatever happens, no put is left waiting on a group nobody commits."""
        current: _Group | None = None
        jobs: list[_Job] = []  # the jobs with steps to run
        try:
            self._start_maintenance()
            fresh = _Group()  # made outside the lock
            while True:
                with self._wlock:
                    # Take the open group (if it has rows) and the new jobs, leaving fresh
                    # ones in their place: what is added from here on waits for the next
                    # round. Decided here, once: a group not taken may gain a row the moment
                    # the lock is released, and is still the open one (it once was committed
                    # in this round and again in the next).
                    group = self._group if self._group.rows else None
                    jobs += self._jobs
                    self._jobs = []
                    if group is not None:
                        self._group = fresh
                    elif not jobs:
                        if self._stopping:
                            return
                        self._writer_idle = True
                if group is not None:
                    current = group
                    self._commit(group)
                    group.finish()
                    current = None
                    fresh = _Group()
                elif not jobs:
                    self._sleep()
                    continue
                for job in list(jobs):  # one step each, after the commit its puts wait for
                    with self._io:
                        over = job.step(self._connection)
                    if over:
                        jobs.remove(job)
                        job.finish()
        except BaseException as exc:
            with self._wlock:  # a bug: fail what waits; the next put starts a new writer
                pending, self._group = self._group, _Group()
                waiting, self._jobs = self._jobs, []
                if self._writer is threading.current_thread():
                    self._writer = None
            if isinstance(exc, Exception):
                log.exception("the spool writer of %s stopped", self.path)
            error = SpoolError(f"the spool writer of {self.path} stopped: {exc!r}")
            for failed in (current, pending):
                if failed is not None:
                    failed.finish(error)
            for job in [*jobs, *waiting]:
                job.finish(error)
            if not isinstance(exc, Exception):
                raise

    def _wait(self, waited: _Waited) -> None:
        """Wait until the writer is done with ``waited``; starts a writer if there is none."""
        if self._writer is None:
            self._start_writer()
        gate = waited.gate
        while not gate.acquire(timeout=_WAIT_SLICE):
            # A slow commit (SQLite's busy_timeout bounds it), or no writer: start one, or
            # give up on one that is gone without saying so (it always says so).
            writer = self._writer
            if writer is None:
                self._start_writer()
            elif not writer.is_alive() and not waited.finished:
                waited.finish(SpoolError(f"the spool writer of {self.path} stopped"))
        gate.release()  # the next thread waiting for it goes through

    def _sleep(self) -> None:
        """Wait for a put (or shutdown) to release ``_kick``; bounded."""
        if self._kick.acquire(timeout=0.5):
            return  # released by a put (which cleared ``_writer_idle``); locked again
        with self._wlock:
            if self._writer_idle:
                self._writer_idle = False  # nobody released it: it is still locked
                return
        self._kick.acquire()  # a put released it just now: lock it again (at once)

    def _on_writer(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(conn)`` on the writer thread (its connection) and return what it returns,
        or raise what it raised. After ``shutdown`` began, here under ``_io``."""
        job = _Job(work)
        with self._wlock:
            inline = self._stopping
            if not inline:
                self._jobs.append(job)
                if self._writer_idle:
                    self._writer_idle = False
                    self._kick.release()
        if inline:
            with self._io:
                while not job.step(self._connection):
                    pass
            if job.error is not None:
                raise job.error
            return job.result
        self._wait(job)
        if job.error is not None:
            raise job.error
        return job.result

    def _commit(self, group: _Group) -> None:
        try:
            with self._io:
                conn = self._connection()
                # One transaction, one (fsync in "power" mode) for the group: one statement
                # of up to _MAX_GROUP rows (a statement's variables are bounded), or more in
                # one explicit transaction.
                rows = group.rows
                if len(rows) <= _MAX_GROUP:
                    self._insert(conn, rows)
                else:
                    with _write_transaction(conn):
                        for start in range(0, len(rows), _MAX_GROUP):
                            self._insert(conn, rows[start : start + _MAX_GROUP])
        except sqlite3.Error as exc:
            group.error = _error(exc, f"cannot write to the spool {self.path}")
        except SpoolError as exc:
            group.error = exc
        except Exception as exc:  # nothing but a SpoolError reaches a put
            group.error = SpoolError(f"cannot write to the spool {self.path}: {exc!r}")
        if group.error is None:
            self._commits += 1
            self._fresh += len(group.rows)
            if self._taking and self._fresh >= self._want:
                with self._committed:
                    self._committed.notify_all()

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: Sequence[_Row]) -> None:
        values = ", ".join(["(?, ?, ?)"] * len(rows))
        conn.execute(
            f"INSERT INTO events (id, body, crc) VALUES {values}", [v for row in rows for v in row]
        )

    def _start_maintenance(self) -> None:
        with self._wlock:
            if self._maintainer is None and not self._stopping:
                self._maintainer = threading.Thread(
                    target=self._maintain, name="togai-spool-maintenance", daemon=True
                )
                self._maintainer.start()

    def _maintain(self) -> None:
        """Off the enqueue path: checkpoint the WAL into the database (the put connection
        never does: a checkpoint fsyncs, which would stall an enqueue for milliseconds), and
        renew the leases this process holds (its worker may be in a long retry).

        The WAL starts again from its beginning only at a write that finds every frame
        checkpointed, which never happens while puts commit during each checkpoint: at 2,000
        events/s it grew by 20 MB/s, without end. So once it holds over ``_WAL_LIMIT`` bytes
        the writer runs one more checkpoint itself, between two commits: it copies only what
        was written since this one (and fsyncs), and the next commit starts the WAL again
        (``journal_size_limit`` cuts the file back). The WAL stays under ``_WAL_LIMIT`` plus
        what is written in ``_CHECKPOINT_EVERY``: peaks of 69 MB at 2,000 events/s and 123 MB
        at 18,000/s were measured; four checkpoints a second instead of one cost the spooled
        enqueue 5-10 % of its rate and 60 us of its p99 (``bench/enqueue.py``)."""
        checkpointer: sqlite3.Connection | None = None
        renewed = time.monotonic()
        try:
            while True:
                if self._halt.wait(min(_CHECKPOINT_EVERY, self.lease_seconds / 3)):
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
                            _, frames, _ = checkpointer.execute(
                                "PRAGMA wal_checkpoint(PASSIVE)"
                            ).fetchone()
                        if frames * self._page_size() > _WAL_LIMIT:
                            self._on_writer(_checkpoint)
                    held = list(self._leases)
                    if held and time.monotonic() - renewed >= self.lease_seconds / 3:
                        renewed = time.monotonic()
                        marks = ", ".join("?" * len(held))
                        with self._io:
                            self._connection().execute(
                                f"UPDATE leases SET due = ? WHERE owner = ? AND id IN ({marks})",
                                (time.time() + self.lease_seconds, self.owner, *held),
                            )
        finally:
            if checkpointer is not None:
                with self._ckpt_lock:
                    checkpointer.close()

    def _page_size(self) -> int:
        if not self._page:
            with self._io:
                self._page = int(self._connection().execute("PRAGMA page_size").fetchone()[0])
        return self._page

    # --- The worker's side.

    def _reap(self, conn: sqlite3.Connection) -> None:
        """Free at once the leases of dead processes of this host (and the row leases of a
        spool written by a version before the ``leases`` table, in ``events.owner``)."""
        owners = conn.execute(
            "SELECT owner FROM leases UNION SELECT owner FROM events WHERE owner IS NOT NULL"
        ).fetchall()
        for (owner,) in owners:
            if owner != self.owner and not _owner_alive(owner):
                conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
                conn.execute("UPDATE events SET owner = NULL, due = 0 WHERE owner = ?", (owner,))

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """The worker side's read connection, under ``_rlock``: the searches for due rows
        (and their counts) run here, in the thread that takes, not on the writer. They scan
        past the rows that back off (no index on ``due``: it would cost every put a page
        write), tens of milliseconds after a long outage, and no put must wait for that."""
        if self._conn is None:  # the writer's connection first: it finds damage, makes the file
            with self._io:
                self._connection()
        with self._rlock:
            if self._rconn is None:
                self._rconn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._rconn.execute("PRAGMA query_only=1")
            yield self._rconn

    def _held_seqs(self, conn: sqlite3.Connection, now: float) -> set[int]:
        """The rows that live leases (of any process) hold."""
        rows = conn.execute("SELECT seqs FROM leases WHERE due > ?", (now,))
        return {seq for (seqs,) in rows for seq in _unpack(seqs)}

    def _reap_soon(self) -> None:
        """``_reap`` on the writer, at most once a second (it reads every owner)."""
        if time.monotonic() - self._last_reap >= 1.0:
            self._last_reap = time.monotonic()
            self._on_writer(self._reap)

    def _due(self, limit: int) -> int:
        self._reap_soon()
        with self._reader() as conn:
            now = time.time()
            held = len(self._held_seqs(conn, now))  # leased rows are due: count past them
            row = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE due <= ? LIMIT ?)",
                (now, limit + held),
            ).fetchone()
        return max(0, int(row[0]) - held)

    def take(self, max_items: int, wait: float) -> list[Item]:
        deadline = time.monotonic() + wait
        self._want = max_items
        try:
            while True:
                # Count what is due only when this process committed a batch's worth, or
                # every 0.25 s (other processes' events): not at every commit; and not at
                # all while the last lease was a full batch (a backlog) or nothing can wait.
                self._fresh = 0
                if self._woken or self._backlog or wait <= 0:
                    break
                if self._due(max_items) >= max_items:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with self._committed:
                    self._taking = True
                    try:
                        self._committed.wait_for(
                            lambda: self._woken or self._fresh >= max_items, min(remaining, 0.25)
                        )
                    finally:
                        self._taking = False
            self._woken = False
            items = self._lease("due <= ?", (time.time(),), 0, max_items, reap=True)
            self._backlog = len(items) >= max_items
            return items
        except (sqlite3.Error, SpoolError) as exc:
            self._backlog = False
            log.error("cannot read the spool %s: %s; trying again in 1 s", self.path, exc)
            time.sleep(1.0)
            return []

    def take_range(self, after: int, upto: int, max_items: int) -> list[Item]:
        """For ``drain``: lease up to ``max_items`` events with ``after < seq <= upto`` that
        no live process holds, due or backing off."""
        return self._lease(
            "seq <= ? AND (owner IS NULL OR due <= ?)",
            (upto, time.time()),
            after,
            max_items,
            reap=True,
        )

    def last_seq(self) -> int:
        with self._io:
            row = self._connection().execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def _lease(
        self,
        where: str,
        params: tuple[float | int, ...],
        after: int,
        max_items: int,
        reap: bool = False,
    ) -> list[Item]:
        """Lease up to ``max_items`` rows with ``seq > after`` that meet ``where`` and no live
        lease holds, in seq order: one row in ``leases`` (this process, a due time, the rows'
        seqs), in one transaction. The events' rows are only read: a lease writes one narrow
        row, not a hundred wide ones. The search for the rows runs on the read connection
        (``_candidates``); the writer's transaction only looks them up by seq and checks them
        again (another process may have leased, acknowledged or released some meanwhile: those
        are left out, and the batch is smaller). What is not SQL runs here."""
        if reap:
            self._reap_soon()
        candidates = self._candidates(where, params, after, max_items)
        if not candidates:
            return []
        marks = ", ".join("?" * len(candidates))
        chosen = (
            f"SELECT seq, id, body, attempts, crc FROM events WHERE seq IN ({marks}) AND {where} "
            "ORDER BY seq"
        )

        def lease(conn: sqlite3.Connection) -> tuple[int | None, list[Any]]:
            now = time.time()
            with _write_transaction(conn):
                held: set[int] = set()
                expired = []
                for lease_id, due, seqs in conn.execute("SELECT id, due, seqs FROM leases"):
                    if due <= now:
                        expired.append(lease_id)  # taken over: the rows are free again
                    else:
                        held.update(_unpack(seqs))
                if expired:
                    marks = ", ".join("?" * len(expired))
                    conn.execute(f"DELETE FROM leases WHERE id IN ({marks})", expired)
                rows = conn.execute(chosen, (*candidates, *params)).fetchall()
                rows = [row for row in rows if row[0] not in held]
                made = None
                if rows:
                    made = conn.execute(
                        "INSERT INTO leases (owner, due, seqs) VALUES (?, ?, ?)",
                        (self.owner, now + self.lease_seconds, _pack([row[0] for row in rows])),
                    ).lastrowid
            return made, rows

        lease_id, rows = self._on_writer(lease)
        if lease_id is None:
            return []
        self._leases[lease_id] = {row[0] for row in rows}
        leased = self._leased
        for seq, _, body, _, _ in rows:
            leased[seq] = (len(body), lease_id)
        if self._maintainer is None:
            self._start_maintenance()
        return [
            Item(seq, EncodedEvent(i, bytes(body)), attempts, crc)
            for seq, i, body, attempts, crc in rows
        ]

    def _candidates(
        self, where: str, params: tuple[float | int, ...], after: int, max_items: int
    ) -> list[int]:
        """Up to ``max_items`` seqs after ``after`` that meet ``where`` and that no live lease
        holds, in seq order, read on the read connection."""
        with self._reader() as conn:
            held = self._held_seqs(conn, time.time())
            found = conn.execute(
                f"SELECT seq FROM events WHERE {where} AND seq > ? ORDER BY seq LIMIT ?",
                (*params, after, max_items + len(held)),
            ).fetchall()
        return [seq for (seq,) in found if seq not in held][:max_items]

    def _forget(self, items: Sequence[Item]) -> tuple[int, list[int], set[int]]:
        """Forget the leases of ``items`` (acknowledged or released; each is settled by the
        thread that took it). Returns their bytes, the leases that hold no event any more
        (their rows are deleted with the events) and every lease they were in."""
        size, done, touched = 0, [], set()
        for item in items:
            entry = self._leased.pop(item.key, None)
            if entry is None:
                size += len(item.event.json)
                continue
            size += entry[0]
            touched.add(entry[1])
            held = self._leases.get(entry[1])
            if held is not None:
                held.discard(item.key)
                if not held:
                    del self._leases[entry[1]]
                    done.append(entry[1])
        return size, done, touched

    def _drop_leases(self, conn: sqlite3.Connection, done: Sequence[int]) -> None:
        if done:
            marks = ", ".join("?" * len(done))
            conn.execute(
                f"DELETE FROM leases WHERE owner = ? AND id IN ({marks})", (self.owner, *done)
            )

    def _transaction(
        self, touched: set[int], what: str, work: Callable[[sqlite3.Connection], Any], atomic: bool
    ) -> None:
        """Run ``work(conn)`` on the writer (in one write transaction if ``atomic``; else it is
        one statement, or steps of one statement each, each a transaction of its own). If it
        fails the leases ``touched`` are no longer renewed: their events come back when the
        lease expires (an accepted event is then sent again: harmless, its id is the same).
        Raises ``SpoolError``."""

        def transaction(conn: sqlite3.Connection) -> Any:
            if not atomic:
                return work(conn)  # one statement, or a generator of steps
            with _write_transaction(conn):
                work(conn)

        try:
            self._on_writer(transaction)
        except sqlite3.Error as exc:
            for lease_id in touched:
                self._leases.pop(lease_id, None)
            raise _error(exc, f"cannot {what} in the spool {self.path}") from None

    def ack(self, items: Sequence[Item], dead: Sequence[tuple[Item, str]] = ()) -> None:
        every = [*items, *(item for item, _ in dead)]
        if not every:
            return
        keys = [i.key for i in every]
        size, done, touched = self._forget(every)

        def letters(conn: sqlite3.Connection) -> None:
            # One transaction: a rejected event is kept as a dead letter and deleted, or neither.
            conn.executemany(
                "INSERT OR REPLACE INTO dead_letter (seq, id, body, reason, at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i.key, i.event.id, i.event.json, why, time.time()) for i, why in dead],
            )
            marks = ", ".join("?" * len(keys))
            conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", keys)
            self._drop_leases(conn, done)

        def steps(conn: sqlite3.Connection) -> Generator[None, None, None]:
            for start in range(0, len(keys), _STEP_ROWS):
                if start:
                    yield
                part = keys[start : start + _STEP_ROWS]
                marks = ", ".join("?" * len(part))
                conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", part)
            self._drop_leases(conn, done)

        kept = bool(dead) and self.dead_letter
        self._transaction(touched, "acknowledge events", letters if kept else steps, kept)
        self._uncount(len(every), size)

    def release(self, items: Sequence[Item], delay: float) -> None:
        if not items:
            return
        leases = {i.key: entry[1] for i in items if (entry := self._leased.get(i.key))}
        _, done, touched = self._forget(items)
        # A lease that still holds other events must stop naming these: they are free now.
        rest = {
            lease_id: _pack(sorted(held))
            for lease_id in touched
            if (held := self._leases.get(lease_id)) is not None
        }

        def work(conn: sqlite3.Connection) -> None:
            # Only rows whose lease is still this process's: a lease that expired may have
            # been taken over, and its rows are another's now.
            marks = ", ".join("?" * len(touched))
            mine = {
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM leases WHERE owner = ? AND id IN ({marks})",
                    (self.owner, *touched),
                )
            }
            keys = [key for key, lease_id in leases.items() if lease_id in mine]
            if keys:
                marks = ", ".join("?" * len(keys))
                conn.execute(
                    "UPDATE events SET owner = NULL, due = ?, attempts = attempts + 1 "
                    f"WHERE seq IN ({marks})",
                    [time.time() + delay, *keys],
                )
            conn.executemany(
                "UPDATE leases SET seqs = ? WHERE id = ? AND owner = ?",
                [(seqs, lease_id, self.owner) for lease_id, seqs in rest.items()],
            )
            self._drop_leases(conn, done)

        self._transaction(touched, "release events", work, atomic=True)

    def backoff(self, attempts: int) -> float:
        """Seconds before a batch that failed ``attempts`` times is tried again (jittered)."""
        delay = min(self.max_retry_delay, self.retry_delay * 2.0 ** min(attempts, 30))
        return delay * (1.0 - 0.25 * random.random())

    def size(self) -> int:
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
        with self._wlock:
            self._closed = True
            self._room.notify_all()

    def shutdown(self) -> None:
        """Commit what is pending, give back this process's leases, close the connection."""
        self.close()
        with self._wlock:
            self._stopping = True
            pending = bool(self._group.rows)
            if self._writer_idle:
                self._writer_idle = False
                self._kick.release()
        if pending and self._writer is None:
            self._start_writer()  # a put added its row and has not started it yet
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(self.busy_timeout + 5.0)  # its commit is bounded by busy_timeout
        self._halt.set()
        maintainer = self._maintainer
        if maintainer is not None and maintainer is not threading.current_thread():
            maintainer.join(self.busy_timeout + 5.0)
        with self._rlock:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None
        with self._io:
            if self._conn is None:
                return
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))
            self._leased.clear()
            self._leases.clear()
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
        spool._rlock.acquire()
        _held.append(spool)


def _after_fork_in_parent() -> None:
    while _held:
        spool = _held.pop()
        spool._rlock.release()
        spool._ckpt_lock.release()
        spool._io.release()


def _after_fork_in_child() -> None:
    while _held:
        _held.pop().reset_after_fork()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
