"""Salvage of damaged spool files (``togai_ingest.salvage``, ``togai-ingest drain``): real
files cut, overwritten with garbage, bit-flipped, without their ``-wal``; every row that is
still intact reaches the fault server, every other one is reported (invalid, or counted
unreadable), the damaged file is never modified, and nothing but a ``TogaiError`` leaves."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli import TOKEN, run_cli
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import Client, RetryPolicy
from togai_ingest.drain import DrainResult
from togai_ingest.errors import SpoolError
from togai_ingest.salvage import Row, SpoolImage, in_use, layout, salvage
from togai_ingest.spool import SpoolQueue
from togai_ingest.validation import EncodedEvent, encode_event

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
PAGE = 4096  # SQLite's default page size, which the spool keeps


def _event(i: int, prefix: str = "s") -> EncodedEvent:
    """A valid event; every 10th is over a page long (its row overflows to other pages)."""
    event = wire_event(id=f"{prefix}-{i}", accountId=f"acct-{i % 7}")
    if i % 10 == 3:
        event["dimensions"] = {f"d{k}": f"{i}-{k}-".ljust(45, "x") for k in range(90)}
    return encode_event(event)


def _spool(path: Path, n: int, prefix: str = "s") -> list[EncodedEvent]:
    """A spool of ``n`` events, closed (everything is in the main file)."""
    events = [_event(i, prefix) for i in range(n)]
    queue = SpoolQueue(path, max_bytes=None)
    for event in events:
        queue.put(event, timeout=5)
    queue.shutdown()
    return events


def _crashed(path: Path, dest: Path, more: list[EncodedEvent]) -> None:
    """``dest``: the spool at ``path`` with ``more`` events committed to its -wal only, as a
    process killed before a checkpoint leaves it (the files copied while it is open)."""
    shape = layout()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        table = '"' + shape.table + '"'
        names = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        insert = (
            f"INSERT INTO {table} ({names[shape.id_col]}, {names[shape.body_col]}) VALUES (?, ?)"
        )
        for event in more:
            conn.execute(insert, (event.id, event.json))
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{path}{suffix}", f"{dest}{suffix}")
    finally:
        conn.close()


def _rows(path: Path) -> dict[int, Row]:
    with SpoolImage(path, layout()) as image:
        rows = {row.seq: row for row in image.rows()}
        assert image.damage.none, image.damage.describe()
    return rows


def _sqlite_rows(path: Path) -> dict[int, tuple[str, bytes]]:
    """What SQLite reads (from a copy: opening a spool with a -wal checkpoints it)."""
    copy = path.with_name(path.name + ".sqlite-copy")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    shape = layout()
    conn = sqlite3.connect(copy)
    try:
        names = [row[1] for row in conn.execute(f'PRAGMA table_info("{shape.table}")')]
        query = f'SELECT rowid, {names[shape.id_col]}, {names[shape.body_col]} FROM "{shape.table}"'
        return {seq: (i, bytes(body)) for seq, i, body in conn.execute(query)}
    finally:
        conn.close()


def _client(url: str) -> Client:
    return Client(TOKEN, base_url=url, rate_limit=None, retry=RetryPolicy(max_retries=0))


def _salvage(
    path: Path, srv: FaultServer, client: Client | None = None, batch_size: int = 50
) -> tuple[DrainResult, Counter[str]]:
    """Salvage ``path`` in this process (with ``client``, else a new one); the result and
    what the server got by id."""
    before = Counter(srv.deliveries)
    if client is not None:
        result = salvage(path, client, batch_size=batch_size, concurrency=2)
    else:
        with _client(srv.url) as client:
            result = salvage(path, client, batch_size=batch_size, concurrency=2)
    return result, srv.deliveries - before


def _invalid_seqs(result: DrainResult) -> set[int]:
    found = (re.match(r"row (\d+) ", invalid.error.path) for invalid in result.invalid)
    return {int(m.group(1)) for m in found if m is not None}


def _files(path: Path) -> dict[str, bytes]:
    return {
        s: Path(f"{path}{s}").read_bytes()
        for s in ("", "-wal", "-shm")
        if Path(f"{path}{s}").exists()
    }


# --- The reader against SQLite on healthy files.


def test_the_reader_reads_what_sqlite_reads(tmp_path: Path) -> None:
    spool = tmp_path / "healthy.spool"
    _spool(spool, 300)
    rows = _rows(spool)
    assert {seq: (r.id, r.body) for seq, r in rows.items()} == _sqlite_rows(spool)
    assert sum(1 for r in rows.values() if r.overflow) == 30  # the long rows were followed
    crashed = tmp_path / "crashed.spool"
    _crashed(spool, crashed, [_event(i, "w") for i in range(60)])
    rows = _rows(crashed)
    assert len(rows) == 360
    assert {seq: (r.id, r.body) for seq, r in rows.items()} == _sqlite_rows(crashed)


# --- Damage, one kind at a time; every intact row is delivered.


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer(token=TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: FaultServer) -> Iterator[Client]:
    with _client(server.url) as made:  # one: making a client costs ~50 ms (its TLS context)
        yield made


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Row]]:
    path = tmp_path_factory.mktemp("pristine") / "app.spool"
    _spool(path, 400)
    return path, _rows(path)


def _pages(row: Row) -> set[int]:
    return {row.page, *row.overflow}


def _reported(row: Row, result: DrainResult) -> bool:
    """Whether the salvage accounts for ``row``: invalid, or a page of it unreadable, or a
    row of its page unreadable."""
    damage = result.damage
    assert damage is not None
    return bool(
        row.seq in _invalid_seqs(result)
        or _pages(row) & set(damage.pages)
        or any(page == row.page or event_id == row.id for page, event_id, _ in damage.rows)
    )


@pytest.mark.parametrize("cut", [100, PAGE + 1000, 40 * PAGE, 70 * PAGE + 17, -1])
def test_a_truncated_spool_delivers_every_intact_row(
    tmp_path: Path, pristine: tuple[Path, dict[int, Row]], server: FaultServer, cut: int
) -> None:
    source, rows = pristine
    data = source.read_bytes()
    path = tmp_path / "cut.spool"
    path.write_bytes(data[:cut])
    kept = len(data[:cut]) // PAGE  # pages wholly in the file
    intact = {r.id for r in rows.values() if max(_pages(r)) <= kept}
    result, got = _salvage(path, server)
    assert set(got) == intact and set(got.values()) <= {1}
    assert result.accepted == len(intact) and not result.failed
    assert result.damage is not None
    lost = [r for r in rows.values() if r.id not in intact]
    assert lost, "the cut loses rows"
    for row in lost:  # each on a page reported, or its overflow cut off (named)
        assert _reported(row, result), row
    assert path.read_bytes() == data[:cut], "the damaged file was modified"
    print(f"cut at {len(data[:cut]):,} bytes: {len(intact)} of {len(rows)} rows salvaged")


@pytest.mark.parametrize("garbage", [[8], [7], [1], [2, 3, 30, 31, 60], [1, 9, 10, 11, 12, 50]])
def test_garbage_pages_lose_only_their_rows(
    tmp_path: Path,
    pristine: tuple[Path, dict[int, Row]],
    server: FaultServer,
    garbage: list[int],
) -> None:
    source, rows = pristine
    data = bytearray(source.read_bytes())
    noise = random.Random(sum(garbage))
    for page in garbage:
        data[(page - 1) * PAGE : page * PAGE] = noise.randbytes(PAGE)
    path = tmp_path / "garbage.spool"
    path.write_bytes(data)
    intact = {r.id for r in rows.values() if not _pages(r) & set(garbage)}
    result, got = _salvage(path, server)
    assert set(got) == intact and set(got.values()) <= {1}
    assert result.damage is not None
    if any(row.page in garbage for row in rows.values()):
        assert not result.damage.none  # a garbage leaf is reported as damage
    for row in rows.values():
        if row.id not in intact:  # a garbage leaf is reported; a garbage overflow: invalid
            assert _reported(row, result), row
    assert not server.violations
    print(f"garbage over pages {garbage}: {len(intact)} of {len(rows)} rows salvaged")


def test_a_leaf_page_whose_cell_count_shrank_is_reported(
    tmp_path: Path, pristine: tuple[Path, dict[int, Row]], server: FaultServer
) -> None:
    source, rows = pristine
    data = bytearray(source.read_bytes())
    page = rows[40].page
    on_page = [r for r in rows.values() if r.page == page]
    count = int.from_bytes(data[(page - 1) * PAGE + 3 : (page - 1) * PAGE + 5], "big")
    assert count == len(on_page) > 2
    data[(page - 1) * PAGE + 3 : (page - 1) * PAGE + 5] = (count - 2).to_bytes(2, "big")
    path = tmp_path / "count.spool"
    path.write_bytes(data)
    result, got = _salvage(path, server)
    assert len(got) == len(rows) - 2  # two cells are no longer listed: lost, but not silently
    assert result.damage is not None
    assert "bytes are in no cell (cells may be lost)" in result.damage.pages[page]


def test_a_bit_flipped_row_is_invalid_not_a_bad_request(
    tmp_path: Path, pristine: tuple[Path, dict[int, Row]], server: FaultServer
) -> None:
    source, rows = pristine
    data = bytearray(source.read_bytes())
    victims = [rows[seq] for seq in (5, 6, 7)]
    changes = [(b'"acct-', b'"acct\x00'), (b'"eventName":"', b'"eventName":{'), (b"s-6", b"s-X")]
    for row, (old, new) in zip(victims, changes, strict=True):
        at = data.index(row.body)
        data[at : at + len(row.body)] = row.body.replace(old, new, 1)
    path = tmp_path / "flipped.spool"
    path.write_bytes(data)
    result, got = _salvage(path, server)
    assert len(got) == len(rows) - 3 and not {v.id for v in victims} & set(got)
    assert _invalid_seqs(result) == {5, 6, 7}
    assert result.damage is not None and result.damage.none and not result.ok
    assert not server.violations


def test_a_spool_without_its_wal_delivers_what_was_checkpointed(
    tmp_path: Path, server: FaultServer
) -> None:
    spool = tmp_path / "app.spool"
    old = _spool(spool, 120, "c")
    crashed = tmp_path / "crashed.spool"
    _crashed(spool, crashed, [_event(i, "w") for i in range(50)])
    assert os.path.getsize(f"{crashed}-wal") > 0
    os.remove(f"{crashed}-wal")
    result, got = _salvage(crashed, server)
    assert set(got) == {e.id for e in old}
    assert result.damage is not None
    assert any("-wal file is missing" in note for note in result.damage.notes), result.damage
    assert not result.ok


def test_a_damaged_wal_loses_only_the_damaged_frames(tmp_path: Path, server: FaultServer) -> None:
    spool = tmp_path / "app.spool"
    old = _spool(spool, 120, "c")
    crashed = tmp_path / "crashed.spool"
    more = [_event(i, "w") for i in range(50)]
    _crashed(spool, crashed, more)
    rows = _rows(crashed)
    wal = bytearray(Path(f"{crashed}-wal").read_bytes())
    frames = (len(wal) - 32) // (24 + PAGE)
    at = 32 + frames // 2 * (24 + PAGE)
    page = int.from_bytes(wal[at : at + 4], "big")
    wal[at + 24 : at + 24 + PAGE] = random.Random(1).randbytes(PAGE)
    Path(f"{crashed}-wal").write_bytes(wal)
    result, got = _salvage(crashed, server)
    # SQLite stops at the damaged frame; the salvage reads the frames after it too. Each
    # later image of a leaf page holds its earlier rows: only a row whose overflow page's
    # one image was the damaged frame may be lost.
    may_be_lost = {r.id for r in rows.values() if page in r.overflow}
    assert {e.id for e in old + more} - may_be_lost <= set(got), sorted(set(got))
    assert result.damage is not None
    assert any(f"damaged at frame {frames // 2 + 1}" in note for note in result.damage.notes)
    print(f"-wal frame {frames // 2 + 1} of {frames} damaged: {len(got)} of 170 rows salvaged")


@pytest.mark.parametrize("content", [b"", b"random"])
def test_an_empty_or_random_file(tmp_path: Path, server: FaultServer, content: bytes) -> None:
    path = tmp_path / "odd.spool"
    data = content and random.Random(3).randbytes(5 * PAGE + 123)
    path.write_bytes(data)
    result, got = _salvage(path, server)
    assert not got and result.total == 0
    assert result.damage is not None
    assert len(result.damage.pages) == (6 if data else 0)
    assert path.read_bytes() == data


# --- The command line.


def test_drain_salvages_a_spool_the_sender_moved_aside(tmp_path: Path) -> None:
    spool, rejected = tmp_path / "app.spool", tmp_path / "rejected.jsonl"
    events = _spool(spool, 200)
    rows = _rows(spool)
    data = bytearray(spool.read_bytes())
    zeroed = rows[100].page  # a leaf page: zeros
    data[(zeroed - 1) * PAGE : zeroed * PAGE] = bytes(PAGE)
    flipped = next(r for r in rows.values() if r.page != zeroed and r.seq > 150)
    at = data.index(flipped.body)
    data[at + 2] ^= 0x40  # "id" -> "i$": an unknown property, a missing id
    spool.write_bytes(data)
    queue = SpoolQueue(spool)  # finds the damage and moves the file aside
    queue.shutdown()
    (moved,) = tmp_path.glob("app.spool.corrupt-*[0-9]")
    damaged = moved.read_bytes()
    lost = {r.id for r in rows.values() if zeroed in _pages(r)}
    with FaultServer(token=TOKEN) as srv:
        done = run_cli(
            "drain", moved, "--base-url", srv.url, "--rejected", rejected,
            "--progress-interval", "0.05",
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    expected = {e.id for e in events} - lost - {flipped.id}
    assert set(srv.ledger) == expected and not srv.violations
    assert f"{moved} is damaged or was moved aside: salvaging it" in done.stderr
    assert re.search(r"salvage: \d pages? unreadable \(they may have held events\)", done.stderr)
    assert f"page {zeroed}: not a database page (garbage" in done.stderr
    assert (
        f"summary: {len(expected)} accepted, 0 rejected, 0 failed, 1 invalid; "
        f"{len(expected) + 1} events in" in done.stdout
    )
    assert re.search(r"; unreadable: \d pages?$", done.stdout, re.MULTILINE)
    entries = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["invalid"]
    assert entries[0]["reason"].startswith(f"row {flipped.seq} (page {flipped.page})")
    assert not moved.exists()
    salvaged = moved.with_name(moved.name + ".salvaged")
    assert salvaged.read_bytes() == damaged, "the damaged file was modified"
    assert f"rm -- {shlex.quote(str(salvaged))}" in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("progress: ")]
    assert all(re.fullmatch(r"progress: [\d,]+ events, .*elapsed", p) for p in progress)


def test_drain_salvages_a_damaged_spool_in_place_and_with_the_flag(tmp_path: Path) -> None:
    spool, rejected = tmp_path / "app.spool", tmp_path / "rejected.jsonl"
    events = _spool(spool, 50)
    rows = _rows(spool)
    data = spool.read_bytes()
    spool.write_bytes(data[: len(data) - 100])
    last = len(data) // PAGE
    cut = [r for r in rows.values() if last in _pages(r)]
    with FaultServer(token=TOKEN) as srv:
        done = run_cli("drain", spool, "--base-url", srv.url, "--rejected", rejected)
        healthy = tmp_path / "healthy.spool"
        more = _spool(healthy, 20, "h")
        forced = run_cli("drain", healthy, "--salvage", "--base-url", srv.url, "-q")
    assert done.returncode == 1, done.stderr
    assert "is damaged or was moved aside: salvaging it" in done.stderr
    assert f"salvage: {len(rows) - len(cut)} rows read from" in done.stderr
    assert {e.id for e in events} - {r.id for r in cut} <= set(srv.ledger)
    if cut[0].page == last:  # the cut page holds the start of rows: the page is unreadable
        assert f"page {last}: cut short: 3,996 of 4,096 bytes" in done.stderr
    else:  # it holds the end of a long row: the row is named, in the rejected file too
        assert f"its overflow page {last} is cut short" in done.stderr
        entries = [json.loads(line) for line in rejected.read_text().splitlines()]
        assert [(e["kind"], e["event"]) for e in entries] == [("unreadable", {"id": cut[0].id})]
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == ""
    assert {e.id for e in more} <= set(srv.ledger)
    assert not spool.exists() and Path(f"{spool}.salvaged").exists()


def test_salvage_refuses_a_spool_a_live_process_uses(tmp_path: Path) -> None:
    spool = tmp_path / "live.spool"
    _spool(spool, 10)
    before = _files(spool)
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL')\n"
            "c.execute('SELECT count(*) FROM sqlite_master').fetchall()\n"
            "print('ready', flush=True); time.sleep(60)\n",
            str(spool),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert in_use(spool)
        done = run_cli("drain", spool, "--salvage", "--base-url", "http://127.0.0.1:9")
        with (
            pytest.raises(SpoolError, match="open in another process"),
            _client("http://127.0.0.1:9") as client,
        ):
            salvage(spool, client)
    finally:
        holder.kill()
        holder.wait(10)
    assert done.returncode == 2, done.stderr
    assert "togai-ingest: error:" in done.stderr and "open in another process" in done.stderr
    assert spool.exists() and _files(spool)[""] == before[""]
    assert not in_use(spool)


# --- Random damage: every event has one outcome, or is counted unreadable.


def _template(directory: Path) -> tuple[dict[str, bytes], dict[int, Row]]:
    spool = directory / "template.spool"
    _spool(spool, 60, "t")
    crashed = directory / "crashed.spool"
    _crashed(spool, crashed, [_event(i, "u") for i in range(20)])
    rows = _rows(crashed)
    assert len(rows) == 80
    return _files(crashed), rows


def _wal_pages(wal: bytes) -> set[int]:
    """The pages a -wal holds images of (from its frame headers)."""
    frame = 24 + PAGE
    return {int.from_bytes(wal[at : at + 4], "big") for at in range(32, len(wal), frame)}


_TEMPLATE: list[tuple[dict[str, bytes], dict[int, Row]]] = []

_damage = st.one_of(
    st.tuples(st.just("cut"), st.sampled_from(["", "-wal"]), st.floats(0, 1)),
    st.tuples(
        st.just("garbage"),
        st.sampled_from(["", "", "-wal"]),
        st.floats(0, 1),
        st.integers(1, 2 * PAGE),
        st.integers(0, 2**32),
    ),
    st.tuples(st.just("flip"), st.sampled_from(["", "-wal"]), st.floats(0, 1), st.integers(0, 7)),
    # A bit of a page's B-tree header (type, free blocks, cell count, content start, ...).
    st.tuples(st.just("header"), st.integers(0, 200), st.integers(0, 11), st.integers(0, 7)),
    st.tuples(st.just("no-wal")),
)


def _apply(files: dict[str, bytes], damage: tuple[Any, ...], leaves: list[int]) -> dict[str, bytes]:
    files = dict(files)
    if damage[0] == "no-wal":
        files.pop("-wal", None)
        return files
    if damage[0] == "header":  # of a leaf page of the main file
        data = bytearray(files[""])
        page = leaves[damage[1] % len(leaves)] - 1
        at = page * PAGE + (100 if page == 0 else 0) + damage[2]
        if at < len(data):
            data[at] ^= 1 << damage[3]
        files[""] = bytes(data)
        return files
    name = damage[1]
    if name not in files:
        return files
    data = bytearray(files[name])
    at = int(damage[2] * len(data))
    if damage[0] == "cut":
        del data[at:]
    elif damage[0] == "garbage":
        data[at : at + damage[3]] = random.Random(damage[4]).randbytes(damage[3])
    elif data and at < len(data):
        data[at] ^= 1 << damage[3]
    files[name] = bytes(data)
    return files


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples every run: no flakes in make test
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(damages=st.lists(_damage, min_size=1, max_size=3))
def test_random_damage_loses_nothing_silently(
    tmp_path_factory: pytest.TempPathFactory,
    server: FaultServer,
    client: Client,
    damages: list[Any],
) -> None:
    if not _TEMPLATE:
        _TEMPLATE.append(_template(tmp_path_factory.mktemp("template")))
    files, rows = _TEMPLATE[0]
    wal_pages = _wal_pages(files["-wal"])
    leaves = sorted({row.page for row in rows.values()})
    for damage in damages:
        files = _apply(files, damage, leaves)
    path = tmp_path_factory.mktemp("damaged") / "app.spool"
    for suffix, data in files.items():
        Path(f"{path}{suffix}").write_bytes(data)
    result, got = _salvage(path, server, client, batch_size=100)  # no exception, whatever
    assert set(got.values()) <= {1}, "an event was sent twice"
    ids = {row.id: seq for seq, row in rows.items()}
    assert set(got) <= set(ids), "an event that was never spooled was sent"
    delivered = {ids[i] for i in got}
    invalid = _invalid_seqs(result)
    assert not delivered & invalid, "an event both delivered and invalid"
    named = {event_id for _, event_id, _ in result.damage.rows} if result.damage else set()
    assert not named & set(got), "an event both delivered and unreadable"
    assert result.accepted == len(got) and result.total == len(got) + len(result.invalid)
    damage = result.damage
    assert damage is not None
    for seq, row in rows.items():
        if seq in delivered or seq in invalid:
            continue
        # Missing: its page (or an overflow page) is reported, or a row on it, or (for a
        # page the -wal holds) the -wal.
        in_wal = bool(_pages(row) & wal_pages) and bool(damage.notes)
        assert _reported(row, result) or in_wal, f"row {seq} ({row.id}) is missing"
    if not damage.none or result.invalid:
        assert not result.ok
    assert not server.violations
    for suffix, data in files.items():
        assert Path(f"{path}{suffix}").read_bytes() == data, "the damaged file was modified"
