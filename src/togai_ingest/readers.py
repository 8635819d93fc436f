"""Streaming readers for ``togai-ingest``: JSON Lines and CSV files -> validated wire events.

Each input record becomes one ``Record``: a valid event in wire form (camelCase, with its
``id``) or the reason it is invalid, with its ``file:line`` and the ``Position`` right after
it (where a resumed run starts reading). Generators all the way: memory does not grow with
the file.

- JSON Lines: one ``Event`` in wire form per line; blank lines are skipped. A line of a
  rejected file (``{"event": ..., "reason": ..., "kind": ..., "source": ...}``) is read as
  its ``event``, so a fixed rejected file can be sent again.
- CSV: a header with the fixed columns ``eventName,id,eventTimestamp,accountId`` (``id``
  optional), ``attr.<name>`` per attribute with an optional ``unit.<name>``, and
  ``dim.<name>`` per dimension. Empty cells are absent; an attribute with an empty value is
  left out (with its unit).
- Timestamps: RFC 3339 strings are kept as they are; other ISO 8601 and common forms are
  parsed (python-dateutil; US month/day order) and written as ISO 8601 with an offset; JSON
  numbers and 9 to 13 digit strings are Unix times (seconds, or milliseconds from 1e11). A
  timestamp without an offset is invalid unless a zone is assumed.
- Ids: an event without ``id`` gets a UUIDv5 of its content (canonical JSON without the id,
  with the timestamp as a UTC instant). Re-running a file yields the same ids, so Togai
  meters each event once; two identical records are one event.
- One record never stops a file: what cannot be read (not UTF-8, not JSON, nested too deep, a
  time out of range, a line over ``MAX_LINE_BYTES``, a CSV cell over the csv module's field
  limit, bad CSV quoting) is an invalid record with its line. A quoted CSV cell that is never
  closed is an error on the line where it was opened, and reading goes on from the next line.
  Only what spoils a whole input (it cannot be opened or read, a bad CSV header) raises
  ``InputError``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import math
import os
import re
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, NamedTuple

import orjson
from dateutil import parser as dateutil_parser

from .errors import ValidationError
from .validation import EncodedEvent, encode_event

__all__ = [
    "FORMATS",
    "ID_NAMESPACE",
    "MAX_LINE_BYTES",
    "START",
    "Format",
    "Input",
    "InputError",
    "Position",
    "Record",
    "event_id",
    "format_of",
    "is_regular_file",
    "normalise_timestamp",
    "parse_zone",
    "read_records",
]

Format = Literal["jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv")
STDIN = "-"

ID_NAMESPACE = uuid.UUID("5b0a3c1e-7d2f-5e8a-9c41-2f6d8e0b7a13")
"""Namespace of content-derived ids. Never change it: every derived id would change."""

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
_EPOCH = re.compile(r"-?\d{9,13}(?:\.\d+)?")
_OFFSET = re.compile(r"([+-])(\d\d):?(\d\d)")
_MILLISECONDS_FROM = 1e11
_FIXED_COLUMNS = ("eventName", "id", "eventTimestamp", "accountId")
_REQUIRED_COLUMNS = ("eventName", "eventTimestamp", "accountId")
_ENVELOPE_KINDS = frozenset({"rejected", "failed", "invalid"})
_BOM = b"\xef\xbb\xbf"

MAX_LINE_BYTES = 1024 * 1024
"""The longest line (JSON Lines) or CSV record read: longer ones are invalid records, read
past in pieces, so one huge line never holds more than this in memory. An event the API
accepts is a few KiB at most."""
_RAW_KEPT = 64 * 1024
"""Characters of an unreadable record's text kept for the rejected file."""


class InputError(Exception):
    """An input cannot be read as a whole (unreadable file, bad CSV header)."""


class Position(NamedTuple):
    """Where reading (re)starts: input number, byte offset in it, lines read before it."""

    file: int
    offset: int
    line: int


START = Position(0, 0, 0)


@dataclass(frozen=True, slots=True)
class Input:
    path: str
    """A file path, or ``-`` for standard input."""
    format: Format

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path


