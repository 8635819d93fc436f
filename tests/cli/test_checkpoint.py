"""The checkpoint file and the watermark (``togai_ingest.checkpoint``).

Saving: an exclusive temporary file with an unpredictable name in the checkpoint's directory
(it never follows a planted symlink), fsynced, then renamed over the checkpoint. Loading:
whatever the file holds, a valid ``Resume`` or ``CheckpointError`` (exit 2 from the command
line), never ``TypeError``/``IndexError``/``AttributeError``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli import event, invoke, write_jsonl
from tests.faultserver import FaultServer
from togai_ingest import checkpoint
from togai_ingest.checkpoint import Checkpoint, CheckpointError, Resume, Watermark
from togai_ingest.readers import Input, Position


def test_watermark_moves_with_the_oldest_outstanding_batch() -> None:
    mark = Watermark(Position(0, 0, 0))
    ends = [Position(0, 10 * n, n) for n in range(1, 8)]
    for n in range(6):
        assert mark.sent(f"f:{n + 1}", ends[n], {"n": n}) == n
    written: list[bytes] = []
    assert not mark.local(ends[6], b"7", written.append)  # waits for the records before it
    assert not mark.done(2, 2, written.append)
    assert mark.position == Position(0, 0, 0) and mark.outstanding == 6
    assert mark.source(3) == "f:4"
    mark.settle(1, 1)  # reported, but not done (e.g. refused token): the watermark waits
    assert mark.unsettled() == [("f:1", {"n": 0}), ("f:5", {"n": 4}), ("f:6", {"n": 5})]
    assert mark.done(0, 2, written.append) and written == []
    assert mark.position == ends[3] and mark.outstanding == 2
    assert mark.done(4, 2, written.append) and written == [b"7"]
    assert mark.position == ends[6] and mark.outstanding == 0
    assert mark.local(Position(0, 80, 8), None, written.append) and mark.position == Position(
        0, 80, 8
    )


def test_checkpoint_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    store = Checkpoint(tmp_path / "ck.json", [Input(str(path), "jsonl")])
    assert store.load() is None
    store.save(Position(0, 5, 1), "/tmp/rejected.jsonl", 12)
    resume = store.load()
    assert resume is not None
    assert (resume.position, resume.rejected, resume.rejected_size) == (
        Position(0, 5, 1),
        "/tmp/rejected.jsonl",
        12,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "e.jsonl"]


def test_checkpoint_refuses_other_or_changed_inputs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    Checkpoint(tmp_path / "ck.json", [Input(str(path), "jsonl")]).save(
        Position(0, 5, 1), None, None
    )
    other = write_jsonl(tmp_path / "other.jsonl", [event(1)])
    with pytest.raises(CheckpointError, match="other or changed input"):
        Checkpoint(tmp_path / "ck.json", [Input(str(other), "jsonl")]).load()
    write_jsonl(path, [event(1), event(2)])
    with pytest.raises(CheckpointError, match="other or changed input"):
        Checkpoint(tmp_path / "ck.json", [Input(str(path), "jsonl")]).load()
    with pytest.raises(CheckpointError, match="standard input"):
        Checkpoint(tmp_path / "ck.json", [Input("-", "jsonl")])
    (tmp_path / "ck.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="cannot read"):
        Checkpoint(tmp_path / "ck.json", [Input(str(path), "jsonl")]).load()


# --- Saving


@pytest.fixture
def inputs(tmp_path: Path) -> list[Input]:
    return [Input(str(write_jsonl(tmp_path / "e.jsonl", [event(1), event(2)])), "jsonl")]


def test_a_planted_symlink_at_the_old_temporary_name_is_not_followed(
    tmp_path: Path, inputs: list[Input]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n", encoding="utf-8")
    planted = tmp_path / f".ck.json.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    store = Checkpoint(tmp_path / "ck.json", inputs)
    store.save(Position(0, 5, 1), None, None)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert planted.is_symlink()
    assert not (tmp_path / "ck.json").is_symlink()
    resume = store.load()
    assert resume is not None and resume.position == Position(0, 5, 1)


def test_a_checkpoint_path_that_is_a_symlink_is_replaced_not_its_target(
    tmp_path: Path, inputs: list[Input]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n", encoding="utf-8")
    (tmp_path / "ck.json").symlink_to(victim)
    Checkpoint(tmp_path / "ck.json", inputs).save(Position(0, 5, 1), None, None)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert not (tmp_path / "ck.json").is_symlink()


def test_each_save_uses_a_new_exclusive_private_temporary_file_fsynced_before_the_rename(
    tmp_path: Path, inputs: list[Input], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(source: Any, target: Any) -> None:
        mode = os.stat(source).st_mode
        calls.append(("replace", (Path(source), stat.S_IMODE(mode))))
        real_replace(source, target)

    def fsync(descriptor: int) -> None:
        calls.append(("fsync", descriptor))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    store = Checkpoint(tmp_path / "ck.json", inputs)
    for line in (1, 2):
        store.save(Position(0, 5 * line, line), None, None)
    assert [kind for kind, _ in calls] == ["fsync", "replace", "fsync", "replace"]
    temporaries = [value[0] for kind, value in calls if kind == "replace"]
    assert temporaries[0] != temporaries[1]
    for temporary in temporaries:
        assert temporary.parent == tmp_path and temporary.name.startswith(".ck.json.")
        assert temporary.name != f".ck.json.{os.getpid()}.tmp"
    assert {value[1] for kind, value in calls if kind == "replace"} == {0o600}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "e.jsonl"]


def test_a_failed_save_leaves_no_temporary_file_and_the_old_checkpoint(
    tmp_path: Path, inputs: list[Input], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Checkpoint(tmp_path / "ck.json", inputs)
    store.save(Position(0, 5, 1), None, None)

    def broken(source: Any, target: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        store.save(Position(0, 10, 2), None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "e.jsonl"]
    resume = store.load()
    assert resume is not None and resume.position == Position(0, 5, 1)


# --- Loading whatever the file holds


def _valid(inputs: list[Input]) -> dict[str, Any]:
    store = Checkpoint(Path(inputs[0].path).with_name("model.json"), inputs)
    store.save(Position(0, 5, 1), "/tmp/rejected.jsonl", 12)
    document: dict[str, Any] = json.loads(store.path.read_text(encoding="utf-8"))
    store.path.unlink()
    return document


DAMAGE: list[tuple[str, Any]] = [
    ("position", [0, 5, 1]),
    ("position", {"file": [0], "offset": 5, "line": 1}),
    ("position", {"file": 0, "offset": "5", "line": 1}),
    ("position", {"file": 0, "offset": 5.0, "line": 1}),
    ("position", {"file": True, "offset": 5, "line": 1}),
    ("position", {"file": 0, "offset": -1, "line": 1}),
    ("position", {"file": 0, "offset": 5}),
    ("position", {"file": 0, "offset": 5, "line": 1, "extra": 1}),
    ("position", {"file": 1, "offset": 0, "line": 0}),
    ("position", {"file": 0, "offset": 10**9, "line": 1}),
    ("position", None),
    ("position", "0:5:1"),
    ("rejected", 12),
    ("rejected", []),
    ("rejected", {"path": 12, "size": 12}),
    ("rejected", {"path": "/tmp/r", "size": "12"}),
    ("rejected", {"path": "/tmp/r", "size": -12}),
    ("rejected", {"path": "/tmp/r"}),
    ("inputs", ["a", "b"]),
    ("inputs", 7),
    ("version", 2),
    ("version", None),
]


@pytest.mark.parametrize(("key", "value"), DAMAGE)
def test_a_checkpoint_of_the_wrong_shape_is_a_checkpoint_error(
    tmp_path: Path, inputs: list[Input], key: str, value: Any
) -> None:
    document = _valid(inputs)
    document[key] = value
    (tmp_path / "ck.json").write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(CheckpointError):
        Checkpoint(tmp_path / "ck.json", inputs).load()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[]",
        b"null",
        b'"checkpoint"',
        b"\xff\xfe not utf-8",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"version": 1, "inputs": [], "pad": "' + b"x" * (1 << 20) + b'"}',
    ],
)
def test_a_file_that_is_no_checkpoint_is_a_checkpoint_error(
    tmp_path: Path, inputs: list[Input], content: bytes
) -> None:
    (tmp_path / "ck.json").write_bytes(content)
    with pytest.raises(CheckpointError):
        Checkpoint(tmp_path / "ck.json", inputs).load()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.lists(st.sampled_from(["position", "rejected", "file", "offset", "line", "size"])),
    value=_JSON,
)
def test_any_damage_loads_as_a_sane_resume_or_a_checkpoint_error(
    tmp_path: Path, inputs: list[Input], path: list[str], value: Any
) -> None:
    document = _valid(inputs)
    node: Any = document
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            break
        node = node[key]
    node[path[-1] if path else "position"] = value
    (tmp_path / "ck.json").write_text(json.dumps(document), encoding="utf-8")
    try:
        resume = Checkpoint(tmp_path / "ck.json", inputs).load()
    except CheckpointError:
        return
    assert isinstance(resume, Resume)
    assert all(type(n) is int and n >= 0 for n in resume.position)
    assert resume.position.file < len(inputs)
    assert resume.position.offset <= os.path.getsize(inputs[0].path)
    assert resume.rejected is None or isinstance(resume.rejected, str)
    assert resume.rejected_size is None or resume.rejected_size >= 0


def test_the_command_line_refuses_a_damaged_checkpoint_with_exit_2(
    tmp_path: Path, inputs: list[Input]
) -> None:
    document = _valid(inputs)
    document["position"] = {"file": [0], "offset": 5, "line": 1}
    checkpoint = tmp_path / "ck.json"
    checkpoint.write_text(json.dumps(document), encoding="utf-8")
    rejected = tmp_path / "rejected.jsonl"
    with FaultServer() as server:
        args = ("--checkpoint", checkpoint, "--rejected", rejected, "--base-url", server.url)
        result = invoke("send", inputs[0].path, *args)
        assert result.exit_code == 2
        assert result.stderr == (
            f"togai-ingest: error: checkpoint {checkpoint} is damaged; delete it to start over\n"
        )
        assert server.requests == [] and not rejected.exists()


# --- The watermark orders the rejected file


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    kinds=st.lists(st.sampled_from(["ok", "rejected", "invalid"]), max_size=40),
    size=st.integers(1, 4),
    data=st.data(),
)
def test_entries_come_out_in_input_order_exactly_when_the_watermark_passes_them(
    kinds: list[str], size: int, data: st.DataObject
) -> None:
    """Batches complete in any order, invalid records come in between: the entries handed
    out are always exactly those of the records before the watermark, in input order (so
    the rejected file's size saved with the watermark is the size at the watermark)."""
    mark = Watermark(Position(0, 0, 0))
    expected = [str(line).encode() for line, kind in enumerate(kinds, 1) if kind != "ok"]
    written: list[bytes] = []
    lines: dict[int, int] = {}  # index in send -> line
    batches: list[tuple[int, int]] = []  # (start, count) handed to send, not completed
    fed, chunk_start = 0, 0

    def check() -> None:
        below = [entry for entry in expected if int(entry) <= mark.position.line]
        assert written == below

    def complete(start: int, count: int) -> None:
        order = data.draw(st.permutations(range(start, start + count)))
        for index in order:
            if kinds[lines[index] - 1] == "rejected":
                mark.note(index, str(lines[index]).encode())
        if mark.done(start, count, written.append):
            check()
        else:
            assert written == [e for e in expected if int(e) <= mark.position.line]

    while fed < len(kinds) or batches or mark.handed > chunk_start:
        if fed < len(kinds) and (not batches or data.draw(st.booleans())):
            fed += 1
            kind = kinds[fed - 1]
            end = Position(0, fed * 10, fed)
            if kind == "invalid":
                if mark.local(end, str(fed).encode(), written.append):
                    check()
                continue
            index = mark.sent(f"f:{fed}", end, None)
            lines[index] = fed
            if index + 1 - chunk_start == size:
                batches.append((chunk_start, size))
                chunk_start = index + 1
            continue
        if fed == len(kinds) and mark.handed > chunk_start:  # the last, partial chunk
            batches.append((chunk_start, mark.handed - chunk_start))
            chunk_start = mark.handed
        if batches:
            start, count = batches.pop(data.draw(st.integers(0, len(batches) - 1)))
            complete(start, count)
    mark.pending(written.append)
    assert written == expected
    assert mark.outstanding == 0
    assert mark.position.line == len(kinds)


def test_pending_entries_are_handed_out_at_the_end_in_input_order() -> None:
    mark = Watermark(Position(0, 0, 0))
    for line in (1, 2, 3):
        mark.sent(f"f:{line}", Position(0, line, line), None)
    written: list[bytes] = []
    assert not mark.local(Position(0, 4, 4), b"4", written.append)
    mark.note(2, b"3")
    mark.note(0, b"1")
    mark.settle(0, 3)  # reported (a refused token) but not done: the watermark stays
    assert mark.position == Position(0, 0, 0)
    mark.pending(written.append)
    assert written == [b"1", b"3", b"4"]
    mark.pending(written.append)
    assert written == [b"1", b"3", b"4"]


def test_many_waiting_entries_spill_to_a_temporary_file_and_come_back_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A valid record whose batch is not sent yet, then many invalid ones: their entries
    wait beyond a small memory budget in a temporary file, and come out in order."""
    monkeypatch.setattr(checkpoint, "_IN_MEMORY", 64)
    mark = Watermark(Position(0, 0, 0))
    written: list[bytes] = []
    mark.sent("f:1", Position(0, 1, 1), None)
    for line in range(2, 200):
        assert not mark.local(Position(0, line, line), b"%d" % line, written.append)
    mark.sent("f:200", Position(0, 200, 200), None)
    for line in range(201, 300):
        assert not mark.local(Position(0, line, line), b"%d" % line, written.append)
    assert mark.done(0, 1, written.append) and written == [b"%d" % n for n in range(2, 200)]
    assert mark.position == Position(0, 199, 199)
    assert mark.local(Position(0, 300, 300), None, written.append) is False
    assert mark.done(1, 1, written.append)
    assert written == [b"%d" % n for n in range(2, 300) if n != 200]
    assert mark.local(Position(0, 301, 301), b"301", written.append)
    assert written[-1] == b"301"
