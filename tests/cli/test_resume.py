"""``send --checkpoint``: resuming after ``kill -9`` and Ctrl-C; nothing lost or metered twice.

The events have no ids: ``togai-ingest`` derives them from their content, so the events a
resumed run sends again carry the same ids and the server (``FaultServer``'s ledger, which
deduplicates by id as Togai does) meters each one once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.cli import CLI, environment, event, ids_of, read_jsonl, run_cli, write_jsonl
from tests.faultserver import FaultServer, IdSample

CONCURRENCY, BATCH = 4, 100


def _args(path: Path, server: FaultServer, checkpoint: Path) -> list[str]:
    return [
        "send", str(path), "--base-url", server.url, "--checkpoint", str(checkpoint),
        "--rejected", str(path.with_name("rejected.jsonl")), "--rate-limit", "0",
        "--concurrency", str(CONCURRENCY), "--batch-size", str(BATCH),
    ]  # fmt: skip


def _line_of(checkpoint: Path) -> int:
    try:
        return int(json.loads(checkpoint.read_text(encoding="utf-8"))["position"]["line"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _start_and_signal(args: list[str], checkpoint: Path, after: int, signum: int) -> int:
    """Run ``togai-ingest ARGS``, send ``signum`` once ``after`` lines are checkpointed."""
    process = subprocess.Popen(
        [str(CLI), *args],
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while _line_of(checkpoint) < after and process.poll() is None:
        assert time.monotonic() < deadline, "the run did not get far enough"
        time.sleep(0.01)
    assert process.poll() is None, f"finished before the signal: {process.stderr}"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    if signum == signal.SIGINT:
        assert "interrupted" in stderr, stderr
    return process.returncode


def _settled(server: FaultServer) -> Counter[str]:
    """The deliveries once every request that reached the server has been answered."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with server.lock:
            if server.arrivals == len(server.requests):
                return Counter(server.deliveries)
        time.sleep(0.02)
    raise AssertionError("the server is still busy with requests of the killed run")


def test_resume_after_kill_9_loses_nothing_and_meters_nothing_twice(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [event(n) for n in range(20_000)])
    ids = ids_of(path)
    checkpoint = tmp_path / "checkpoint.json"
    with FaultServer(latency=0.03) as server:
        args = _args(path, server, checkpoint)
        assert _start_and_signal(args, checkpoint, 4000, signal.SIGKILL) == -signal.SIGKILL
        watermark = _line_of(checkpoint)
        before = _settled(server)
        assert 4000 <= watermark < 20_000
        assert all(before[i] == 1 for i in ids[:watermark]), "the first run lost events"

        second = run_cli(*args)
        assert second.returncode == 0, second.stderr
        assert f"resuming after {path}:{watermark}, as {checkpoint} says" in second.stderr

        assert server.violations == []
        assert set(server.ledger) == set(ids) and len(server.ledger) == len(ids)
        again = {i for i in ids if before[i] and server.deliveries[i] > before[i]}
        assert not again & set(ids[:watermark]), "events before the watermark were sent again"
        assert len(again) <= CONCURRENCY * BATCH, len(again)
        assert all(server.deliveries[i] <= 2 for i in ids)
        assert _line_of(checkpoint) == 20_000


def test_ctrl_c_finishes_the_batches_in_flight_and_resumes_exactly(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [event(n) for n in range(6000)])
    ids = ids_of(path)
    checkpoint = tmp_path / "checkpoint.json"
    with FaultServer(latency=0.03) as server:
        args = _args(path, server, checkpoint)
        assert _start_and_signal(args, checkpoint, 1000, signal.SIGINT) == 130
        watermark = _line_of(checkpoint)
        assert 1000 <= watermark < 6000
        assert set(server.ledger) == set(ids[:watermark])  # everything sent was acknowledged

        second = run_cli(*args)
        assert second.returncode == 0, second.stderr
        assert set(server.ledger) == set(ids)
        assert set(server.deliveries.values()) == {1}  # nothing was sent twice


def test_after_kill_9_and_a_resume_the_rejected_file_has_each_entry_once(tmp_path: Path) -> None:
    """Entries of records past the watermark (batches done out of order, invalid records
    after a batch in flight) used to be written at once and counted in the size saved with
    the watermark; a resumed run wrote them again. Now the file is written in watermark
    order, so each invalid or rejected record is in it exactly once, in input order."""
    lines = [event(n, accountId=None) if n % 37 == 5 else event(n) for n in range(8000)]
    path = write_jsonl(tmp_path / "events.jsonl", lines)
    ids = ids_of(path)
    rejects = IdSample(one_in=29, salt="resume")
    checkpoint = tmp_path / "checkpoint.json"
    with FaultServer(latency=0.03, reject_if=rejects) as server:
        args = _args(path, server, checkpoint)
        assert _start_and_signal(args, checkpoint, 2000, signal.SIGKILL) == -signal.SIGKILL
        assert _line_of(checkpoint) < 8000
        _settled(server)
        second = run_cli(*args)
        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stderr

    valid_lines = [n + 1 for n in range(8000) if n % 37 != 5]
    rejected_lines = {line for line, i in zip(valid_lines, ids, strict=True) if rejects(i)}
    invalid_lines = {n + 1 for n in range(8000) if n % 37 == 5}
    entries = read_jsonl(tmp_path / "rejected.jsonl")
    sources = [int(entry["source"].rsplit(":", 1)[1]) for entry in entries]
    assert len(sources) == len(set(sources)), "entries written twice"
    assert sources == sorted(invalid_lines | rejected_lines)
    kinds = {int(e["source"].rsplit(":", 1)[1]): e["kind"] for e in entries}
    assert {line for line, kind in kinds.items() if kind == "invalid"} == invalid_lines
    assert _line_of(checkpoint) == 8000
