"""Salvage: read every event that can still be read from a damaged spool, and send it.

``togai-ingest drain`` salvages a spool that SQLite cannot open (``file is not a database``,
``malformed``), a file the spool moved aside (``PATH.corrupt-<time>-<pid>``) and, with
``--salvage``, any spool file (one whose ``-wal`` was lost opens as a valid, older database).

How it reads: not through SQLite (which gives up at the first damaged page it meets) but page
by page, like ``sqlite3 .recover``, in pure Python, from the file's bytes opened read-only, so
the damaged file is never modified (nor its ``-wal``/``-shm``):

- the page size comes from the file's header, else from the ``-wal`` header, else it is the
  size under which most pages look like B-tree pages;
- the ``-wal`` frames are applied as SQLite would (salts and the checksum chain, up to the
  last commit); frames after a break in the chain are read too, for rows found nowhere else;
- every table-leaf page is read cell by cell (overflow chains followed, each bounded) and
  every row shaped like a spooled event is taken, whether or not its page is still reachable
  from the table's root; pages on the free list are skipped (deleted rows);
- what cannot be read is counted, never dropped: a page that is no B-tree page, overflow or
  free page (garbage, or beyond the end of a truncated file), a leaf page whose bytes do not
  add up (cells may be lost), a cell that does not parse, a broken overflow chain (the row's
  id, when it is readable, is named), a ``-shm`` that promises more ``-wal`` frames than there
  are.

Which table and columns hold the events is not copied from ``spool.py``: it is learned by
spooling one event into a scratch spool and finding where it landed.

Each row's checksum column (the CRC-32 of its id and body, ``validation.checksum``) is
compared with its bytes; a row stored before the spool had one is decoded and validated again
(``encode_event``) and its id compared with the row's id column. A damaged row is an *invalid*
outcome, never a bad request; with a checksum that holds even for a flip that leaves a valid
event with the same id (a digit of a value). The ids make a re-send safe: a salvage run again
sends again, harmlessly.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .client import DEFAULT_CONCURRENCY, Client
from .drain import DrainResult, deliver
from .errors import ConfigurationError, SpoolError, TogaiError, ValidationError
from .results import BatchOutcome, InvalidEvent
from .validation import EncodedEvent, checksum, damage

__all__ = ["Damage", "Row", "SpoolImage", "damaged", "in_use", "salvage"]

log = logging.getLogger("togai_ingest")

_MAGIC = b"SQLite format 3\x00"
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_MAX_PAYLOAD = 1 << 28  # bytes of one row at most: beyond, the cell is damaged
_LEAF, _INTERIOR, _INDEX_LEAF, _INDEX_INTERIOR = 0x0D, 0x05, 0x0A, 0x02
SHOWN = 10
"""Damaged places named one by one on stderr; the rest are counted."""


# --- The layout: which table and columns hold the events.


@dataclass(frozen=True, slots=True)
class Layout:
    """Where an event is in a row of the spool's events table: ``columns`` values, the rowid
    alias (stored as NULL) at ``alias``, the id at ``id_col``, the JSON at ``body_col``, their
    checksum at ``crc_col`` (None: the spool keeps none). A row stored before the checksum
    column was added (the last one) has one value less, and no checksum."""

    table: str
    columns: int
    alias: int | None
    id_col: int
    body_col: int
    crc_col: int | None = None

    def fits(self, values: int) -> bool:
        """Whether a record of ``values`` values can be a row of this table."""
        older = self.crc_col is not None and self.crc_col == self.columns - 1
        return values == self.columns or (older and values == self.columns - 1)


@functools.cache
def layout() -> Layout:
    """Spool one event into a scratch spool and find the table and columns it landed in
    (``spool.py`` names them in its SQL only). Raises ``SpoolError``."""
    try:
        found = _probe()
    except (OSError, sqlite3.Error, TypeError, ValueError, TogaiError) as exc:
        raise SpoolError(f"cannot tell where the spool keeps its events: {exc}") from None
    if found is None:
        raise SpoolError("cannot tell where the spool keeps its events (the probe was not found)")
    return found


def _probe() -> Layout | None:
    from .spool import SpoolQueue  # here: the spool is not needed to read a salvage

    probe_id = "togai-salvage-probe-\u2603"
    body = orjson.dumps({"id": probe_id, "probe": "\u2603" * 3})
    with tempfile.TemporaryDirectory(prefix="togai-salvage-") as scratch:
        path = Path(scratch) / "probe.spool"
        queue = SpoolQueue(path, max_bytes=None)
        try:
            queue.put(EncodedEvent(probe_id, body), timeout=5.0)
        finally:
            queue.shutdown()
        conn = sqlite3.connect(path)
        try:
            tables = [
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                quoted = '"' + table.replace('"', '""') + '"'
                info = conn.execute(f"PRAGMA table_info({quoted})").fetchall()
                alias = [i for i, col in enumerate(info) if col[5] == 1]
                for row in conn.execute(f"SELECT * FROM {quoted}"):
                    values = [bytes(v) if isinstance(v, bytes | memoryview) else v for v in row]
                    if probe_id in values and body in values:
                        only_pk = len(alias) == 1 and str(info[alias[0]][2]).upper() == "INTEGER"
                        crc = checksum(probe_id, body)
                        return Layout(
                            table,
                            len(info),
                            alias[0] if only_pk else None,
                            values.index(probe_id),
                            values.index(body),
                            values.index(crc) if crc in values else None,
                        )
        finally:
            conn.close()
    return None


# --- What was found.


@dataclass(frozen=True, slots=True)
class Row:
    """A row read from the file: its rowid, the id column (None if it is not text), the body
    column's bytes, the page it was on, its overflow pages and its checksum (None: none
    stored; -1: a value that is no checksum)."""

    seq: int
    id: str | None
    body: bytes
    page: int
    overflow: tuple[int, ...] = ()
    crc: int | None = None


@dataclass(slots=True)
class Damage:
    """What could not be read. ``pages``: page number -> what is wrong with it (each such
    page may have held events: how many cannot be told); ``rows``: rows that do not parse,
    as (page, id if readable, what); ``notes``: whole-file findings (a lost ``-wal``)."""

    pages: dict[int, str] = field(default_factory=dict)
    rows: list[tuple[int, str | None, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pages_read: int = 0
    rows_read: int = 0

    @property
    def none(self) -> bool:
        return not (self.pages or self.rows or self.notes)

    def describe(self) -> list[str]:
        """Lines for stderr: a count, then the first places."""
        if self.none:
            return []
        parts = []
        if self.pages:
            parts.append(
                f"{_count(len(self.pages), 'page')} unreadable (they may have held events)"
            )
        if self.rows:
            parts.append(f"{_count(len(self.rows), 'row')} unreadable")
        lines = [f"salvage: {', '.join(parts)}"] if parts else []
        for number, what in sorted(self.pages.items())[:SHOWN]:
            lines.append(f"  page {number}: {what}")
        if len(self.pages) > SHOWN:
            lines.append(f"  ... and {len(self.pages) - SHOWN:,} more pages")
        for number, event_id, what in self.rows[:SHOWN]:
            named = f" (event {event_id!r})" if event_id is not None else ""
            lines.append(f"  a row on page {number}{named}: {what}")
        if len(self.rows) > SHOWN:
            lines.append(f"  ... and {len(self.rows) - SHOWN:,} more rows")
        lines.extend(f"salvage: {note}" for note in self.notes)
        return lines


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


# --- Reading the file.


def _varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """SQLite's varint at ``pos`` (before ``end``): (value, next position); ValueError."""
    value = 0
    end = min(end, len(data))
    for k in range(9):
        if pos + k >= end:
            raise ValueError("varint past the end")
        byte = data[pos + k]
        if k == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + k + 1
    raise AssertionError("unreachable")


