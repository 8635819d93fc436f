"""``togai_ingest.readers``, in process (the checkpoint and the watermark: test_checkpoint.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import openapi
from tests.cli import event, wire, write_jsonl
from togai_ingest.readers import (
    ID_NAMESPACE,
    Input,
    InputError,
    Position,
    Record,
    event_id,
    normalise_timestamp,
    parse_zone,
    read_records,
)


def records(path: Path, fmt: str = "jsonl", **kwargs: Any) -> list[Record]:
    return list(read_records([Input(str(path), "csv" if fmt == "csv" else "jsonl")], **kwargs))


# --- JSON Lines


def test_jsonl_valid_events_keep_their_id_and_get_a_derived_one_otherwise(tmp_path: Path) -> None:
    with_id = event(1, id="evt-1")
    path = write_jsonl(tmp_path / "e.jsonl", [with_id, event(2)])
    first, second = records(path)
    assert wire(first) == with_id and first.source == f"{path}:1"
    assert second.event is not None and wire(second)["id"] == event_id(event(2))
    assert {k: v for k, v in wire(second).items() if k != "id"} == event(2)


def test_jsonl_blank_lines_bom_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(event(1)).encode()
        + b"\n\n  \r\n"
        + json.dumps(event(2)).encode()
    )
    found = records(path)
    assert [r.source.rsplit(":", 1)[1] for r in found] == ["1", "4"]
    assert all(r.event is not None for r in found)
    assert found[-1].end == Position(0, path.stat().st_size, 4)


def test_jsonl_lines_that_are_no_event_are_problems_with_their_text(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"eventName": "cut sho\n[1, 2]\n\xff\xfe{}\n')
    cut, array, binary = records(path)
    assert cut.event is None and cut.problem is not None and cut.problem.startswith("not JSON")
    assert cut.raw == '{"eventName": "cut sho'
    assert array.problem == "must be a JSON object, not an array"
    assert binary.problem is not None and binary.problem.startswith("not valid UTF-8")


def test_jsonl_schema_problems_name_the_path_and_limit(tmp_path: Path) -> None:
    max_value = openapi.limit("EventAttribute", "attributeValue", "maxLength")
    long_value = event(1)
    long_value["eventAttributes"][0]["attributeValue"] = "x" * (max_value + 1)
    path = write_jsonl(
        tmp_path / "e.jsonl", [long_value, event(2, accountId=None), event(3, userId="u1")]
    )
    problems = [r.problem for r in records(path)]
    allowed = ", ".join(openapi.properties("Event"))
    assert problems == [
        f"event.eventAttributes[0].attributeValue: longer than {max_value} characters",
        "event.accountId: required property is missing",
        f"event.userId: unknown property (allowed: {allowed})",
    ]
    assert records(path)[1].raw == event(2, accountId=None)  # as read: no derived id


def test_a_rejected_file_envelope_is_read_as_its_event(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "rejected.jsonl",
        [
            {"kind": "rejected", "source": "a:1", "reason": "no", "event": event(1, id="e1")},
            {
                "kind": "invalid",
                "source": "a:2",
                "reason": "not JSON",
                "event": json.dumps(event(2)),
            },
            {"kind": "invalid", "source": "a:3", "reason": "not JSON", "event": "{still broken"},
        ],
    )
    first, second, third = records(path)
    assert wire(first) == event(1, id="e1")
    assert second.event is not None and wire(second)["eventName"] == "apiCall"
    assert third.problem is not None and third.problem.startswith("not JSON")
    assert third.raw == "{still broken"


# --- CSV

CSV_HEADER = "eventName,id,eventTimestamp,accountId,attr.calls,unit.calls,attr.bytes,dim.region\n"


def test_csv_header_convention_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        CSV_HEADER
        + "apiCall,e1,2024-05-01T10:00:00Z,a1,3,Count,100,eu\n"
        + 'apiCall,,2024-05-01T10:00:00Z,a2,,Count,"1,024",\n',
        encoding="utf-8",
    )
    first, second = records(path, "csv")
    assert wire(first) == {
        "eventName": "apiCall",
        "id": "e1",
        "eventTimestamp": "2024-05-01T10:00:00Z",
        "accountId": "a1",
        "eventAttributes": [
            {"attributeName": "calls", "attributeValue": "3", "attributeValueUnit": "Count"},
            {"attributeName": "bytes", "attributeValue": "100"},
        ],
        "dimensions": {"region": "eu"},
    }
    assert second.event is not None
    assert wire(second)["eventAttributes"] == [
        {"attributeName": "bytes", "attributeValue": "1,024"}
    ]
    assert wire(second)["dimensions"] == {}
    assert wire(second)["id"] == event_id({k: v for k, v in wire(second).items() if k != "id"})


def test_csv_rows_spanning_lines_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        CSV_HEADER
        + 'apiCall,,2024-05-01T10:00:00Z,a1,1,,,"multi\nline"\n'
        + "apiCall,,2024-05-01T10:00:00Z,,1,,,eu\n"
        + "apiCall,,2024-05-01T10:00:00Z,a1,1,,,eu,extra\n",
        encoding="utf-8",
    )
    multi, missing, wide = records(path, "csv")
    assert multi.source.endswith(":2") and multi.end.line == 3
    assert multi.event is not None and wire(multi)["dimensions"] == {"region": "multi\nline"}
    assert missing.source.endswith(":4") and missing.problem == (
        "event.accountId: required property is missing"
    )
    assert wide.problem == "the row has 9 cells, the header 8"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("eventName,eventTimestamp,accountId,colour", "unknown column 'colour'"),
        ("eventName,eventTimestamp,attr.a", "no accountId column"),
        ("eventName,eventTimestamp,accountId,unit.a", "unit.a has no attr.a column"),
        ("eventName,eventTimestamp,accountId,dim.a,dim.a", "'dim.a' appears twice"),
    ],
)
def test_csv_header_problems_stop_the_file(tmp_path: Path, header: str, message: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(header + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        records(path, "csv")


# --- Time stamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),  # RFC 3339: as it is
        ("2024-05-01T12:00:00.123456789+02:00", "2024-05-01T12:00:00.123456789+02:00"),
        ("2024-05-01 12:00:00+02:00", "2024-05-01T12:00:00+02:00"),
        ("2024-05-01T10:00Z", "2024-05-01T10:00:00+00:00"),
        ("May 1 2024 10:00 UTC", "2024-05-01T10:00:00+00:00"),
        ("Wed, 01 May 2024 10:00:00 GMT", "2024-05-01T10:00:00+00:00"),
        ("05/01/2024 10:00:00 -0500", "2024-05-01T10:00:00-05:00"),
        (1714557600, "2024-05-01T10:00:00+00:00"),
        ("1714557600000", "2024-05-01T10:00:00+00:00"),
        (1714557600.5, "2024-05-01T10:00:00.500000+00:00"),
    ],
)
def test_timestamps_are_normalised_to_iso_8601_with_an_offset(value: object, expected: str) -> None:
    assert normalise_timestamp(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-05-01 10:00:00", "no UTC offset"),
        ("2024-05-01", "no UTC offset"),
        ("10:00", "incomplete date-time"),
        ("2024-03-01 12:00 PST", "unknown time zone name"),
        ("yesterday-ish", "not a date-time"),
        (True, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_unreadable_and_naive_timestamps_are_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_timestamp(value)


def test_naive_timestamps_take_the_assumed_zone() -> None:
    berlin = parse_zone("Europe/Berlin")
    assert normalise_timestamp("2024-05-01 10:00:00", berlin) == "2024-05-01T10:00:00+02:00"
    assert normalise_timestamp("2024-01-01T10:00:00", berlin) == "2024-01-01T10:00:00+01:00"
    assert normalise_timestamp("2024-05-01 10:00", parse_zone("UTC")) == "2024-05-01T10:00:00+00:00"
    assert normalise_timestamp("2024-05-01T10:00:00+00:00", berlin) == "2024-05-01T10:00:00+00:00"


def test_parse_zone() -> None:
    assert parse_zone("utc") is dt.UTC
    assert parse_zone("+05:30").utcoffset(None) == dt.timedelta(hours=5, minutes=30)
    assert parse_zone("-0800").utcoffset(None) == dt.timedelta(hours=-8)
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_zone("Mars/Olympus_Mons")


# --- Ids


PINNED = {
    "eventName": "apiCall",
    "eventTimestamp": "2024-05-01T12:00:00+02:00",
    "accountId": "acct-1",
    "eventAttributes": [{"attributeName": "requests", "attributeValue": "1"}],
    "dimensions": {"region": "eu-west-1"},
}


def test_event_id_is_a_uuid5_of_the_canonical_content() -> None:
    canonical = (
        '{"accountId":"acct-1","dimensions":{"region":"eu-west-1"},"eventAttributes":'
        '[{"attributeName":"requests","attributeValue":"1"}],"eventName":"apiCall",'
        '"eventTimestamp":"2024-05-01T10:00:00+00:00"}'
    )
    assert event_id(PINNED) == str(uuid.uuid5(ID_NAMESPACE, canonical))
    # Pinned: changing the namespace or the canonical form changes every id ever derived.
    assert event_id(PINNED) == "7be6db5f-5f74-514a-a6dc-84df64cced86"


def test_event_id_depends_on_content_not_on_spelling() -> None:
    content = event(7)
    reordered = dict(reversed(list(content.items())))
    same_instant = {**content, "eventTimestamp": "2024-05-01T02:00:07+02:00"}
    assert event_id(content) == event_id(reordered) == event_id(same_instant)
    assert event_id(content) == event_id({**content, "id": "ignored"})
    assert event_id(content) != event_id(event(7, accountId="other"))
    assert event_id(content) != event_id({**content, "eventTimestamp": "2024-05-01T00:00:08Z"})


def test_identical_records_get_the_same_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1), event(1)])
    first, second = records(path)
    assert first.event is not None and second.event is not None
    assert wire(first)["id"] == wire(second)["id"]


# --- Positions and resuming


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_reading_from_a_records_end_yields_the_rest(tmp_path: Path, fmt: str) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", [event(n) for n in range(5)])
    csv_path = tmp_path / "b.csv"
    csv_path.write_text(
        CSV_HEADER + "".join(f"apiCall,,2024-05-01T10:00:0{n}Z,a,{n},,,\n" for n in range(5)),
        encoding="utf-8",
    )
    path = jsonl if fmt == "jsonl" else csv_path
    inputs = [Input(str(path), "csv" if fmt == "csv" else "jsonl"), Input(str(jsonl), "jsonl")]
    everything = list(read_records(inputs))
    for cut in range(len(everything)):
        rest = list(read_records(inputs, start=everything[cut].end))
        assert rest == everything[cut + 1 :]


def test_csv_rows_with_bytes_that_are_not_utf8_are_problems(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(
        CSV_HEADER.encode() + b"apiCall,,2024-05-01T10:00:00Z,a1,1,,,Z\xfcrich\n"
        b"apiCall,,2024-05-01T10:00:00Z,a1,1,,,Zurich\n"
    )
    bad, good = records(path, "csv")
    assert bad.problem == "not valid UTF-8" and bad.source.endswith(":2")
    assert good.event is not None and wire(good)["dimensions"] == {"region": "Zurich"}


def test_only_a_real_envelope_is_unwrapped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [{"event": event(1), "kind": ["rejected"]}])
    (record,) = records(path)
    assert record.problem == "event.eventName: required property is missing"
