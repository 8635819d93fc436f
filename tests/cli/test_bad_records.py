"""One record never stops a run: whatever a line holds, it is one valid or invalid record with
its ``file:line`` and a reason, and reading goes on.

The members of the class found so far: JSON Lines timestamps ``1e20``, ``Infinity``,
``-1e300``, ``NaN``, a year-9999 time whose offset leaves the years 1-9999 in UTC (no id, so
deriving one converts it), a line nested 100,000 deep, a lone surrogate escape, bytes that are
not UTF-8, a line over ``MAX_LINE_BYTES``, and a CSV cell over the csv module's field limit.
Each used to stop the whole backfill (some with a raw traceback), and every resume stopped on
the same line.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cli import event, invoke, read_jsonl, wire, write_jsonl
from tests.faultserver import FaultServer
from togai_ingest.readers import MAX_LINE_BYTES, Input, Record, normalise_timestamp, read_records

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None)


def read(path: Path, fmt: str = "jsonl") -> list[Record]:
    return list(read_records([Input(str(path), "csv" if fmt == "csv" else "jsonl")]))


def _with_timestamp(raw: str) -> str:
    """An event line without an id whose eventTimestamp is the JSON text ``raw``."""
    line = json.dumps(event(1, eventTimestamp="T"))
    return line.replace('"T"', raw)


BAD_TIMESTAMPS = [
    ("1e20", "out of range"),
    ("-1e300", "out of range"),
    ("Infinity", "not a Unix time"),
    ("-Infinity", "not a Unix time"),
    ("NaN", "not a Unix time"),
    ("1e400", "not a Unix time"),
    ("1" + "0" * 400, "out of range"),
    ('"9999-12-31T23:00:00-05:00"', "out of range in UTC"),
    ('"0001-01-01T00:00:00+05:00"', "out of range in UTC"),
    ('"9999-12-31 23:30 -0100"', "out of range in UTC"),
    ('"99999999999999999999"', "not a date-time"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_TIMESTAMPS)
def test_timestamps_out_of_range_are_invalid_records(tmp_path: Path, raw: str, reason: str) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(0), _with_timestamp(raw), event(2)])
    first, bad, last = read(path)
    assert first.event is not None and last.event is not None
    assert bad.source == f"{path}:2" and bad.event is None
    assert bad.problem is not None and bad.problem.startswith("event.eventTimestamp: ")
    assert reason in bad.problem, bad.problem


def test_an_id_does_not_let_an_out_of_range_time_through(tmp_path: Path) -> None:
    stamp = "9999-12-31T23:00:00-05:00"
    path = write_jsonl(tmp_path / "e.jsonl", [event(1, id="e1", eventTimestamp=stamp)])
    (record,) = read(path)
    assert record.problem == f"event.eventTimestamp: {stamp!r} is out of range in UTC " + (
        "(years 1 to 9999)"
    )


def test_lines_that_cannot_be_read_as_events(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    surrogate = json.dumps(event(2)).replace('"eu-west-1"', '"eu\\ud800"')
    deep_inside = event(3, dimensions={"a": "b"})
    deep_text = json.dumps(deep_inside).replace('"b"', "[" * 600 + "]" * 600)
    lines: list[str | bytes] = [
        json.dumps(event(1)).encode(),
        "[" * 100_000 + "]" * 100_000,
        surrogate,
        b'{"eventName": "caf\xe9"}',
        deep_text,
        b"x" * (MAX_LINE_BYTES + 10),
        json.dumps(event(7)),
    ]
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    records = read(path)
    assert [r.source for r in records] == [f"{path}:{n}" for n in range(1, 8)]
    assert [r.event is not None for r in records] == [True, False, False, False, False, False, True]
    problems = [r.problem or "" for r in records[1:6]]
    assert problems[0] == "not JSON: nested too deep"
    assert problems[1].startswith("event.dimensions.region: cannot be encoded as JSON")
    assert problems[2] == "not valid UTF-8: invalid continuation byte at byte 19"
    assert problems[3].startswith("event")  # the validator names it
    assert problems[4] == f"the line is longer than {MAX_LINE_BYTES:,} bytes " + (
        f"({MAX_LINE_BYTES + 11:,} bytes)"
    )
    assert records[-1].end.offset == path.stat().st_size


def test_a_csv_cell_over_the_field_limit_is_one_invalid_row(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    header = "eventName,eventTimestamp,accountId,dim.note\n"
    huge = "x" * 200_000
    path.write_text(
        header
        + f"apiCall,2024-05-01T10:00:00Z,a,{huge}\n"
        + f'apiCall,2024-05-01T10:00:01Z,a,"{huge}"\n'
        + "apiCall,2024-05-01T10:00:02Z,a,fine\n"
        + "apiCall,2024-05-01T10:00:03Z,a,"
        + "y" * (MAX_LINE_BYTES + 1)
        + "\n"
        + "apiCall,2024-05-01T10:00:04Z,a,fine\n"
    )
    records = read(path, "csv")
    assert [(r.source.rsplit(":", 1)[1], r.event is not None) for r in records] == [
        ("2", False),
        ("3", False),
        ("4", True),
        ("5", False),
        ("6", True),
    ]
    assert records[0].problem == "a cell is longer than 131,072 characters"
    assert records[1].problem == "a cell is longer than 131,072 characters"
    assert records[3].problem is not None and records[3].problem.startswith("the line is longer")
    assert wire(records[4])["dimensions"] == {"note": "fine"}


def test_send_goes_on_past_every_bad_record_and_a_resume_does_not_stop(tmp_path: Path) -> None:
    bad: list[str | dict[str, Any]] = [_with_timestamp(raw) for raw, _ in BAD_TIMESTAMPS]
    bad += ["[" * 100_000 + "]" * 100_000, json.dumps(event(99)).replace("eu-west-1", "\\udc80")]
    lines: list[str | dict[str, Any]] = []
    for n, line in enumerate(bad):
        lines += [event(n), line]
    path = write_jsonl(tmp_path / "e.jsonl", [*lines, event(1000)])
    rejected, checkpoint = tmp_path / "rejected.jsonl", tmp_path / "ck.json"
    args = ("--rejected", rejected, "--checkpoint", checkpoint, "--rate-limit", "0")
    with FaultServer() as server:
        result = invoke("send", path, "--base-url", server.url, *args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.stderr
        good = len(bad) + 1
        assert f"summary: {good} accepted, 0 rejected, 0 failed, {len(bad)} invalid;" in (
            result.stdout
        )
        assert len(server.ledger) == good
        sources = [entry["source"] for entry in read_jsonl(rejected)]
        assert sources == [f"{path}:{2 * n + 2}" for n in range(len(bad))]
        saved = json.loads(checkpoint.read_text(encoding="utf-8"))["position"]
        assert saved["line"] == len(lines) + 1

        again = invoke("send", path, "--base-url", server.url, *args)
        assert again.exit_code == 0, again.output
        assert f"resuming after {path}:{len(lines) + 1}" in again.stderr
        assert len(server.requests) == 1  # nothing more was sent


_TIMESTAMPS = st.one_of(
    st.floats(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=40),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.builds(
        lambda d, h, m: f"{d.isoformat()}{'+' if h >= 0 else '-'}{abs(h):02d}:{m:02d}",
        st.datetimes(min_value=dt.datetime(9999, 12, 31), max_value=dt.datetime(9999, 12, 31, 23)),
        st.integers(-23, 23),
        st.integers(0, 59),
    ),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@PROPERTY
@given(value=_TIMESTAMPS)
def test_a_timestamp_is_normalised_or_a_value_error(value: object) -> None:
    try:
        text = normalise_timestamp(value, dt.UTC)
    except ValueError as error:
        assert str(error)
        return
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.tzinfo is not None
    parsed.astimezone(dt.UTC)  # representable in UTC


def _blank(line: bytes, first: bool) -> bool:
    if first:
        line = line.removeprefix(b"\xef\xbb\xbf")
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


_LINE = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=60).map(lambda t: t.replace("\n", "").encode("utf-8", "surrogatepass")),
    _TIMESTAMPS.map(lambda v: json.dumps(event(1, eventTimestamp=v)).encode()),
    st.sampled_from([b"NaN", b"[]", b"{}", b'"x"', b"1e999", b'{"event": 1, "kind": "failed"}']),
)


@PROPERTY
@given(lines=st.lists(_LINE, max_size=8))
def test_every_jsonl_line_is_one_record_with_its_line_number(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    path = tmp_path_factory.mktemp("l") / "e.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    records = read(path)
    expected = [n for n, line in enumerate(lines, 1) if not _blank(line, n == 1)]
    assert [r.source for r in records] == [f"{path}:{n}" for n in expected]
    for record in records:
        assert (record.event is None) != (record.problem is None)
        assert record.problem is None or re.match(r"\S", record.problem)
    for record, line in zip(records, expected, strict=True):
        assert record.end.line == line
        assert record.end.offset == sum(len(raw) + 1 for raw in lines[:line])