def _serial_size(kind: int) -> int:
    if kind < 12:
        if kind in (10, 11):
            raise ValueError("reserved serial type")
        return (0, 1, 2, 3, 4, 6, 8, 8, 0, 0)[kind]
    return (kind - 12) // 2


def _record(payload: bytes) -> list[Any]:
    """The values of a record: None, int, float, str (as bytes, tagged) or bytes."""
    size, pos = _varint(payload, 0, len(payload))
    if size < 1 or size > len(payload):
        raise ValueError("record header size")
    kinds = []
    while pos < size:
        kind, pos = _varint(payload, pos, size)
        kinds.append(kind)
    if pos != size:
        raise ValueError("record header overruns")
    values: list[Any] = []
    at = size
    for kind in kinds:
        n = _serial_size(kind)
        if at + n > len(payload):
            raise ValueError("record body shorter than its header")
        chunk = payload[at : at + n]
        at += n
        if kind == 0:
            values.append(None)
        elif kind <= 6:
            values.append(int.from_bytes(chunk, "big", signed=True))
        elif kind == 7:
            values.append(struct.unpack(">d", chunk)[0])
        elif kind in (8, 9):
            values.append(kind - 8)
        elif kind % 2:
            values.append(_Text(chunk))
        else:
            values.append(bytes(chunk))
    if at != len(payload):
        raise ValueError("record longer than its values")
    return values


