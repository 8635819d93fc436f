"""The spool's row checksum (``validation.checksum``, ``validation.damage``): any change of a
stored row's id or bytes is damage, even one that leaves a valid event with the same id (a
digit of a value flipped would bill the wrong amount); a row stored without a checksum (by an
older version) is validated again instead; a spool made before the checksum column gets it
when it is opened, and its older rows are still delivered, drained and salvaged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SECRET
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import Client, RetryPolicy
from togai_ingest.salvage import SpoolImage, layout, salvage
from togai_ingest.spool import SpoolQueue
from togai_ingest.validation import EncodedEvent, checksum, damage, encode_event

_events = st.builds(
    lambda event_id, amount: encode_event(
        wire_event(
            id=event_id,
            eventAttributes=[{"attributeName": "requests", "attributeValue": str(amount)}],
        )
    ),
    st.from_regex(r"[A-Za-z0-9_.:\-\u00e9\u2603]{1,30}", fullmatch=True),
    st.integers(0, 10**9),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    event=_events,
    in_id=st.booleans(),
    where=st.floats(0, 1, exclude_max=True),
    flip=st.integers(1, 255),
)
def test_any_changed_byte_of_a_stored_row_is_damage(
    event: EncodedEvent, in_id: bool, where: float, flip: int
) -> None:
    """One byte of the id or of the body changed (xor with 1-255), as a damaged page would:
    the checksum stored with the row tells, whatever the byte makes of the event."""
    crc = checksum(event.id, event.json)
    assert damage(event, crc, "row") is None
    stored = bytearray(event.id.encode() if in_id else event.json)
    stored[int(where * len(stored))] ^= flip
    if in_id:
        damaged = EncodedEvent(bytes(stored).decode("utf-8", "replace"), event.json)
    else:
        damaged = EncodedEvent(event.id, bytes(stored))
    if damaged == event:  # an invalid UTF-8 id byte decoded to what it was: nothing read changed
        return
    error = damage(damaged, crc, "row")
    assert error is not None, (event, damaged)
    assert error.path.startswith("row")


def test_a_valid_event_with_the_same_id_but_another_value_is_damage() -> None:
    event = encode_event(wire_event(id="e-1"))
    crc = checksum(event.id, event.json)
    other = EncodedEvent("e-1", event.json.replace(b'"12"', b'"13"'))
    assert other.json != event.json
    error = damage(other, crc, "spooled event")
    assert error is not None and "checksum differs" in str(error)
    assert damage(other, None, "spooled event") is None  # without a checksum: undetectable
    assert damage(event, crc ^ 1, "row") is not None  # a damaged checksum is damage too


def _sql(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(statement)
    finally:
        conn.close()


def _older(path: Path, ids: list[str]) -> None:
    """A spool as the version before the checksum made it: no ``crc`` column."""
    queue = SpoolQueue(path)
    for event_id in ids:
        queue.put(encode_event(wire_event(id=event_id)), None)
    queue.shutdown()
    _sql(path, "ALTER TABLE events DROP COLUMN crc")


def test_an_older_spool_gets_the_column_and_its_rows_are_validated_again(tmp_path: Path) -> None:
    path = tmp_path / "old.spool"
    _older(path, ["old-0", "old-1", "old-2"])
    # One older row is no event any more.
    _sql(path, "UPDATE events SET body = CAST('{\"id\": 1' AS BLOB) WHERE id = 'old-1'")
    queue = SpoolQueue(path)
    queue.put(encode_event(wire_event(id="new-0")), None)
    items = queue.take(10, 0)
    queue.release(items, 0)
    queue.shutdown()
    by_id = {item.event.id: item for item in items}
    assert sorted(by_id) == ["new-0", "old-0", "old-1", "old-2"]
    assert [by_id[i].crc for i in ("old-0", "old-1", "old-2")] == [None, None, None]
    new = by_id["new-0"].event
    assert by_id["new-0"].crc == checksum(new.id, new.json)
    verdicts = {i: damage(item.event, item.crc, i) for i, item in by_id.items()}
    assert [i for i, error in verdicts.items() if error is not None] == ["old-1"]


def test_older_rows_and_checksummed_rows_are_delivered_and_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "mixed.spool"
    _older(path, [f"old-{i}" for i in range(20)])
    queue = SpoolQueue(path)  # adds the column: rows from here on have a checksum
    for i in range(20):
        queue.put(encode_event(wire_event(id=f"new-{i}")), None)
    queue.shutdown()
    assert layout().crc_col is not None  # the probe found where the checksum is kept
    with SpoolImage(path, layout()) as image:  # the page reader: both kinds of rows
        rows = list(image.rows())
        assert image.damage.none, image.damage.describe()
    assert len(rows) == 40
    assert [r.crc is None for r in rows] == [True] * 20 + [False] * 20
    data = bytearray(path.read_bytes())  # a digit of a new row's value, in the file itself
    victim = next(r for r in rows if r.id == "new-5")
    at = data.index(victim.body)
    data[at : at + len(victim.body)] = victim.body.replace(b'"12"', b'"13"')
    path.write_bytes(data)
    with FaultServer(token=SECRET) as srv:
        client = Client(SECRET, base_url=srv.url, rate_limit=None, retry=RetryPolicy(0))
        with client:
            result = salvage(path, client, batch_size=50, concurrency=1)
        assert sorted(srv.ledger) == sorted({str(r.id) for r in rows} - {"new-5"})
        assert not srv.violations
    assert [i.error.problem for i in result.invalid] == [
        "its bytes are not those it was stored with (the checksum differs: a damaged row)"
    ]


def test_a_checksum_that_is_no_number_is_damage(tmp_path: Path) -> None:
    """The checksum column itself damaged into text: the sender's worker and the salvage
    both set the row aside (it is not trusted, nor taken for a row without a checksum)."""
    path = tmp_path / "s.spool"
    queue = SpoolQueue(path)
    for i in range(3):
        queue.put(encode_event(wire_event(id=f"c-{i}")), None)
    queue.shutdown()
    _sql(path, "UPDATE events SET crc = 'x' WHERE id = 'c-1'")
    with SpoolImage(path, layout()) as image:
        crcs = {row.id: row.crc for row in image.rows()}
    assert crcs["c-1"] == -1 and all(
        c is not None and c >= 0 for i, c in crcs.items() if i != "c-1"
    )
    queue = SpoolQueue(path)
    items = queue.take(10, 0)
    queue.release(items, 0)
    queue.shutdown()
    flagged = [i.event.id for i in items if damage(i.event, i.crc, "spooled event") is not None]
    assert flagged == ["c-1"]
