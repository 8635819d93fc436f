"""CSV quoting: an unterminated quoted cell is an error on the line where it was opened.

csv.reader, left to itself, lets an unclosed quote swallow every row after it into one cell
(``strict=False`` even returns it as a row at the end of the file), so ``validate`` said
"all valid" and the rows were never sent. Now the record is invalid, named by its first
line, and the lines after it are read as rows again; a quoted cell that legitimately spans
lines still works.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli import invoke, wire
from togai_ingest.readers import Input, InputError, Position, Record, read_records

HEADER = "eventName,eventTimestamp,accountId,dim.company\n"


def row(n: int, company: str = "eu") -> str:
    return f"apiCall,2024-05-01T10:00:{n:02d}Z,acct-{n},{company}\n"


def read(path: Path, start: Position | None = None) -> list[Record]:
    inputs = [Input(str(path), "csv")]
    return list(read_records(inputs) if start is None else read_records(inputs, start=start))


def lines_of(records: list[Record]) -> list[tuple[int, bool]]:
    """(line, valid) of each record."""
    return [(int(r.source.rsplit(":", 1)[1]), r.event is not None) for r in records]


def test_an_unclosed_quote_at_the_end_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    broken_line = 'apiCall,2024-05-01T10:00:02Z,a,"Acme, Inc\n'
    path.write_text(HEADER + row(1) + broken_line + row(3) + row(4))
    records = read(path)
    assert lines_of(records) == [(2, True), (3, False), (4, True), (5, True)]
    broken = records[1]
    assert broken.problem is not None and "never closed" in broken.problem
    assert broken.raw == broken_line.rstrip("\n")
    assert broken.end == Position(0, len(HEADER + row(1) + broken_line), 3)
    assert [wire(r)["accountId"] for r in records if r.event] == ["acct-1", "acct-3", "acct-4"]


def test_an_unclosed_quote_running_into_the_next_quoted_cell(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        HEADER + 'apiCall,2024-05-01T10:00:01Z,a,"Acme, Inc\n' + row(2, '"eu"') + row(3)
    )
    records = read(path)
    assert lines_of(records) == [(2, False), (3, True), (4, True)]
    assert records[0].problem is not None and "left unclosed" in records[0].problem
    assert "the record runs to line 3" in records[0].problem
    assert wire(records[1])["dimensions"] == {"company": "eu"}


def test_an_unclosed_quote_followed_by_more_than_the_cell_limit(tmp_path: Path) -> None:
    rows = [row(n % 60) for n in range(3, 4000)]  # ~170 KiB after the quote
    path = tmp_path / "e.csv"
    path.write_text(HEADER + row(1) + 'apiCall,2024-05-01T10:00:02Z,a,"Acme\n' + "".join(rows))
    records = read(path)
    assert len(records) == 2 + len(rows)
    assert lines_of(records)[:3] == [(2, True), (3, False), (4, True)]
    assert records[1].problem is not None and "left unclosed" in records[1].problem
    assert all(r.event is not None for r in records[2:])
    assert records[-1].source.endswith(f":{len(rows) + 3}")


def test_quoted_cells_spanning_lines_and_doubled_quotes_still_work(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        HEADER
        + 'apiCall,2024-05-01T10:00:01Z,a,"Acme, ""Inc""\nsecond line\n"\n'
        + row(5)
        + 'apiCall,2024-05-01T10:00:06Z,b,"one\r\ntwo"\r\n'
        + row(8)
    )
    records = read(path)
    assert lines_of(records) == [(2, True), (5, True), (6, True), (8, True)]
    assert wire(records[0])["dimensions"] == {"company": 'Acme, "Inc"\nsecond line\n'}
    assert records[0].end.line == 4
    assert wire(records[2])["dimensions"] == {"company": "one\r\ntwo"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('apiCall,2024-05-01T10:00:01Z,a,"eu"rope\n', "bad CSV quoting"),
        ("apiCall,2024-05-01T10:00:01Z,a,e\ru\n", "bad CSV quoting"),
        ('apiCall,2024-05-01T10:00:01Z,a,"' + "x" * 140_000 + "\n", "a cell is longer than"),
    ],
)
def test_a_badly_quoted_line_is_one_invalid_record(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(HEADER + line + row(3), newline="")
    records = read(path)
    assert lines_of(records) == [(2, False), (3, True)]
    assert records[0].problem is not None and records[0].problem.startswith(problem)


def test_an_unclosed_quote_in_the_header_stops_the_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text('eventName,"eventTimestamp,accountId\n' + row(1))
    with pytest.raises(InputError, match=r"e\.csv:1: the header cannot be read"):
        read(path)


def test_validate_names_the_line_and_counts_the_other_rows(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(HEADER + row(1) + 'apiCall,2024-05-01T10:00:02Z,a,"Acme, Inc\n' + row(3))
    result = invoke("validate", path)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"{path}:3: a quoted cell opened here is never closed (the file ends inside it); "
        "the lines after this one are read as rows",
        "3 records: 2 valid, 1 invalid",
    ]


_PIECES = st.sampled_from(['"', '""', ",", "a", "é", "\n", "\r\n", "\r", " ", "\x00"])
_BODY = st.lists(_PIECES, max_size=40).map("".join)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(body=_BODY)
def test_any_quoting_reads_to_the_end_and_resumes_anywhere(
    tmp_path_factory: pytest.TempPathFactory, body: str
) -> None:
    """Whatever the quotes: no exception, records in line order within the file, each
    ending after it starts, and reading from any record's end yields exactly the rest."""
    path = tmp_path_factory.mktemp("q") / "e.csv"
    path.write_bytes((HEADER + row(1) + body + "\n" + row(2)).encode())
    records = read(path)
    size, lines = path.stat().st_size, (HEADER + row(1) + body + "\n" + row(2)).count("\n")
    starts = [line for line, _ in lines_of(records)]
    assert starts == sorted(set(starts)) and starts[0] == 2
    for record in records:
        assert (record.event is None) == (record.problem is not None)
        assert int(record.source.rsplit(":", 1)[1]) <= record.end.line <= lines
        assert record.end.offset <= size
    for cut, record in enumerate(records):
        assert read(path, record.end) == records[cut + 1 :]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=_BODY)
def test_validate_never_fails_on_quoting(tmp_path: Path, body: str) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes((HEADER + body + "\n" + row(1)).encode())
    result = invoke("validate", path)
    assert result.exit_code in (0, 1), result.output
    match = re.search(r"(\d+) records: (\d+) valid, (\d+) invalid", result.stdout)
    assert match is not None, result.stdout
    total, valid, invalid = (int(n) for n in match.groups())
    assert valid + invalid == total == len(read(path))
    assert invalid == sum(r.event is None for r in read(path))
