"""``togai-ingest drain PATH`` on real spool files, as a subprocess: the summary, the
``--rejected`` file and the exit statuses of ``send``; safe beside a live sender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli import TOKEN, environment, run_cli
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, RetryPolicy
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


def test_drain_of_a_damaged_file_fails_and_leaves_it_alone(tmp_path: Path) -> None:
    spool = tmp_path / "garbage.spool"
    garbage = os.urandom(4096)
    spool.write_bytes(garbage)
    done = run_cli("drain", spool, "--base-url", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "togai-ingest: error: cannot open the spool" in done.stderr
    assert spool.read_bytes() == garbage


def test_drain_with_a_refused_token_keeps_the_events(tmp_path: Path) -> None:
    spool = tmp_path / "app.spool"
    _left_behind(spool, [f"k-{i}" for i in range(30)])
    with FaultServer(token="another-token") as srv:
        done = run_cli("drain", spool, "--base-url", srv.url)
    assert done.returncode == 2
    assert "refused the token" in done.stderr
    assert TOKEN not in done.stderr + done.stdout
    assert sorted(SpoolQueue(spool).ids()) == sorted(f"k-{i}" for i in range(30))