class _Text(bytes):
    """A TEXT value (its UTF-8 bytes)."""


@dataclass(slots=True)
class _Leaf:
    rows: list[Row] = field(default_factory=list)
    overflow: set[int] = field(default_factory=set)


class SpoolImage:
    """A spool file (with its ``-wal`` and ``-shm`` if present), read-only, page by page.

    ``rows()`` yields every row shaped like an event (``layout``), each rowid once;
    ``damage`` holds what could not be read once the iteration is over. Raises
    ``SpoolError`` if the file cannot be opened; a damaged file never raises."""

    def __init__(self, path: str | os.PathLike[str], shape: Layout) -> None:
        self.path = Path(path)
        self.shape = shape
        self.damage = Damage()
        self._broken: list[tuple[tuple[int, str | None, str], int]] = []
        try:
            self._main: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise SpoolError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._wal: IO[bytes] | None = None
        with contextlib.suppress(OSError):
            self._wal = open(f"{self.path}-wal", "rb")  # noqa: SIM115 - closed in close()
        try:
            self.size = os.fstat(self._main.fileno()).st_size
            self._setup()
        except OSError as exc:
            self.close()
            raise SpoolError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._main.close()
        if self._wal is not None:
            self._wal.close()

    def __enter__(self) -> SpoolImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Page size, header, WAL.

    def _setup(self) -> None:
        head = self._read_main(0, 100)
        self.header_ok = len(head) == 100 and head[:16] == _MAGIC
        wal_size = self._wal_header()
        page_size = 0
        if self.header_ok:
            raw = int.from_bytes(head[16:18], "big")
            page_size = 65536 if raw == 1 else raw
        if not _valid_page_size(page_size):
            page_size = wal_size if _valid_page_size(wal_size) else self._guess_page_size()
        self.page_size = page_size
        reserved = head[20] if self.header_ok else 0
        self.usable = page_size - reserved if page_size - reserved >= 480 else page_size
        self.file_pages = self.size // page_size
        if self.size % page_size:
            self.file_pages += 1  # a partial last page: read as far as it goes
        self._frames: dict[int, int] = {}  # page -> offset in the WAL of its current image
        self._extra: list[int] = []  # offsets of frames after a break or the last commit
        self._latest: dict[int, int] = {}  # page -> offset of its latest extra image
        self._reading_extra = False
        self.committed_pages = 0
        self.frames_read = 0
        self.shm_pages = 0
        if self._wal is not None and wal_size == page_size:
            self._read_wal()
        elif wal_size:
            self.damage.notes.append(
                f"the -wal file's page size ({wal_size:,}) is not the file's ({page_size:,}): "
                "the changes it holds cannot be read, with the events they held"
            )
        self._check_shm()
        header_pages = 0
        if self.header_ok and head[24:28] == head[92:96]:
            header_pages = int.from_bytes(head[28:32], "big")
        self.pages = max(self.file_pages, self.committed_pages)  # pages to read
        self.expected = max(header_pages, self.committed_pages, self.shm_pages)
        page1 = self.page(1)
        self.free: set[int] = set()
        if page1[:16] == _MAGIC:
            self.free = self._freelist(
                int.from_bytes(page1[32:36], "big"), int.from_bytes(page1[36:40], "big")
            )

    def _read_main(self, offset: int, size: int) -> bytes:
        self._main.seek(offset)
        return self._main.read(size)

    def _guess_page_size(self) -> int:
        """The page size under which the first MiB holds the most B-tree pages (a size
        twice the true one finds half as many; half the true one, half as many too)."""
        best, best_score = 4096, 0
        window = min(self.size, 1 << 20)
        for size in (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512):
            score = 0
            for number in range(2, window // size + 1):
                page = self._read_main((number - 1) * size, size)
                score += _plausible(page, 0, size)
            if score > best_score:
                best, best_score = size, score
        return best

    def _wal_header(self) -> int:
        if self._wal is None:
            return 0
        self._wal.seek(0)
        head = self._wal.read(32)
        if not head:
            return 0
        magic, _version, size = struct.unpack(">III", head[:12]) if len(head) == 32 else (0,) * 3
        size = 65536 if size == 1 else size
        if magic not in _WAL_MAGIC or not _valid_page_size(size):
            self.damage.notes.append(
                "the -wal file's header is unreadable: the changes it holds (since the last "
                "checkpoint) cannot be read, with the events they held"
            )
            return 0
        self._wal_big = magic & 1 == 1
        self._wal_salt = head[16:24]
        self._wal_sum = _checksum(head[:24], (0, 0), self._wal_big)
        self._wal_sum_ok = self._wal_sum == struct.unpack(">II", head[24:32])
        return size

    def _read_wal(self) -> None:
        """Frames with the header's salts in order: those up to the last commit of an
        unbroken checksum chain are the pages' current images (what SQLite reads); the
        others (after a break, or not committed) are extra images, read for rows found
        nowhere else. Frames of an older generation of the WAL (other salts) come only after
        the current ones: one before a current frame is a damaged one."""
        assert self._wal is not None
        frame = 24 + self.page_size
        running = self._wal_sum
        unbroken = self._wal_sum_ok
        if not unbroken:
            self.damage.notes.append(
                "the -wal file's header checksum is wrong: its frames are read as extra "
                "images (changes in damaged frames may be lost)"
            )
        pending: dict[int, int] = {}
        offset, index, other = 32, 0, 0
        while True:
            self._wal.seek(offset)
            head = self._wal.read(24)
            data = self._wal.read(self.page_size)
            if len(head) + len(data) < frame:
                if head:
                    self.damage.notes.append("the -wal file ends in a partial frame (cut short)")
                break
            index += 1
            number, commit = struct.unpack(">II", head[:8])
            if head[8:16] != self._wal_salt:
                other += 1
                offset += frame
                continue
            if other:
                self.damage.notes.append(
                    f"{other:,} -wal frames before frame {index} have damaged headers: the "
                    "changes they held may be lost"
                )
                other, unbroken = 0, False
            self.frames_read += 1
            if unbroken:
                running = _checksum(head[:8], running, self._wal_big)
                running = _checksum(data, running, self._wal_big)
                unbroken = running == struct.unpack(">II", head[16:24])
                if not unbroken:
                    self.damage.notes.append(
                        f"the -wal file is damaged at frame {index}: it and the frames after "
                        "it are read as extra images (changes in damaged frames may be lost)"
                    )
            if unbroken and number >= 1:
                pending[number] = offset
                if commit:
                    self._frames.update(pending)
                    pending.clear()
                    self.committed_pages = commit
            else:
                self._extra.append(offset)
            offset += frame
        self._extra[:0] = sorted(pending.values())
        for at in self._extra:
            self._wal.seek(at)
            self._latest[int.from_bytes(self._wal.read(4), "big")] = at

    def _check_shm(self) -> None:
        """A ``-shm`` that counts more WAL frames than are readable: the WAL was lost or cut."""
        try:
            with open(f"{self.path}-shm", "rb") as shm:
                head = shm.read(136)
        except OSError:
            return
        if len(head) < 136 or head[:48] != head[48:96] or head[12] != 1:
            return
        frames = int.from_bytes(head[16:20], sys.byteorder)
        self.shm_pages = int.from_bytes(head[20:24], sys.byteorder)  # after the last commit
        backfilled = int.from_bytes(head[96:100], sys.byteorder)
        readable = self.frames_read
        if self._wal is not None and head[32:40] != getattr(self, "_wal_salt", b""):
            readable = 0
        lost = frames - max(readable, backfilled)
        if lost > 0:
            where = "is missing" if self._wal is None else "is shorter than the -shm says"
            self.damage.notes.append(
                f"the -wal file {where}: {lost:,} committed page writes since the last "
                "checkpoint are lost, with the events they held (how many cannot be told)"
            )

    def page(self, number: int) -> bytes:
        """The current image of page ``number`` (b"" beyond the end of the file); while the
        extra images are read, the latest extra image of it if there is one (the overflow
        pages of a row written after a break in the -wal are there too)."""
        offset = self._latest.get(number) if self._reading_extra else None
        offset = self._frames.get(number) if offset is None else offset
        if offset is not None and self._wal is not None:
            self._wal.seek(offset + 24)
            return self._wal.read(self.page_size)
        if number < 1 or number > self.file_pages:
            return b""
        return self._read_main((number - 1) * self.page_size, self.page_size)

    def _freelist(self, trunk: int, total: int) -> set[int]:
        """The pages on the free list (their rows were deleted), if the list is whole and
        holds as many pages as the header says; else none (every page is read: a deleted
        event may be sent again, which its id makes harmless)."""
        free: set[int] = set()
        while trunk:
            data = self.page(trunk)
            count = int.from_bytes(data[4:8], "big") if len(data) == self.page_size else -1
            if (
                trunk in free
                or not 1 <= trunk <= self.pages
                or not 0 <= count <= (self.usable - 8) // 4
            ):
                return set()
            free.add(trunk)
            for k in range(count):
                leaf = int.from_bytes(data[8 + 4 * k : 12 + 4 * k], "big")
                if not 1 <= leaf <= self.pages or leaf in free:
                    return set()
                free.add(leaf)
            if len(free) > total:
                return set()
            trunk = int.from_bytes(data[:4], "big")
        return free if len(free) == total else set()

    # Rows.

    def rows(self) -> Iterator[Row]:
        """Every row shaped like an event, each rowid once: current pages first, then the
        extra WAL images."""
        seen: set[int] = set()
        unknown: dict[int, str] = {}
        claimed: set[int] = set()
        bad_frames: list[tuple[int, int]] = []
        for number in range(1, self.pages + 1):
            if number in self.free:
                continue
            data = self.page(number)
            leaf = self._leaf(number, data, unknown, self.damage)
            if leaf is None:
                continue
            claimed |= leaf.overflow
            for row in leaf.rows:
                if row.seq not in seen:
                    seen.add(row.seq)
                    self.damage.rows_read += 1
                    yield row
        for number in range(self.pages + 1, self.expected + 1):
            unknown[number] = "missing: the file is truncated"
        self._reading_extra = True
        for offset in self._extra:
            assert self._wal is not None
            self._wal.seek(offset)
            head = self._wal.read(24 + self.page_size)
            number = int.from_bytes(head[:4], "big")
            scratch: dict[int, str] = {}
            leaf = self._leaf(number, head[24:], scratch, Damage())  # older or newer: no report
            if leaf is None:
                if scratch:
                    bad_frames.append((offset, number))
                continue
            claimed |= leaf.overflow
            unknown.pop(number, None)  # a readable newer image of a page found damaged
            for row in leaf.rows:
                if row.seq not in seen:
                    seen.add(row.seq)
                    self.damage.rows_read += 1
                    yield row
        for number in sorted(unknown):
            if number not in claimed:
                self.damage.pages[number] = unknown[number]
        for entry, seq in self._broken:  # read whole from another image after all
            if seq in seen and entry in self.damage.rows:
                self.damage.rows.remove(entry)
        bad = [number for _, number in bad_frames if number not in claimed]
        if bad:
            self.damage.notes.append(
                f"{len(bad):,} -wal frames are unreadable (images of pages "
                f"{', '.join(map(str, bad[:SHOWN]))}{', ...' if len(bad) > SHOWN else ''}): "
                "the changes they held may be lost"
            )

    def _leaf(
        self, number: int, data: bytes, unknown: dict[int, str], damage: Damage
    ) -> _Leaf | None:
        """The rows of a table-leaf page; None for any other page (an unknown one is noted
        in ``unknown``: it may be an overflow page, claimed later by the cell that owns it).
        What does not parse goes to ``damage``."""
        base = 100 if number == 1 else 0
        if len(data) < self.page_size:
            unknown[number] = (
                "missing: the file is truncated"
                if not data
                else f"cut short: {len(data):,} of {self.page_size:,} bytes"
            )
            return None
        kind = data[base]
        if kind in (_INTERIOR, _INDEX_LEAF, _INDEX_INTERIOR) and _plausible(
            data, base, self.usable
        ):
            damage.pages_read += 1
            return None
        if kind != _LEAF or not _plausible(data, base, self.usable):
            unknown[number] = "not a database page (garbage, or the overflow of a lost row)"
            return None
        damage.pages_read += 1
        leaf = _Leaf()
        count = int.from_bytes(data[base + 3 : base + 5], "big")
        content = int.from_bytes(data[base + 5 : base + 7], "big") or 65536
        covered = bytearray(self.usable)
        bad: list[str] = []

        def cover(start: int, end: int) -> bool:
            if start < 0 or end > self.usable or start > end or any(covered[start:end]):
                return False
            covered[start:end] = b"\x01" * (end - start)
            return True

        cover(0, base + 8 + 2 * count)
        cover(base + 8 + 2 * count, min(content, self.usable))
        block = int.from_bytes(data[base + 1 : base + 3], "big")
        blocks = 0
        while block and blocks < self.usable // 4:
            blocks += 1
            if block + 4 > self.usable:
                bad.append("its free-block chain is broken")
                break
            size = int.from_bytes(data[block + 2 : block + 4], "big")
            if not cover(block, block + size):
                bad.append("its free-block chain is broken")
                break
            block = int.from_bytes(data[block : block + 2], "big")
        for k in range(count):
            at = int.from_bytes(data[base + 8 + 2 * k : base + 10 + 2 * k], "big")
            try:
                end, row, chain = self._cell(number, data, at, damage)
            except ValueError as exc:
                damage.rows.append((number, None, f"cell {k} does not parse ({exc})"))
                continue
            if not cover(at, max(end, at + 4)):
                damage.rows.append((number, None, f"cell {k} overlaps another"))
                continue
            leaf.overflow |= chain
            if row is not None:
                leaf.rows.append(row)
        fragments = data[base + 7]
        missing = self.usable - sum(covered)
        if missing != fragments:
            bad.append(
                f"{missing - fragments:,} bytes are in no cell (cells may be lost)"
                if missing > fragments
                else "its header does not match its cells"
            )
        if bad:
            damage.pages[number] = "damaged: " + "; ".join(bad)
        return leaf

    def _cell(
        self, number: int, data: bytes, at: int, damage: Damage
    ) -> tuple[int, Row | None, set[int]]:
        """One table-leaf cell at ``at``: (its end, the row if it is shaped like an event,
        its overflow pages); ValueError if it does not parse."""
        usable = self.usable
        if at < 8 or at >= usable:
            raise ValueError("its offset is outside the page")
        size, pos = _varint(data, at, usable)
        seq, pos = _varint(data, pos, usable)
        if seq >= 1 << 63:
            seq -= 1 << 64
        if size > _MAX_PAYLOAD:
            raise ValueError(f"a payload of {size:,} bytes")
        most = usable - 35
        least = ((usable - 12) * 32 // 255) - 23
        local = size
        if size > most:
            local = least + (size - least) % (usable - 4)
            if local > most:
                local = least
        end = pos + local
        if end > usable:
            raise ValueError("its payload overruns the page")
        payload = bytearray(data[pos:end])
        chain: dict[int, None] = {}  # in order
        broken: str | None = None
        if local < size:
            if end + 4 > usable:
                raise ValueError("its overflow pointer overruns the page")
            nxt = int.from_bytes(data[end : end + 4], "big")
            end += 4
            while len(payload) < size:
                known = 1 <= nxt <= self.pages or (self._reading_extra and nxt in self._latest)
                if not known or nxt in chain or nxt == number:
                    broken = f"its overflow chain is broken at page {nxt}"
                    break
                chain[nxt] = None
                page = self.page(nxt)
                if len(page) < usable:
                    what = "cut short" if page else "missing"
                    broken = f"its overflow page {nxt} is {what}"
                    break
                payload += page[4 : 4 + min(usable - 4, size - len(payload))]
                nxt = int.from_bytes(page[:4], "big")
        if broken is not None:
            event_id = self._partial_id(bytes(payload))
            if event_id is not None or self._partial_shape(bytes(payload)):
                entry = (number, event_id, f"row {seq}: {broken}")
                damage.rows.append(entry)
                self._broken.append((entry, seq))
            return end, None, set(chain)
        try:
            values = _record(bytes(payload))
        except ValueError as exc:
            raise ValueError(f"row {seq}: {exc}") from None
        return end, self._row(seq, values, number, tuple(chain)), set(chain)

    def _row(self, seq: int, values: list[Any], page: int, chain: tuple[int, ...]) -> Row | None:
        shape = self.shape
        if not shape.fits(len(values)):
            return None
        if shape.alias is not None and values[shape.alias] is not None:
            return None
        raw_id, body = values[shape.id_col], values[shape.body_col]
        if not isinstance(raw_id, bytes) or not isinstance(body, bytes):
            return None  # integers and floats: another table's row
        event_id = raw_id.decode("utf-8", "replace") if isinstance(raw_id, _Text) else None
        at = shape.crc_col
        crc = values[at] if at is not None and at < len(values) else None
        if crc is not None and type(crc) is not int:
            crc = -1  # no CRC-32 (they are 0 to 2**32 - 1): the checksum itself is damaged
        return Row(seq, event_id, bytes(body), page, chain, crc)

    def _partial_shape(self, payload: bytes) -> bool:
        """Whether a record whose end is lost starts like an event row."""
        try:
            size, pos = _varint(payload, 0, len(payload))
            kinds = []
            while pos < min(size, len(payload)):
                kind, pos = _varint(payload, pos, len(payload))
                kinds.append(kind)
        except ValueError:
            return False
        return self.shape.fits(len(kinds))

    def _partial_id(self, payload: bytes) -> str | None:
        """The id of a record whose end is lost, when the bytes before the cut hold it."""
        try:
            size, pos = _varint(payload, 0, len(payload))
            kinds = []
            while pos < size:
                kind, pos = _varint(payload, pos, size)
                kinds.append(kind)
            if not self.shape.fits(len(kinds)):
                return None
            at = size + sum(_serial_size(k) for k in kinds[: self.shape.id_col])
            kind = kinds[self.shape.id_col]
            n = _serial_size(kind)
            if kind < 13 or kind % 2 == 0 or at + n > len(payload):
                return None
            return payload[at : at + n].decode("utf-8", "replace")
        except ValueError:
            return None


def _valid_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


def _plausible(data: bytes, base: int, usable: int) -> int:
    """1 if ``data`` has a B-tree page header whose numbers fit in the page, else 0."""
    if len(data) < base + 12:
        return 0
    kind = data[base]
    if kind not in (_LEAF, _INTERIOR, _INDEX_LEAF, _INDEX_INTERIOR):
        return 0
    header = 8 if kind in (_LEAF, _INDEX_LEAF) else 12
    count = int.from_bytes(data[base + 3 : base + 5], "big")
    content = int.from_bytes(data[base + 5 : base + 7], "big") or 65536
    first_free = int.from_bytes(data[base + 1 : base + 3], "big")
    end = base + header + 2 * count
    if end > usable or content < end or content > usable or data[base + 7] > 60:
        return 0
    if first_free and not (end <= first_free <= usable - 4):
        return 0
    for k in range(count):
        at = int.from_bytes(data[base + header + 2 * k : base + header + 2 * k + 2], "big")
        if not content <= at < usable:
            return 0
    return 1


def _checksum(data: bytes, start: tuple[int, int], big: bool) -> tuple[int, int]:
    """The WAL's running checksum over ``data`` (a multiple of 8 bytes)."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    s0, s1 = start
    for k in range(0, len(words), 2):
        s0 = (s0 + words[k] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[k + 1] + s0) & 0xFFFFFFFF
    return s0, s1


# --- Before a salvage.


def in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a process holds a SQLite lock on the file (an open connection: in WAL mode
    every connection holds a shared lock while it is open). Tested without taking a lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if sys.platform.startswith("linux"):
            layout_, at = "hhqqi4x", 0
            request = struct.pack(layout_, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        elif sys.platform == "darwin":
            layout_, at = "qqihh", 3
            request = struct.pack(layout_, 0, 0, 0, fcntl.F_WRLCK, os.SEEK_SET)
        else:  # pragma: no cover - no other platform is supported
            return False
        answer = struct.unpack(layout_, fcntl.fcntl(fd, fcntl.F_GETLK, request))
        return bool(answer[at] != fcntl.F_UNLCK)
    except OSError:
        return False
    finally:
        os.close(fd)


def damaged(path: str | os.PathLike[str]) -> bool:
    """Whether SQLite finds the spool file damaged: opened read-only (the file and its
    ``-wal`` stay as they are; SQLite may rebuild the ``-shm``, an index of the ``-wal``),
    then ``PRAGMA quick_check``. False when it cannot tell
    (a permission error, a lock): opening the spool reports that."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as stream:
            head = stream.read(100)
            size = os.fstat(stream.fileno()).st_size
    except OSError:
        return False
    if len(head) == 100 and head[:16] == _MAGIC:
        page = int.from_bytes(head[16:18], "big")
        if size % (65536 if page == 1 else page or 1):
            return True  # cut short: SQLite reads the last page padded with zeros, silently
    # Without a -wal there is nothing to apply: immutable (no -wal or -shm is created).
    wal = os.path.exists(f"{path}-wal")
    uri = Path(path).resolve().as_uri() + ("?mode=ro" if wal else "?immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        return problems != ["ok"]
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc)
    except sqlite3.Error:
        return False
    finally:
        conn.close()


# --- The salvage run.


def _encode(row: Row) -> EncodedEvent | tuple[Any, ValidationError]:
    """The row's event, validated again, or (what it holds, why it is invalid)."""
    event = EncodedEvent(row.id if row.id is not None else "", row.body)
    error = damage(event, row.crc, f"row {row.seq} (page {row.page})")
    if error is None:
        return event
    try:
        return orjson.loads(row.body), error
    except orjson.JSONDecodeError:
        return row.body.decode("utf-8", "replace"), error


def salvage(
    path: str | os.PathLike[str],
    client: Client,
    *,
    batch_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_batch: Callable[[BatchOutcome, DrainResult], None] | None = None,
) -> DrainResult:
    """Send every event that can still be read from the damaged spool file ``path``;
    returns a ``DrainResult`` whose ``invalid`` holds the rows that are no valid event and
    ``damage`` what could not be read. The file is only read. Raises ``SpoolError`` if it
    cannot be read or a process has it open (a live sender: salvage a copy, or stop it).
    ``on_batch`` as for ``drain`` (an invalid row is a batch of its own, not sent)."""
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, not {concurrency!r}")
    size = client.check_batch_size(batch_size)
    if in_use(path):
        raise SpoolError(
            f"{path} is open in another process (a live sender?): salvage reads only a spool "
            "no process uses; stop it, or let it move the file aside and salvage that"
        )
    shape = layout()
    result = DrainResult()
    with SpoolImage(path, shape) as image:
        rows = image.rows()
        lock = threading.Lock()

        def take() -> list[EncodedEvent]:
            batch: list[EncodedEvent] = []
            with lock:
                while len(batch) < size and result.aborted is None:
                    row = next(rows, None)
                    if row is None:
                        break
                    found = _encode(row)
                    if isinstance(found, EncodedEvent):
                        batch.append(found)
                        continue
                    event, error = found
                    invalid = InvalidEvent(-1, event, error)
                    result.invalid.append(invalid)
                    if on_batch is not None:
                        on_batch(BatchOutcome(-1, 1, invalid=[invalid]), result)
            return batch

        deliver(take, client, concurrency, result, on_batch, "togai-salvage", lock)
        if result.aborted is None:
            for _ in rows:  # the rest is counted (a refused token stops the reading)
                pass
        result.damage = image.damage
    return result


def finish(path: Path) -> Path | None:
    """After a salvage that gave every readable event a final outcome: rename the file
    (and its ``-wal``/``-shm``) to ``PATH.salvaged`` (``-<time>`` if taken), unchanged,
    so that it is not salvaged again. Returns the new name, or None if it is in use."""
    if in_use(path):
        return None
    target = path.with_name(f"{path.name}.salvaged")
    if any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = path.with_name(f"{path.name}.salvaged-{stamp}-{os.getpid()}")
    try:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{target}{suffix}")
    except OSError as exc:
        log.error("cannot rename %s to %s: %s", path, target, exc)
        return None
    return target