class Record(NamedTuple):
    """One input record: ``event`` (valid, wire form) or ``problem`` (why it is invalid).
    Immutable; a named tuple (a frozen dataclass costs as much to make as parsing the line)."""

    source: str
    """``file:line`` of the record's first line."""
    end: Position
    """Where the next record starts."""
    event: EncodedEvent | None = None
    """The valid event, validated and encoded (``event.wire()`` is its wire form)."""
    problem: str | None = None
    raw: Any = None
    """What was read, for the rejected file: the object in wire form, or the line's text."""


_new_tuple: Any = tuple.__new__
"""``_new_tuple(Position, (file, offset, line))`` is ``Position(file, offset, line)``
without the named tuple's ``__new__`` in Python (the same for ``Record``, every field given):
two of them per line of input."""


def format_of(path: str, explicit: Format | None) -> Format:
    """``explicit``, else ``csv`` for ``*.csv`` and ``jsonl`` for anything else (and stdin)."""
    if explicit is not None:
        return explicit
    return "csv" if path != STDIN and path.lower().endswith(".csv") else "jsonl"


# --- Time stamps and ids.


def parse_zone(name: str) -> dt.tzinfo:
    """``UTC``, a fixed offset (``+02:00``) or an IANA zone name (``Europe/Berlin``)."""
    if name.strip().upper() in ("UTC", "Z"):
        return dt.UTC
    if match := _OFFSET.fullmatch(name.strip()):
        sign, hours, minutes = match.groups()
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
        try:
            return dt.timezone(-delta if sign == "-" else delta)
        except ValueError:
            raise ValueError(f"offset {name!r} is not less than 24 hours") from None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (use UTC, +02:00 or e.g. Europe/Berlin)"
        ) from None


def _from_epoch(seconds: float, shown: object) -> dt.datetime:
    if not math.isfinite(seconds):
        raise ValueError(f"not a Unix time: {shown!r}")
    if abs(seconds) >= _MILLISECONDS_FROM:
        seconds /= 1000.0
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"Unix time {shown!r} is out of range (years 1 to 9999)") from None


def _with_dateutil(text: str) -> dt.datetime:
    """dateutil's reading of ``text``; an error if it lacks a date part or names an
    unknown zone (dateutil would fill the one from today and drop the other)."""
    first, second = dt.datetime(2000, 1, 1), dt.datetime(2001, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dateutil_parser.UnknownTimezoneWarning)
        try:
            parsed = dateutil_parser.parse(text, default=first)
            check = dateutil_parser.parse(text, default=second)
        except dateutil_parser.UnknownTimezoneWarning:
            raise ValueError(f"unknown time zone name in {text!r}; use a UTC offset") from None
        except (ValueError, OverflowError):
            raise ValueError(f"not a date-time: {text!r}") from None
    if parsed != check:
        raise ValueError(f"incomplete date-time (no full date): {text!r}")
    return parsed


def _parse_timestamp(value: object, zone: dt.tzinfo | None) -> dt.datetime:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if not isinstance(value, str):
        try:
            return _from_epoch(float(value), value)
        except OverflowError:  # an int too large for a float
            raise ValueError("Unix time out of range (years 1 to 9999)") from None
    text = value.strip()
    if _EPOCH.fullmatch(text):
        return _from_epoch(float(text), value)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        parsed = _with_dateutil(text)
    if parsed.tzinfo is None:
        if zone is None:
            raise ValueError(
                f"no UTC offset in {value!r}; add one (e.g. Z or +02:00) "
                "or pass --assume-timezone ZONE"
            )
        parsed = parsed.replace(tzinfo=zone)
    return parsed


def _in_utc(parsed: dt.datetime, shown: object) -> dt.datetime:
    """``parsed`` as UTC; ``ValueError`` when that leaves the years 1 to 9999 (9999-12-31
    at 23:00-05:00 is in the year 10000 in UTC: no event time, and no id can be derived)."""
    try:
        return parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{shown!r} is out of range in UTC (years 1 to 9999)") from None


