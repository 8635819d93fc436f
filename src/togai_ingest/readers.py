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
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import os
import re
import sys
import uuid
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, NamedTuple

from dateutil import parser as dateutil_parser

from .errors import ValidationError
from .validation import to_wire

__all__ = [
    "FORMATS",
    "ID_NAMESPACE",
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


@dataclass(frozen=True, slots=True)
class Record:
    """One input record: ``event`` (valid, wire form) or ``problem`` (why it is invalid)."""

    source: str
    """``file:line`` of the record's first line."""
    end: Position
    """Where the next record starts."""
    event: dict[str, Any] | None = None
    problem: str | None = None
    raw: Any = None
    """What was read, for the rejected file: the object in wire form, or the line's text."""


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
        return dt.timezone(-delta if sign == "-" else delta)
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use UTC, +02:00 or e.g. Europe/Berlin)"
        ) from None


def _from_epoch(seconds: float) -> dt.datetime:
    if abs(seconds) >= _MILLISECONDS_FROM:
        seconds /= 1000.0
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


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
        return _from_epoch(float(value))
    text = value.strip()
    if _EPOCH.fullmatch(text):
        return _from_epoch(float(text))
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


def normalise_timestamp(value: object, zone: dt.tzinfo | None = None) -> str:
    """An RFC 3339 string as it is; anything else parsed and written as ISO 8601 with its
    offset. Raises ``ValueError`` (with the reason) for what cannot be read, and for a
    time without an offset when ``zone`` is None."""
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    return _parse_timestamp(value, zone).isoformat()


def _utc_instant(value: object) -> object:
    """The timestamp as a UTC instant for the id (the same instant, the same id)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    return parsed.astimezone(dt.UTC).isoformat() if parsed.tzinfo else value


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_NAMESPACE_BYTES = ID_NAMESPACE.bytes


def event_id(event: Mapping[str, Any]) -> str:
    """The content-derived id: UUIDv5 of the canonical JSON of ``event`` without its id
    (``str(uuid.uuid5(ID_NAMESPACE, canonical))``, computed without building a ``UUID``)."""
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
    """A parsed object -> a valid event (timestamp normalised, id derived) or a problem."""
    if not isinstance(read, dict):
        return Record(source, end, problem=f"must be a JSON object, not {_kind(read)}", raw=read)
    event = dict(read)
    if "eventTimestamp" in event:
        try:
            event["eventTimestamp"] = normalise_timestamp(event["eventTimestamp"], zone)
        except ValueError as error:
            return Record(source, end, problem=f"{where}.eventTimestamp: {error}", raw=read)
    if event.get("id") in (None, ""):
        event["id"] = event_id(event)
    try:
        wire = to_wire(event, where)
    except ValidationError as error:
        return Record(source, end, problem=str(error), raw=read)
    return Record(source, end, event=wire)


def _kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _is_kind(value: object) -> bool:
    return isinstance(value, str) and value in _ENVELOPE_KINDS


def _unwrap(read: object) -> tuple[object, str | None]:
    """A rejected file's envelope -> its ``event`` (parsed if it is a line's raw text)."""
    if not (isinstance(read, dict) and "event" in read and _is_kind(read.get("kind"))):
        return read, None
    inner = read["event"]
    if not isinstance(inner, str):
        return inner, None
    try:
        return json.loads(inner), None
    except ValueError as error:
        return inner, f"not JSON: {error}"


def _jsonl(
    stream: IO[bytes], name: str, start: Position, zone: dt.tzinfo | None
) -> Iterator[Record]:
    offset, line = start.offset, start.line
    for raw in stream:
        offset += len(raw)
        line += 1
        end = Position(start.file, offset, line)
        source = f"{name}:{line}"
        if line == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            text = raw.decode("utf-8", "replace").strip()
            yield Record(source, end, problem=f"not valid UTF-8: {error.reason}", raw=text)
            continue
        if not text:
            continue
        try:
            read: object = json.loads(text)
        except ValueError as error:
            yield Record(source, end, problem=f"not JSON: {error}", raw=text)
            continue
        read, problem = _unwrap(read)
        if problem is not None:
            yield Record(source, end, problem=problem, raw=read)
            continue
        yield _complete(read, source, end, zone, "event")


class _CsvLines:
    """Decoded lines for ``csv.reader``, counting bytes and lines as it hands them out."""

    def __init__(self, stream: IO[bytes], start: Position) -> None:
        self._stream = stream
        self.offset = start.offset
        self.line = start.line
        self.bad_utf8 = False

    def __iter__(self) -> Iterator[str]:
        for raw in self._stream:
            self.offset += len(raw)
            self.line += 1
            if self.line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_utf8 = True
                yield raw.decode("utf-8", "replace")


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
    counter = _CsvLines(stream, Position(start.file, 0, 0))
    lines = iter(counter)
    try:
        header = next(csv.reader(lines), None)
    except csv.Error as error:
        raise InputError(f"{name}:{counter.line}: {error}") from None
    if header is None:
        return
    plan = _CsvPlan.of(header, name)
    if start.offset > counter.offset:  # resuming: skip to where the last run got
        stream.seek(start.offset)
        counter = _CsvLines(stream, start)
        lines = iter(counter)
    rows = csv.reader(lines)
    while True:
        first_line = counter.line + 1
        try:
            row = next(rows, None)
        except csv.Error as error:
            raise InputError(f"{name}:{counter.line}: {error}") from None
        if row is None:
            return
        end = Position(start.file, counter.offset, counter.line)
        source = f"{name}:{first_line}"
        if counter.bad_utf8:
            counter.bad_utf8 = False
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
