"""``togai-ingest drain PATH`` on real spool files, as a subprocess: the progress, summary,
``--rejected`` file and exit statuses of ``send``; safe beside a live sender; a damaged row
is invalid, a damaged file is salvaged (``test_salvage.py``)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.cli import TOKEN, environment, run_cli
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, RetryPolicy
from togai_ingest.salvage import layout
from togai_ingest.spool import SpoolQueue

ROOT = Path(__file__).resolve().parents[2]


def _left_behind(spool: Path, ids: list[str]) -> None:
    """A spool whose sender never reached the API (a pod that died during an outage)."""
    client = Client(TOKEN, base_url="http://127.0.0.1:9", retry=RetryPolicy(max_retries=0))
    sender = BackgroundSender(client, spool_path=spool, flush_interval=60)
    for event_id in ids:
        sender.enqueue(wire_event(id=event_id))
    assert sorted(sender.close(timeout=0.1).spooled) == sorted(ids)


def test_drain_sends_what_a_spool_holds_and_reports_like_send(tmp_path: Path) -> None:
    spool, rejected = tmp_path / "app.spool", tmp_path / "rejected.jsonl"
    ids = [f"d-{i}" for i in range(250)] + ["bad-1", "bad-2"]
    _left_behind(spool, ids)
    with FaultServer(token=TOKEN, reject_if=lambda i: i.startswith("bad")) as srv:
        done = run_cli("drain", spool, "--base-url", srv.url, "--rejected", rejected)
        again = run_cli("drain", spool, "--base-url", srv.url)
    assert done.returncode == 1, done.stderr
    assert "summary: 250 accepted, 2 rejected, 0 failed, 0 invalid; 252 events" in done.stdout
    assert f"rejected file: {rejected} (2 events)" in done.stdout
    lines = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert [(x["kind"], x["event"]["id"]) for x in lines] == [
        ("rejected", "bad-1"),
        ("rejected", "bad-2"),
    ]
    assert all(x["reason"] and x["source"] for x in lines)
    assert sorted(srv.ledger) == sorted(ids[:-2])
    assert set(srv.deliveries.values()) == {1}
    assert again.returncode == 0, again.stderr
    assert "summary: 0 accepted" in again.stdout
    assert SpoolQueue(spool).ids() == []


def test_drain_beside_a_live_sender_sends_nothing_twice(tmp_path: Path) -> None:
    spool = tmp_path / "shared.spool"
    _left_behind(spool, [f"old-{i}" for i in range(1500)])
    code = """
    import os, sys
    from tests.unit.conftest import wire_event
    from togai_ingest import BackgroundSender
    sender = BackgroundSender(base_url=os.environ["SERVER_URL"], rate_limit=None,
                              spool_path=os.environ["SPOOL"], flush_interval=0.01)
    print("ready", flush=True)
    for i in range(1500):
        sender.enqueue(wire_event(id=f"live-{i}"))
    assert sender.close(30).ok
    """
    with FaultServer(token=TOKEN, latency=0.002) as srv:
        env = environment(SERVER_URL=srv.url, SPOOL=str(spool))
        live = subprocess.Popen(
            [sys.executable, "-c", "\n".join(line[4:] for line in code.splitlines())],
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert live.stdout is not None and live.stdout.readline().strip() == "ready"
        done = run_cli("drain", spool, "--base-url", srv.url, "--rate-limit", "0")
        _, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    assert done.returncode in (0, 1), done.stderr  # 1: some left to the live sender
    expected = [f"old-{i}" for i in range(1500)] + [f"live-{i}" for i in range(1500)]
    assert sorted(srv.ledger) == sorted(expected)
    assert set(srv.deliveries.values()) == {1}, "an event was sent by both"
    assert SpoolQueue(spool).ids() == []


def test_drain_of_a_garbage_file_salvages_it_and_never_changes_it(tmp_path: Path) -> None:
    spool = tmp_path / "garbage.spool"
    garbage = os.urandom(4096)
    spool.write_bytes(garbage)
    done = run_cli("drain", spool, "--base-url", "http://127.0.0.1:9")
    assert done.returncode == 1, done.stderr  # nothing readable: one page unreadable
    assert f"togai-ingest: {spool} is damaged or was moved aside: salvaging it" in done.stderr
    assert "salvage: 1 page unreadable (they may have held events)" in done.stderr
    assert "summary: 0 accepted, 0 rejected, 0 failed, 0 invalid; 0 events" in done.stdout
    assert not spool.exists()
    assert Path(f"{spool}.salvaged").read_bytes() == garbage


def test_drain_shows_progress_like_send(tmp_path: Path) -> None:
    spool = tmp_path / "app.spool"
    _left_behind(spool, [f"p-{i}" for i in range(1500)])
    with FaultServer(token=TOKEN, latency=0.05) as srv:
        done = run_cli(
            "drain", spool, "--base-url", srv.url, "--concurrency", "1", "--rate-limit", "0",
            "--progress-interval", "0.2",
        )  # fmt: skip
        quiet = run_cli("drain", spool, "--base-url", srv.url, "--quiet")
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("progress: ")]
    assert len(progress) >= 2, done.stderr
    for line in progress:
        assert re.fullmatch(
            r"progress: [\d,]+ events of 1,500 \(\d+%\), ETA [\d:?]+, [\d,]+ events/s, "
            r"[\d:]+ elapsed",
            line,
        ), line
    counts = [int(line.split()[1].replace(",", "")) for line in progress]
    assert counts == sorted(counts) and counts[-1] <= 1500
    assert "\x1b[" not in done.stderr
    assert "summary: 1,500 accepted, 0 rejected, 0 failed, 0 invalid; 1,500 events" in done.stdout
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_drain_reports_a_damaged_row_as_invalid_not_a_bad_request(tmp_path: Path) -> None:
    spool, rejected = tmp_path / "app.spool", tmp_path / "rejected.jsonl"
    _left_behind(spool, [f"r-{i}" for i in range(20)])
    shape = layout()  # where the spool keeps its events, learned from the spool itself
    conn = sqlite3.connect(spool)
    with conn:
        names = [row[1] for row in conn.execute(f'PRAGMA table_info("{shape.table}")')]
        id_col, body_col = names[shape.id_col], names[shape.body_col]
        conn.execute(
            f'UPDATE "{shape.table}" SET {body_col} = CAST(substr({body_col}, 1, 30) AS BLOB) '
            f"WHERE {id_col} = 'r-3'"
        )
        conn.execute(
            f'UPDATE "{shape.table}" SET {body_col} = '
            f"CAST(replace({body_col}, '\"r-4\"', '\"r-X\"') AS BLOB) WHERE {id_col} = 'r-4'"
        )
        conn.execute(  # still a valid event with its id: another value (its checksum tells)
            f'UPDATE "{shape.table}" SET {body_col} = '
            f"CAST(replace({body_col}, '\"12\"', '\"13\"') AS BLOB) WHERE {id_col} = 'r-5'"
        )
    conn.close()
    with FaultServer(token=TOKEN) as srv:
        done = run_cli(
            "drain", spool, "--base-url", srv.url, "--rejected", rejected, "--dead-letter"
        )
    assert done.returncode == 1, done.stderr
    assert not srv.violations
    assert sorted(srv.ledger) == sorted(f"r-{i}" for i in range(20) if i not in (3, 4, 5))
    assert "summary: 17 accepted, 0 rejected, 0 failed, 3 invalid; 20 events" in done.stdout
    entries = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert sorted(e["kind"] for e in entries) == ["invalid"] * 3
    assert any("not JSON (a damaged row)" in e["reason"] for e in entries)
    assert any("is not the event's id 'r-X'" in e["reason"] for e in entries)
    assert any("the checksum differs" in e["reason"] for e in entries)
    queue = SpoolQueue(spool)
    try:
        assert queue.ids() == []
        assert sorted(i for i, _, _ in queue.dead_letters()) == ["r-3", "r-4", "r-5"]
    finally:
        queue.shutdown()


def test_drain_with_a_refused_token_keeps_the_events(tmp_path: Path) -> None:
    spool = tmp_path / "app.spool"
    _left_behind(spool, [f"k-{i}" for i in range(30)])
    with FaultServer(token="another-token") as srv:
        done = run_cli("drain", spool, "--base-url", srv.url)
    assert done.returncode == 2
    assert "refused the token" in done.stderr
    assert TOKEN not in done.stderr + done.stdout
    assert sorted(SpoolQueue(spool).ids()) == sorted(f"k-{i}" for i in range(30))