def normalise_timestamp(value: object, zone: dt.tzinfo | None = None) -> str:
    """An RFC 3339 string as it is; anything else parsed and written as ISO 8601 with its
    offset. Raises ``ValueError`` (with the reason) for what cannot be read, for a time
    that is out of range in UTC, and for a time without an offset when ``zone`` is None."""
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        if value.startswith(("0001-", "9999-")):  # only these can leave the range in UTC
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                return value  # e.g. month 13: the document's date-time format names it
            _in_utc(parsed, value)
        return value
    parsed = _parse_timestamp(value, zone)
    _in_utc(parsed, value)
    return parsed.isoformat()


def _utc_instant(value: object) -> object:
    """The timestamp as a UTC instant for the id (the same instant, the same id)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value)
        return parsed.astimezone(dt.UTC).isoformat() if parsed.tzinfo else value
    except (ValueError, OverflowError):
        return value


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_NAMESPACE_BYTES = ID_NAMESPACE.bytes


def event_id(event: Mapping[str, Any]) -> str:
    """The content-derived id: UUIDv5 of the canonical JSON of ``event`` without its id
    (``str(uuid.uuid5(ID_NAMESPACE, canonical))``, computed without building a ``UUID``).
    Raises ``ValueError`` or ``RecursionError`` for content JSON cannot express."""
    content = {key: value for key, value in event.items() if key != "id"}
    if "eventTimestamp" in content:
        content["eventTimestamp"] = _utc_instant(content["eventTimestamp"])
    name = _canonical(content).encode("utf-8", "surrogatepass")
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- Records.


def _complete(
    read: object, source: str, end: Position, zone: dt.tzinfo | None, where: str
) -> Record:
    """A parsed object -> a valid event (timestamp normalised, id derived, validated and
    encoded) or a problem."""
    if not isinstance(read, dict):
        return Record(source, end, problem=f"must be a JSON object, not {_kind(read)}", raw=read)
    event = read  # copied before it is changed: ``read`` is what an invalid record shows
    if "eventTimestamp" in read:
        stamp = read["eventTimestamp"]
        try:
            normal = normalise_timestamp(stamp, zone)
        except ValueError as error:
            return Record(source, end, problem=f"{where}.eventTimestamp: {error}", raw=read)
        if normal is not stamp:
            event = dict(read)
            event["eventTimestamp"] = normal
    if event.get("id") in (None, ""):
        if event is read:
            event = dict(read)
        try:
            event["id"] = event_id(event)
        except RecursionError:
            return Record(source, end, problem=f"{where}: nested too deep", raw=read)
        except ValueError as error:
            return Record(source, end, problem=f"{where}: cannot derive an id: {error}", raw=read)
    try:
        encoded = encode_event(event, where)
    except ValidationError as error:
        return Record(source, end, problem=str(error), raw=read)
    record: Record = _new_tuple(Record, (source, end, encoded, None, None))  # Record(...)
    return record


def _kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _is_kind(value: object) -> bool:
    return isinstance(value, str) and value in _ENVELOPE_KINDS


_UNSURE = object()
_NESTED = 512
"""A line with more brackets than this is parsed by ``json`` (its depth limit is about the
recursion limit, orjson's 1024: only a line longer than this can reach either)."""
_DIGITS = bytes(0 if 0x30 <= byte <= 0x39 else 1 for byte in range(256))
"""``bytes.translate`` table: a digit -> 0, anything else -> 1."""
_LONG_NUMBER = bytes(19)
"""19 digits in a row: the shortest integer orjson may read as a float (below -2**63)."""


def _quick_json(raw: bytes) -> object:
    """``raw`` parsed by orjson (several times faster than ``json``) when that is certainly
    what ``json.loads`` gives; else ``_UNSURE`` (``_json`` parses it, with its messages).

    orjson refuses what ``json`` reads (NaN, lone surrogates, text around it that
    ``str.strip`` removes: then it is ``_UNSURE``), and reads an integer beyond 64 bits as a
    float, which would change the record (a line with 19 digits in a row is left to
    ``json``, as is one nested deep). Otherwise the two give equal objects."""
    if _LONG_NUMBER in raw.translate(_DIGITS):
        return _UNSURE
    if len(raw) > _NESTED and raw.count(b"[") + raw.count(b"{") > _NESTED:
        return _UNSURE
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNSURE


def _json(text: str) -> tuple[object, str | None]:
    """``text`` parsed, or why it is not JSON."""
    try:
        return json.loads(text), None
    except RecursionError:
        return text, "not JSON: nested too deep"
    except ValueError as error:
        return text, f"not JSON: {error}"


def _unwrap(read: object) -> tuple[object, str | None]:
    """A rejected file's envelope -> its ``event`` (parsed if it is a line's raw text)."""
    if not (isinstance(read, dict) and "event" in read and _is_kind(read.get("kind"))):
        return read, None
    inner = read["event"]
    if not isinstance(inner, str):
        return inner, None
    return _json(inner)


def _lines(stream: IO[bytes]) -> Iterator[tuple[bytes | None, int]]:
    """``(line, size)`` for every line of ``stream``; ``line`` is None for a line longer than
    ``MAX_LINE_BYTES``, which is read past in pieces (``size`` counts all of it)."""
    readline = stream.readline
    while raw := readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        size = len(raw)
        while raw and not raw.endswith(b"\n"):
            raw = readline(64 * 1024)
            size += len(raw)
        yield None, size


def _too_long(size: int) -> str:
    return f"longer than {MAX_LINE_BYTES:,} bytes ({size:,} bytes)"


def _jsonl(
    stream: IO[bytes], name: str, start: Position, zone: dt.tzinfo | None
) -> Iterator[Record]:
    offset, line = start.offset, start.line
    for raw, size in _lines(stream):
        offset += size
        line += 1
        end = _new_tuple(Position, (start.file, offset, line))  # Position(...), faster
        source = f"{name}:{line}"
        if raw is None:
            yield Record(source, end, problem=f"the line is {_too_long(size)}")
            continue
        if line == 1:
            raw = raw.removeprefix(_BOM)
        read: object = _quick_json(raw)
        problem = None
        if read is _UNSURE:
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                text = raw.decode("utf-8", "replace").strip()
                reason = f"not valid UTF-8: {error.reason} at byte {error.start + 1}"
                yield Record(source, end, problem=reason, raw=text)
                continue
            if not text:
                continue
            read, problem = _json(text)
        if problem is None:
            read, problem = _unwrap(read)
        if problem is not None:
            yield Record(source, end, problem=problem, raw=read)
            continue
        yield _complete(read, source, end, zone, "event")


class _TooLong(Exception):
    """A CSV line or record over ``MAX_LINE_BYTES``: raised through ``csv.reader``."""


class _CsvLines:
    """Decoded lines for ``csv.reader``, counting bytes and lines as it hands them out, and
    keeping the raw lines of the record being read (at most ``MAX_LINE_BYTES``) so that it
    can be read again from its second line (``again``) when it turns out to be broken."""

    def __init__(self, stream: IO[bytes], start: Position) -> None:
        self._source = _lines(stream)
        self._again: deque[tuple[bytes | None, int]] = deque()
        self.offset = start.offset
        self.line = start.line
        self.first = (self.offset, self.line)
        self.record: list[tuple[bytes | None, int]] = []
        self.record_size = 0
        self.bad_utf8 = False
        self.at_end = False
        self.problem = ""

    def begin(self) -> None:
        """A new record starts with the next line."""
        self.first = (self.offset, self.line)
        self.record.clear()
        self.record_size = 0
        self.bad_utf8 = False
        self.at_end = False

    def again(self) -> None:
        """Read the current record's lines after its first one again; the counts go back to
        the end of its first line."""
        self._again.extendleft(reversed(self.record[1:]))
        self.offset, self.line = self.first[0] + self.record[0][1], self.first[1] + 1
        del self.record[1:]

    def text(self) -> str:
        """The current record's text (shortened), for the rejected file."""
        kept = b"".join(raw for raw, _ in self.record if raw is not None)[:_RAW_KEPT]
        return kept.decode("utf-8", "replace").rstrip("\r\n")

    def __iter__(self) -> Iterator[str]:
        while True:
            if self._again:
                raw, size = self._again.popleft()
            else:
                item = next(self._source, None)
                if item is None:
                    self.at_end = True
                    return
                raw, size = item
            self.offset += size
            self.line += 1
            self.record.append((raw, size))
            self.record_size += size
            if raw is None:
                raise _TooLong(f"the line is {_too_long(size)}")
            if self.record_size > MAX_LINE_BYTES:
                raise _TooLong(f"the record is {_too_long(self.record_size)}")
            if self.line == 1:
                raw = raw.removeprefix(_BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_utf8 = True
                yield raw.decode("utf-8", "replace")


def _csv_reader(lines: _CsvLines) -> Iterator[list[str]]:
    # strict: a quote that is never closed is an error at the end of the file (not a last
    # row holding the rest of the file), and so is a stray quote after a closing one (an
    # unclosed quote running into the next quoted cell, instead of merging the rows).
    return csv.reader(iter(lines), strict=True)


def _csv_problem(error: Exception, lines: _CsvLines) -> str:
    """What a ``csv.Error`` or ``_TooLong`` means for the record being read."""
    spans = len(lines.record) > 1
    if lines.at_end:
        problem = "a quoted cell opened here is never closed (the file ends inside it)"
        return problem + ("; the lines after this one are read as rows" if spans else "")
    if isinstance(error, _TooLong):
        what = str(error)
    elif "field larger than field limit" in str(error):
        what = f"a cell is longer than {csv.field_size_limit():,} characters"
    else:
        what = f"bad CSV quoting: {error} (a quote inside a quoted cell is written twice)"
    if not spans:
        return what
    return (
        f"is a quote opened here left unclosed? the record runs to line {lines.line}, where "
        f"{what}; the lines after this one are read as rows"
    )


def _csv_records(
    lines: _CsvLines, name: str, file: int
) -> Iterator[tuple[str, Position, list[str] | None, str]]:
    """``(source, end, row, text)`` for every record: its cells, or (``row`` None) its text
    and, in ``lines.problem``, why it cannot be read. A broken record that spans lines (an
    unclosed quote swallowing the rows after it) is a problem on its first line, and reading
    goes on from its second line."""
    rows = _csv_reader(lines)
    while True:
        lines.begin()
        source = f"{name}:{lines.line + 1}"
        try:
            row = next(rows, None)
        except (csv.Error, _TooLong) as error:
            lines.problem = _csv_problem(error, lines)
            if len(lines.record) > 1:
                text = lines.text().partition("\n")[0]
                lines.again()
            else:
                text = lines.text()
            rows = _csv_reader(lines)  # a fresh reader: nothing of the broken record is left
            yield source, Position(file, lines.offset, lines.line), None, text
            continue
        if row is None:
            return
        yield source, Position(file, lines.offset, lines.line), row, ""


@dataclass(frozen=True, slots=True)
class _CsvPlan:
    """Which column holds what, from the header."""

    fixed: tuple[tuple[str, int], ...]
    attributes: tuple[tuple[str, int, int | None], ...]
    dimensions: tuple[tuple[str, int], ...]
    width: int

    @classmethod
    def of(cls, header: list[str], name: str) -> _CsvPlan:
        columns = [column.strip() for column in header]
        seen: set[str] = set()
        fixed: list[tuple[str, int]] = []
        dimensions: list[tuple[str, int]] = []
        values: dict[str, int] = {}
        units: dict[str, int] = {}
        for index, column in enumerate(columns):
            if column in seen:
                raise InputError(f"{name}: column {column!r} appears twice in the header")
            seen.add(column)
            prefix, dot, rest = column.partition(".")
            if column in _FIXED_COLUMNS:
                fixed.append((column, index))
            elif dot and rest and prefix in ("attr", "unit", "dim"):
                target = {"attr": values, "unit": units}.get(prefix)
                if target is None:
                    dimensions.append((rest, index))
                else:
                    target[rest] = index
            else:
                raise InputError(
                    f"{name}: unknown column {column!r}; the header has "
                    f"{', '.join(_FIXED_COLUMNS)} (id optional), attr.<name>, "
                    "unit.<name> and dim.<name> columns"
                )
        missing = [column for column in _REQUIRED_COLUMNS if column not in seen]
        if missing:
            raise InputError(f"{name}: the header has no {', '.join(missing)} column")
        stray = sorted(set(units) - set(values))
        if stray:
            raise InputError(f"{name}: unit.{stray[0]} has no attr.{stray[0]} column")
        attributes = tuple((n, i, units.get(n)) for n, i in values.items())
        return cls(tuple(fixed), attributes, tuple(dimensions), len(columns))

    def event(self, row: list[str]) -> dict[str, Any]:
        """The row in wire form; empty cells are absent."""
        cell = row.__getitem__ if len(row) >= self.width else _padded(row, self.width)
        event: dict[str, Any] = {key: cell(i) for key, i in self.fixed if cell(i)}
        attributes = []
        for attr_name, value_at, unit_at in self.attributes:
            if value := cell(value_at):
                attribute = {"attributeName": attr_name, "attributeValue": value}
                if unit_at is not None and (unit := cell(unit_at)):
                    attribute["attributeValueUnit"] = unit
                attributes.append(attribute)
        event["eventAttributes"] = attributes
        event["dimensions"] = {key: cell(i) for key, i in self.dimensions if cell(i)}
        return event


def _padded(row: list[str], width: int) -> Any:
    padded = row + [""] * (width - len(row))
    return padded.__getitem__


def _csv(stream: IO[bytes], name: str, start: Position, zone: dt.tzinfo | None) -> Iterator[Record]:
    lines = _CsvLines(stream, Position(start.file, 0, 0))
    header = next(_csv_records(lines, name, start.file), None)
    if header is None:
        return
    source, _, columns, _ = header
    if columns is None:
        raise InputError(f"{source}: the header cannot be read: {lines.problem}")
    plan = _CsvPlan.of(columns, name)
    if start.offset > lines.offset:  # resuming: skip to where the last run got
        stream.seek(start.offset)
        lines = _CsvLines(stream, start)
    for source, end, row, text in _csv_records(lines, name, start.file):
        if row is None:
            yield Record(source, end, problem=lines.problem, raw=text)
        elif lines.bad_utf8:
            yield Record(source, end, problem="not valid UTF-8", raw=",".join(row))
        elif len(row) > plan.width:
            problem = f"the row has {len(row)} cells, the header {plan.width}"
            yield Record(source, end, problem=problem, raw=",".join(row))
        elif row:
            yield _complete(plan.event(row), source, end, zone, "event")


@contextlib.contextmanager
def _opened(item: Input) -> Iterator[IO[bytes]]:
    """The input's bytes; standard input is left open."""
    if item.path == STDIN:
        yield sys.stdin.buffer
        return
    try:
        stream = open(item.path, "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        raise InputError(f"{item.name}: {error.strerror or error}") from None
    with stream:
        yield stream


def read_records(
    inputs: Iterable[Input],
    *,
    zone: dt.tzinfo | None = None,
    start: Position = START,
) -> Generator[Record, None, None]:
    """Every record of ``inputs`` in order, from ``start`` on. Raises ``InputError``."""
    for number, item in enumerate(inputs):
        if number < start.file:
            continue
        here = start if number == start.file else Position(number, 0, 0)
        with _opened(item) as stream:
            try:
                if item.format == "jsonl" and here.offset:
                    stream.seek(here.offset)
                read = _csv if item.format == "csv" else _jsonl
                yield from read(stream, item.name, here, zone)
            except OSError as error:
                raise InputError(f"{item.name}: {error.strerror or error}") from None


def is_regular_file(path: str) -> bool:
    """A file whose size means something (not stdin, a pipe or a device)."""
    if path == STDIN:
        return False
    try:
        return os.path.isfile(path)
    except OSError:
        return False
