"""``SpoolQueue``: the background sender's queue in a SQLite file that survives the process.

Storage: the standard library's ``sqlite3`` in WAL mode: a table ``events`` (rowid ``seq``,
``id``, the event's JSON ``body``, ``due``: when a batch that failed may be tried again,
``attempts``, and ``crc``: the checksum of id and body, ``validation.checksum``, by which the
worker, ``drain`` and salvage tell a damaged row; NULL in rows of an older version), a table
``leases`` (a batch being sent: its ``owner`` process, ``due``: when the lease expires, and its
rows' ``seqs``) and ``dead_letter``. Nothing to install, one file (plus
``-wal``/``-shm`` and a ``.lock`` file that serialises opening), safe for several processes
(SQLite's locks; leases below). Figures: ``bench/enqueue.py``.

- ``put`` in durability ``"process"`` (the default) returns once the event is in this
  process's journal (``journal.py``: a file beside the spool, mapped into memory; the kernel's
  page cache, which outlives the process): a copy of a few hundred bytes under one lock, in
  straight-line code (see ``put``), about 2 us and no system call. The writer thread
  (``togai-spool-writer``, a daemon) imports what the journal got into SQLite, in transactions
  of ``_MAX_GROUP`` rows, each with how far it got in the journal (table ``journals``), so
  that a process killed at any point leaves a journal whose rest the next process imports once
  (a journal's lock, ``flock``, tells whether its process is gone: at open, and once a second
  in ``take``). Other processes, and ``drain``, see an event once it is imported, milliseconds
  later; this process's ``take``, ``ids`` and ``size`` count it at once. More than
  ``_MAX_PENDING`` events not yet imported make a put wait for the writer (a thread putting in
  a tight loop cannot run ahead of it). An import that fails (a full spool) leaves the events
  in the journal: puts raise ``SpoolFullError`` until an import works again. A full journal
  (``journal.SIZE``) is deleted once imported; the writer makes the next one ahead.
- ``put`` in durability ``"power"`` returns once the event is committed and fsynced. Commits
  are grouped by the writer: a ``put`` computes its row's checksum, adds the row to the open
  group (a few bytecodes under one lock) and waits on that group's own gate; the writer takes
  the whole group, commits it in one transaction (one statement per ``_MAX_GROUP`` rows, one
  fsync), and opens the gate. Events put while a commit runs form the next group.
- The worker's write transactions (the lease of ``take``, ``ack``, ``release``) are run by the
  writer too, between two commits, on the same connection: one process never waits for itself
  in SQLite's busy handler (which sleeps milliseconds), and the writer never waits for a
  worker thread that holds the connection while it waits for the GIL or a CPU. Each is kept
  short, because every commit waits behind it: a lease writes one narrow row in ``leases`` (it
  used to rewrite a hundred wide rows of ``events``, 0.3-0.5 ms) and reads its rows by seq:
  the search for due rows, which scans past every row that backs off (13 ms for 50,000 after a
  long outage), runs in the taking thread on a read connection of its own; an ``ack`` deletes
  its rows in steps of ``_STEP_ROWS``, one transaction each, with a group commit between two
  steps. A process killed between two steps has acknowledged part of a batch: the rest is sent
  again, with the same ids. The writer starts at the first put or transaction, stops in
  ``shutdown`` once what is pending is committed (and deletes the imported journals), and is
  made anew in a forked child (which lets go of the parent's journals). Checkpoints (which
  fsync) run in a maintenance thread on its own connection, never on the enqueue path; the
  same thread renews leases.
- Durability ``"process"`` (the journal, and ``synchronous=NORMAL``): an event whose put
  returned survives the death of the process (kill -9, OOM, a crash); a power loss or kernel
  crash may lose the last ones. ``"power"`` (``synchronous=FULL``): the WAL is fsynced at
  every commit, a committed event also survives a power loss.
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
import errno
import fcntl
import itertools
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

from . import journal as _journal
from .errors import ClosedError, QueueFullError, SpoolError, SpoolFullError
from .journal import (
    Journal,
    frame,
    journal_path,
    journal_paths,
    open_orphan,
    pid_alive,
    read_frames,
    remove_unfinished,
)
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
_MAX_PENDING = 5_000  # events in the journal not yet imported (and in memory) before puts wait
_MIN_IMPORT = 25  # rows of the smallest import transaction (see ``_import``)
_RESERVED_PAGES = 4  # pages under ``max_page_count`` an import leaves to the worker
_RETRY_IMPORT = 0.2  # seconds between two tries to import what a failed commit left
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
CREATE TABLE IF NOT EXISTS journals (
    name TEXT PRIMARY KEY,
    upto INTEGER NOT NULL
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
    """Events waiting for the next commit; ``error`` (a ``SpoolError``) if it failed. From the
    journal: ``offsets``, where each row's frame ends in its journal; ``journals``, from which
    row on the rows are in which journal; ``journal``, the last of them."""

    __slots__ = ("journal", "journals", "offsets", "rows")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[_Row] = []
        self.offsets: list[int] = []
        self.journal: Journal | None = None
        self.journals: list[tuple[int, Journal]] = []

    def note(self, journal: Journal) -> None:
        """The next row is in ``journal``."""
        if journal is not self.journal:
            self.journals.append((len(self.rows), journal))
            self.journal = journal

    def ends(self, start: int, stop: int) -> dict[Journal, int]:
        """Where the frames of ``rows[start:stop]`` end, in each journal they are in."""
        ends: dict[Journal, int] = {}
        for k, (first, journal) in enumerate(self.journals):
            last = self.journals[k + 1][0] if k + 1 < len(self.journals) else len(self.rows)
            if first < stop and last > start:
                ends[journal] = self.offsets[min(last, stop) - 1]
        return ends

    def drop(self, count: int) -> None:
        """Forget the first ``count`` rows (imported)."""
        del self.rows[:count], self.offsets[:count]
        self.journals = [(max(0, first - count), j) for first, j in self.journals]
        while len(self.journals) > 1 and self.journals[1][0] == 0:
            del self.journals[0]

    def absorb(self, later: _Group) -> None:
        """Take the rows of ``later`` (put after this group's) after its own."""
        base = len(self.rows)
        self.rows += later.rows
        self.offsets += later.offsets
        for first, journal in later.journals:
            if journal is not self.journal:
                self.journals.append((first + base, journal))
                self.journal = journal


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
    return pid_alive(int(pid))


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
        connections must not cross a fork). The parent's journals are let go of: they are the
        parent's to import."""
        if getattr(self, "_pid", os.getpid()) != os.getpid():
            for journal in self._journals():
                journal.close()
        self._pid = os.getpid()
        self._io = threading.RLock()  # every use of the connection
        self._conn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()  # every use of the worker side's read connection
        self._rconn: sqlite3.Connection | None = None
        self._token = os.urandom(4).hex()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self._token}"
        # The journal (durability "process"): where puts write, the next one (made ahead by
        # the writer), full ones not yet imported, how far each is imported; under ``_wlock``.
        self._journaled = self.durability == "process"
        self._journal: Journal | None = None
        self._spare: Journal | None = None
        self._sealed: list[Journal] = []
        self._imported: dict[Journal, int] = {}
        self._numbers = itertools.count(1)  # of the journals this process makes (atomic)
        self._failure: SpoolError | None = None  # why the last import failed, until one works
        self._committing: _Group | None = None  # the group the writer is importing
        self._retry_at = 0.0  # when the writer tries a failed import again
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
            self._import_orphans(self._conn)  # what processes that are gone left in journals
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
        with self._wlock:  # and what waits in the journal (under ``_io``: not imported now)
            pending = [row for g in (self._committing, self._group) if g for row in g.rows]
            self._count = int(count) + len(pending)
            self._bytes = int(size or 0) + sum(len(row[1]) for row in pending)
            self._room.notify_all()

    # --- put: group commit.

    def _full(self, size: int) -> bool:
        return (self.max_events is not None and self._count + 1 > self.max_events) or (
            self.max_bytes is not None and self._bytes + size > self.max_bytes
        )

    def put(self, event: EncodedEvent, timeout: float | None) -> None:
        size = len(event.json)
        crc = checksum(event.id, event.json)
        row = (event.id, event.json, crc)
        if self._journaled:
            data = frame(event.id, event.json, crc)
            end = len(data)
            # The common case, in straight-line code: no loop and no call of a function
            # written in Python while the lock is held. The interpreter hands the GIL to
            # another thread mostly at those (a loop's jump back, a function's start), so a
            # put seldom loses the GIL while it holds the lock, and another put finds the
            # lock free. The lock is taken without blocking: a thread woken from a blocking
            # acquire holds the lock while it waits for the GIL, and then every put after it
            # blocks too, for good (a convoy). Measured with four threads putting: a p99 of
            # 300-400 us with a blocking acquire, or with one loop inside; 7 us like this.
            lock = self._wlock
            while not lock.acquire(False):
                time.sleep(0)  # held by a thread without the GIL (the writer): let it run
            try:
                journal = self._journal
                group = self._group
                if (
                    journal is not None
                    and group.journal is journal
                    and len(group.rows) < _MAX_PENDING
                    and journal.end + end <= journal.size
                    and not self._closed
                    and self._failure is None
                    and (self.max_events is None or self._count < self.max_events)
                    and (self.max_bytes is None or self._bytes + size <= self.max_bytes)
                ):
                    start = journal.end
                    end += start
                    journal.map[start:end] = data
                    journal.end = end
                    group.rows.append(row)
                    group.offsets.append(end)
                    self._count += 1
                    self._bytes += size
                    if self._writer_idle:
                        self._writer_idle = False
                        self._kick.release()
                    data = b""  # copied
            finally:
                lock.release()
            if data:  # no journal yet, a full one, a full spool, closed, a failed import,
                # or the writer is far behind
                with self._wlock:
                    added = None if self._closed or self._full(size) else self._add(row, size, data)
                if added is None:
                    added = self._add_when_room(row, size, timeout, data)
                if len(added.rows) >= _MAX_PENDING:
                    self._wait(added)  # in the journal; wait for the writer to catch up
            if self._writer is None:
                self._start_writer()
            return  # in the journal: the writer imports it
        with self._wlock:
            waited = None if self._closed or self._full(size) else self._add(row, size, None)
        if waited is None:
            waited = self._add_when_room(row, size, timeout, None)
        self._wait(waited)
        if waited.error is not None:
            self._uncount(1, size)
            raise type(waited.error)(f"{waited.error}; event {event.id!r} was not spooled")

    def _add(self, row: _Row, size: int, data: bytes | None) -> _Group:
        """Write the event's frame ``data`` to the journal (if any; else the writer's commit
        stores it), count it in and add it to the open group. Call with ``_wlock`` held.
        Raises ``SpoolError`` if the journal cannot take it, or the last import failed."""
        group = self._group
        if data is not None:
            if self._failure is not None:
                failure = self._failure
                raise type(failure)(f"{failure}; event {row[0]!r} was not spooled")
            journal = self._append(data, row[0])
            group.note(journal)
            group.offsets.append(journal.end)
        self._count += 1
        self._bytes += size
        group.rows.append(row)
        if self._writer_idle:
            self._writer_idle = False
            self._kick.release()
        return group

    def _append(self, data: bytes, event_id: str) -> Journal:
        """Copy ``data`` into the journal; when it is full, go on in the next one (the writer
        made it ahead, or it is made now). Call with ``_wlock`` held."""
        journal = self._journal
        if journal is not None and journal.append(data):
            return journal
        if journal is not None:
            self._sealed.append(journal)  # full: deleted once imported
            self._journal = None
        journal, self._spare = self._spare, None
        if journal is None or journal.size < len(data):
            if journal is not None:
                self._sealed.append(journal)
            journal = self._make_journal(len(data), event_id)
        self._journal = journal
        journal.append(data)
        return journal

    def _make_journal(self, least: int, event_id: str | None = None) -> Journal:
        path = journal_path(self.path, self._token, next(self._numbers))
        name = path.name
        try:
            return Journal(path, max(_journal.SIZE, least))
        except OSError as exc:
            what = "" if event_id is None else f"; event {event_id!r} was not spooled"
            kind = SpoolFullError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else SpoolError
            raise kind(f"cannot make the journal {name} of the spool: {exc}{what}") from None

    def _journals(self) -> list[Journal]:
        """This process's journals."""
        return [j for j in (*self._sealed, self._journal, self._spare) if j is not None]

    def _add_when_room(
        self, row: _Row, size: int, timeout: float | None, data: bytes | None
    ) -> _Group:
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
                    return self._add(row, size, data)
            with contextlib.suppress(sqlite3.Error, SpoolError), self._io:
                self._connection()
                self._refresh_counts()
            with self._wlock:
                if self._closed:
                    raise ClosedError(f"the sender is closed; event {event_id!r} was not queued")
                if not self._full(size):
                    return self._add(row, size, data)
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
                    if group is not None and group.journals and time.monotonic() < self._retry_at:
                        group = None  # the last import failed: the jobs go on meanwhile
                    jobs += self._jobs
                    self._jobs = []
                    if group is not None:
                        if self._journal is not None:
                            fresh.note(self._journal)  # puts go on in it
                        self._group, self._committing = fresh, group
                    elif not jobs:
                        if self._stopping:
                            return
                        self._writer_idle = True
                if group is not None:
                    current = group
                    self._commit(group)
                    if group.journals:
                        if not self._after_import(group):
                            return  # shutdown while the import fails: left in the journal
                    else:
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
                        self._retry_at = 0.0  # an ack may have made room
        except BaseException as exc:
            with self._wlock:  # a bug: fail what waits; the next put starts a new writer
                released: list[_Group] = []
                pending: _Group | None = None
                if self._journaled:  # in the journal: imported later, by the next writer
                    released, current = self._requeue(current), None
                else:
                    self._committing = None
                    pending, self._group = self._group, _Group()
                waiting, self._jobs = self._jobs, []
                if self._writer is threading.current_thread():
                    self._writer = None
            if isinstance(exc, Exception):
                log.exception("the spool writer of %s stopped", self.path)
            error = SpoolError(f"the spool writer of {self.path} stopped: {exc!r}")
            for waited in released:
                waited.finish()
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
        """Commit the group: in one transaction, one (fsync in ``"power"`` mode) for the
        group, of one statement of up to ``_MAX_GROUP`` rows (a statement's variables are
        bounded) or more. From the journal: in transactions of ``_MAX_GROUP`` rows, each with
        how far it imported each journal, so that a spool with room for a few rows takes
        them (a group of more than its room would fail again and again); the rows imported
        before a failure leave the group."""
        imported = 0
        try:
            with self._io:
                conn = self._connection()
                rows = group.rows
                if not group.journals:
                    if len(rows) <= _MAX_GROUP:
                        self._insert(conn, rows)
                    else:
                        with _write_transaction(conn):
                            for start in range(0, len(rows), _MAX_GROUP):
                                self._insert(conn, rows[start : start + _MAX_GROUP])
                    imported = len(rows)
                else:
                    try:
                        for start, stop in self._import(conn, rows, group.ends):
                            self._imported.update(group.ends(start, stop))
                            imported = stop
                        self._committing = None  # in the spool (under ``_io``, which
                    finally:  # ``_refresh_counts`` holds to read the counts)
                        if imported < len(rows):
                            group.drop(imported)
        except sqlite3.Error as exc:
            group.error = _error(exc, f"cannot write to the spool {self.path}")
        except SpoolError as exc:
            group.error = exc
        except Exception as exc:  # nothing but a SpoolError reaches a put
            group.error = SpoolError(f"cannot write to the spool {self.path}: {exc!r}")
        if imported:
            self._commits += 1
            self._fresh += imported
            if self._taking and self._fresh >= self._want:
                with self._committed:
                    self._committed.notify_all()

    def _after_import(self, group: _Group) -> bool:
        """After the writer's commit of a group from the journal: on success, delete the full
        journals that are imported and make the next one ahead; on failure, put the group
        back before the open one, refuse puts until an import works (``_failure``) and wait
        a little. False if the import failed during shutdown (the events stay in the journal,
        for the next process)."""
        if group.error is None:
            self._retry_at = 0.0
            with self._wlock:
                self._committing = None
                self._failure = None
                done = [j for j in self._sealed if self._imported.get(j, 0) >= j.end]
                for journal in done:
                    self._sealed.remove(journal)
                    self._imported.pop(journal, None)
                want_spare = self._spare is None and not self._stopping
            for journal in done:
                self._retire(journal)
            group.finish()  # the puts that waited for the writer to catch up (``imported``)
            if want_spare:
                with contextlib.suppress(SpoolError):  # a full disk: the put will say so
                    spare: Journal | None = self._make_journal(0)
                    with self._wlock:
                        if self._spare is None:
                            self._spare, spare = spare, None
                    if spare is not None:
                        spare.remove()
            return True
        error = group.error
        with self._wlock:
            released = self._requeue(group)
            first = self._failure is None
            self._failure = error if isinstance(error, SpoolError) else SpoolError(str(error))
            stopping = self._stopping
        for waited in released:
            waited.finish()
        if first:
            log.error(
                "cannot import the journal into the spool %s: %s; the events stay in the "
                "journal, puts raise until an import works",
                self.path,
                error,
            )
        if stopping:
            log.error(
                "the spool %s is closed with %d events in its journal: the next process that "
                "opens it imports them",
                self.path,
                len(self._group.rows),
            )
            return False
        self._retry_at = time.monotonic() + _RETRY_IMPORT
        return True

    def _requeue(self, group: _Group | None) -> list[_Group]:
        """Put the rows of ``group`` (from the journal, not imported) back before those of the
        open group, in a new open group; returns both, to be finished: the puts waiting on
        them (for the writer to catch up) need not wait for a retry, their events are in the
        journal. Call with ``_wlock`` held."""
        merged, later = _Group(), self._group
        for part in (group, later):
            if part is not None:
                merged.absorb(part)
        self._group, self._committing = merged, None
        return [g for g in (group, later) if g is not None]

    def _retire(self, journal: Journal) -> None:
        """Delete a journal that is imported, then its row (a row whose file is gone is never
        read: names are not reused)."""
        journal.remove()
        with contextlib.suppress(sqlite3.Error, SpoolError), self._io:
            self._connection().execute("DELETE FROM journals WHERE name = ?", (journal.name,))

    def _import_orphans(self, conn: sqlite3.Connection) -> int:
        """Import the journals of processes that are gone (their lock is free): what is left
        after how far each was imported, in ``_import``'s transactions, each with how far it
        got; then delete the journal. A process killed in between leaves a journal whose rest
        is imported by the next one, never a row twice. Returns how many events it imported;
        a failure (a full disk) is logged, and the journal stays for the next try."""
        own = {journal.name for journal in self._journals()}
        total = 0
        remove_unfinished(self.path)
        for path in journal_paths(self.path):
            if path.name in own:
                continue
            try:
                with open_orphan(path) as fd:
                    if fd is None:
                        continue
                    row = conn.execute(
                        "SELECT upto FROM journals WHERE name = ?", (path.name,)
                    ).fetchone()
                    for frames in read_frames(fd, int(row[0]) if row else 0, path):
                        rows = [(i, b, c) for _, i, b, c in frames]
                        ends = [end for end, _, _, _ in frames]

                        def upto(
                            _: int, stop: int, at: Path = path, ends: list[int] = ends
                        ) -> dict[Any, int]:
                            return {at: ends[stop - 1]}

                        for start, stop in self._import(conn, rows, upto):
                            total += stop - start
                    os.unlink(path)
                conn.execute("DELETE FROM journals WHERE name = ?", (path.name,))
            except (sqlite3.Error, OSError) as exc:
                log.error("cannot import the journal %s into the spool: %s", path, exc)
        if total:
            log.info("imported %d events from journals of processes that are gone", total)
            self._fresh += total
        return total

    def _import(
        self,
        conn: sqlite3.Connection,
        rows: Sequence[_Row],
        ends: Callable[[int, int], dict[Any, int]],
    ) -> Iterator[tuple[int, int]]:
        """Insert ``rows`` from journals in transactions of up to ``_MAX_GROUP`` rows, each with
        where ``rows[start:stop]`` end in their journals (``ends``: by journal, or its path);
        yields ``(start, stop)`` after each commit. A full spool takes fewer at a time, down
        to ``_MIN_IMPORT``: a spool with room for a few rows takes them (a bigger transaction
        would fail again and again), but the last of its room is left to the worker, whose
        lease and acknowledgement need a page now and then (with none left, nothing is ever
        sent and acknowledged to make room: found by ``test_journal.py``). Under
        ``max_page_count`` the import also stops ``_RESERVED_PAGES`` short of it. Raises the
        error of the smallest transaction."""
        done, size = 0, _MAX_GROUP
        if self.max_page_count is not None:
            reserved = max(1, int(self.max_page_count) - _RESERVED_PAGES)
            conn.execute(f"PRAGMA max_page_count={reserved}")
        try:
            while done < len(rows):
                stop = min(len(rows), done + size)
                try:
                    with _write_transaction(conn):
                        self._insert(conn, rows[done:stop])
                        conn.executemany(
                            "INSERT OR REPLACE INTO journals (name, upto) VALUES (?, ?)",
                            [(j.name, end) for j, end in ends(done, stop).items()],
                        )
                except sqlite3.Error as exc:
                    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                    if full and size > _MIN_IMPORT:
                        size = max(_MIN_IMPORT, size // 4)
                        continue
                    raise
                yield done, stop
                done = stop
        finally:
            if self.max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")

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
        spool written by a version before the ``leases`` table, in ``events.owner``), and
        import the journals of processes that are gone."""
        owners = conn.execute(
            "SELECT owner FROM leases UNION SELECT owner FROM events WHERE owner IS NOT NULL"
        ).fetchall()
        for (owner,) in owners:
            if owner != self.owner and not _owner_alive(owner):
                conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
                conn.execute("UPDATE events SET owner = NULL, due = 0 WHERE owner = ?", (owner,))
        self._import_orphans(conn)

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

    def imported(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every event put here before the call is in
        the SQLite file (seen by other processes and by ``drain``; a put returns once its
        event is in the journal). True if it is."""
        with self._wlock:
            group = self._group if self._group.rows else self._committing
            failing = self._failure is not None
        if group is None:
            return True
        if failing:
            return False
        if self._writer is None:
            self._start_writer()
        if not group.gate.acquire(timeout=max(0.0, timeout)):
            return False
        group.gate.release()  # the next thread waiting for it goes through
        return group.error is None

    def take(self, max_items: int, wait: float) -> list[Item]:
        # What this process put before is taken as if the put had imported it (bounded:
        # an import that fails leaves it in the journal, and the take goes on without it).
        self.imported(min(1.0, max(wait, 0.1)))
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
        """The ids the spool holds, with those still in this process's journal (read first:
        a group the writer imports meanwhile is in one or the other)."""
        with self._wlock:
            pending = [row[0] for g in (self._committing, self._group) if g for row in g.rows]
        try:
            with self._io:
                rows = self._connection().execute("SELECT id FROM events ORDER BY seq").fetchall()
        except (sqlite3.Error, SpoolError) as exc:
            log.error("cannot read the spool %s: %s", self.path, exc)
            return pending
        return list(dict.fromkeys([*(row[0] for row in rows), *pending]))

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
        with self._wlock:  # what is imported goes; a journal with events left stays
            journals, self._sealed = self._journals(), []
            self._journal = self._spare = None
            left = {
                j for g in (self._committing, self._group) if g and g.rows for _, j in g.journals
            }
        for journal in journals:
            if journal in left or self._imported.get(journal, 0) < journal.end:
                journal.close()
            else:
                self._retire(journal)
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
        spool._wlock.acquire()  # the child lets go of journals that are not half made
        _held.append(spool)


def _after_fork_in_parent() -> None:
    while _held:
        spool = _held.pop()
        spool._wlock.release()
        spool._rlock.release()
        spool._ckpt_lock.release()
        spool._io.release()


def _after_fork_in_child() -> None:
    while _held:
        _held.pop().reset_after_fork()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
