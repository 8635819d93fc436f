"""The spool's journal (durability "process"): a put returns once its event is in this
process's journal (a file mapped into memory, the kernel's page cache), and the writer thread
imports it into SQLite. What must hold: a returned put is in the journal before any import; a
process killed (SIGKILL) before or during an import loses nothing and imports nothing twice;
the journal of a live process is left to it, also by a forked child; a damaged byte loses only
its event, and says so; full journals are deleted once imported; a full spool keeps every
returned event and imports them as room is made."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sender.producers import Producers
from tests.sender.test_enqueue_paths import _committed_ids as _db_ids
from togai_ingest import journal as journal_module
from togai_ingest.errors import SpoolFullError
from togai_ingest.journal import frame, journal_paths, read_frames
from togai_ingest.spool import SpoolQueue
from togai_ingest.validation import EncodedEvent, checksum

ROOT = Path(__file__).resolve().parents[2]


def _event(event_id: str, pad: int = 0) -> EncodedEvent:
    return EncodedEvent(event_id, b'{"id":"%s","pad":"%s"}' % (event_id.encode(), b"x" * pad))


def _journaled_ids(path: Path) -> list[str]:
    """The ids in the journals of the spool ``path``, read from the files."""
    ids = []
    for journal in journal_paths(path):
        fd = os.open(journal, os.O_RDONLY)
        try:
            ids += [
                event_id for frames in read_frames(fd, 0, journal) for _, event_id, _, _ in frames
            ]
        finally:
            os.close(fd)
    return ids


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python process running ``code`` (it prints ``ready`` when it is)."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'generated'}:{ROOT}"},
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        assert line == "ready", child.communicate(timeout=10)[1]
    return child


# A process whose writer never imports (its commit blocks): what it put is only in its journal.
PUT_AND_HOLD = """
    import sys, threading, time
    from togai_ingest.spool import SpoolQueue
    from togai_ingest.validation import EncodedEvent
    SpoolQueue._commit = lambda self, group: time.sleep(3600)
    queue = SpoolQueue(sys.argv[1])
    def put(slot):
        for i in range(int(sys.argv[2])):
            queue.put(EncodedEvent(f"h{slot}-{i}", b'{"id":"h%d-%d"}' % (slot, i)), None)
    threads = [threading.Thread(target=put, args=(k,)) for k in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
    forked = __import__("os").fork() if "--fork" in sys.argv else 0
    if forked == 0 and "--fork" in sys.argv:
        time.sleep(3600)  # the child
    print("ready", flush=True)
    print(forked, flush=True)
    time.sleep(3600)
"""


@pytest.fixture
def kill_after() -> Iterator[list[subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_a_returned_put_is_in_the_journal_before_any_import(tmp_path: Path) -> None:
    path = tmp_path / "s"
    queue = SpoolQueue(path)
    other = SpoolQueue(path)  # another process's view: only what is imported
    producers = Producers(lambda i: queue.put(_event(i), None), "j", (), threads=3, each=50)
    with queue._io:  # the writer cannot import
        producers.start()
        producers.join(30)
        assert sorted(_journaled_ids(path)) == sorted(producers.returned)
        assert len(producers.returned) == producers.total
        assert sorted(queue.ids()) == sorted(producers.returned), "ids() names them"
        assert other.ids() == []
    assert queue.imported(10)
    assert sorted(other.ids()) == sorted(producers.returned)
    queue.shutdown()
    other.shutdown()
    assert journal_paths(path) == [], "imported journals are deleted at shutdown"


def test_a_process_killed_before_its_import_loses_nothing(
    tmp_path: Path, kill_after: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "s"
    child = _child(PUT_AND_HOLD, str(path), "1500")
    kill_after.append(child)
    assert _db_ids(path) == []
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    queue = SpoolQueue(path)  # imports the journal of the process that is gone
    ids = queue.ids()
    assert len(ids) == len(set(ids)) == 3000
    assert set(ids) == {f"h{k}-{i}" for k in range(2) for i in range(1500)}
    assert journal_paths(path) == []
    queue.shutdown()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM journals").fetchone() == (0,)


def test_the_journal_of_a_live_process_is_left_to_it_also_by_its_forked_child(
    tmp_path: Path, kill_after: list[subprocess.Popen[str]]
) -> None:
    """The parent put 200 events, then forked; the child lets go of the parent's journal (its
    copy of the descriptor would keep the lock): once the parent is killed, the journal is
    imported though the child lives on."""
    path = tmp_path / "s"
    parent = _child(PUT_AND_HOLD, str(path), "100", "--fork")
    kill_after.append(parent)
    assert parent.stdout is not None
    forked = int(parent.stdout.readline())
    try:
        queue = SpoolQueue(path)
        queue._on_writer(queue._reap)  # its periodic import of what processes left
        assert queue.ids() == [], "the journal of a live process was imported"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        os.kill(forked, 0)  # the child is alive
        queue._on_writer(queue._reap)
        assert len(queue.ids()) == 200
        queue.shutdown()
    finally:
        os.kill(forked, signal.SIGKILL)


FRAMES = st.lists(st.integers(0, 300), min_size=1, max_size=12)


@given(
    pads=FRAMES,
    imported=st.integers(0, 12),
    cut=st.floats(0, 1),
    damaged=st.one_of(st.none(), st.integers(0, 11)),
)
def test_an_import_cut_short_by_a_kill_imports_nothing_twice_and_damage_loses_only_its_event(
    pads: list[int], imported: int, cut: float, damaged: int | None
) -> None:
    """A journal left by a process killed at any point: ``imported`` of its events were
    imported (their rows and how far, in one transaction), the last frame may be cut short
    (its put never returned), one frame may have a damaged byte. Opening the spool imports
    exactly the whole, intact frames after those, once each."""
    imported = min(imported, len(pads))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s"
        SpoolQueue(path).shutdown()
        events = [_event(f"f{k}", pad) for k, pad in enumerate(pads)]
        frames = [frame(e.id, e.json, checksum(e.id, e.json)) for e in events]
        data = bytearray(b"".join(frames))
        ends = [sum(len(f) for f in frames[: k + 1]) for k in range(len(frames))]
        last = len(frames) - 1
        torn = last >= imported and cut < 0.5  # the last put was cut short by the kill
        if torn:
            start = ends[last] - len(frames[last])
            del data[start + int((len(frames[last]) - 1) * cut * 2) :]
        lost = set()
        if damaged is not None and imported <= damaged < len(frames) - (1 if torn else 0):
            data[ends[damaged] - 2] ^= 0x20  # a byte of its body
            lost.add(damaged)
        name = f"{path.name}.journal-1-dead-000001"
        (Path(folder) / name).write_bytes(bytes(data) + bytes(4096))
        conn = sqlite3.connect(path, isolation_level=None)
        for e in events[:imported]:
            conn.execute(
                "INSERT INTO events (id, body, crc) VALUES (?, ?, ?)",
                (e.id, e.json, checksum(e.id, e.json)),
            )
        if imported:
            conn.execute("INSERT INTO journals VALUES (?, ?)", (name, ends[imported - 1]))
        conn.close()
        queue = SpoolQueue(path)
        ids = queue.ids()
        queue.shutdown()
        whole = len(frames) - (1 if torn else 0)
        expected = [f"f{k}" for k in range(whole) if k not in lost]
        assert ids == expected
        assert journal_paths(path) == []


def test_a_damaged_frame_is_logged_with_its_offsets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    SpoolQueue(path).shutdown()
    frames = [
        frame(f"d{k}", b'{"id":"d%d"}' % k, checksum(f"d{k}", b'{"id":"d%d"}' % k))
        for k in range(3)
    ]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 3] ^= 0xFF  # the second frame's header
    (tmp_path / f"{path.name}.journal-1-dead-000001").write_bytes(bytes(data) + bytes(100))
    with caplog.at_level(logging.ERROR, logger="togai_ingest"):
        queue = SpoolQueue(path)
    assert queue.ids() == ["d0", "d2"]
    assert f"bytes {len(frames[0])} to {len(frames[0]) + len(frames[1])}" in caplog.text
    queue.shutdown()


def test_full_journals_are_deleted_once_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SIZE", 8192)  # about 80 events each
    path = tmp_path / "s"
    queue = SpoolQueue(path, max_bytes=None)
    producers = Producers(lambda i: queue.put(_event(i), None), "r", (), threads=2, each=1000)
    producers.start()
    producers.join(60)
    assert queue.imported(10)
    assert len(journal_paths(path)) <= 2, "the one in use, and the next one made ahead"
    queue.shutdown()
    assert journal_paths(path) == []
    ids = _db_ids(path)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(producers.returned)


def test_a_full_spool_keeps_every_returned_event_and_imports_them_as_room_is_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    queue = SpoolQueue(path, max_page_count=40, max_bytes=None)
    returned: list[str] = []
    with pytest.raises(SpoolFullError) as raised:
        for i in range(20_000):
            queue.put(_event(f"p{i}", 300), None)
            returned.append(f"p{i}")
    assert f"'p{len(returned)}'" in str(raised.value), "the error names the event"
    assert len(_db_ids(path)) < len(returned), "some wait in the journal"
    delivered: list[str] = []
    deadline = time.monotonic() + 60
    while len(delivered) < len(returned) and time.monotonic() < deadline:
        items = queue.take(50, 0.2)  # each ack makes room, and the writer imports more
        queue.ack(items)
        delivered += [item.event.id for item in items]
    assert sorted(delivered) == sorted(returned), "every returned event, once"
    queue.put(_event("after"), None)  # room again: puts work
    queue.shutdown()
    assert _db_ids(path) == ["after"]


def test_a_put_racing_the_writer_past_many_pending_events_waits_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``_MAX_PENDING`` events not yet imported, a put waits for the writer: a thread
    that puts in a tight loop cannot run the journal (and the memory it holds) far ahead."""
    from togai_ingest import spool as spool_module

    monkeypatch.setattr(spool_module, "_MAX_PENDING", 50)
    path = tmp_path / "s"
    queue = SpoolQueue(path)
    most = [0]
    real = SpoolQueue._commit

    def commit(self: SpoolQueue, group: object) -> None:
        most[0] = max(most[0], len(group.rows))  # type: ignore[attr-defined]
        real(self, group)  # type: ignore[arg-type]

    monkeypatch.setattr(SpoolQueue, "_commit", commit)
    done = threading.Event()

    def put() -> None:
        for i in range(3000):
            queue.put(_event(f"t{i}"), None)
        done.set()

    thread = threading.Thread(target=put)
    thread.start()
    thread.join(60)
    assert done.is_set()
    queue.shutdown()
    assert most[0] <= 50 + 1, most[0]
    assert _db_ids(path) == [f"t{i}" for i in range(3000)]
