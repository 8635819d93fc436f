"""``togai-ingest send|drain --rate-limit-url``: the command line shares the quota through a real
redis-server, and goes on (exit 0, nothing lost) when the URL points at no Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.conftest import SECRET
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest.shared_limit import SharedRateLimit, bucket_key


def _send(url: str, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOGAI_API_TOKEN": SECRET, "TOGAI_BASE_URL": url}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "togai_ingest.cli",
            "send",
            str(source),
            "--batch-size",
            "10",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_send_shares_the_quota_through_redis(tmp_path: Path, redis_url: str) -> None:
    """Another process of the same organisation has reserved 5 s of a 5/s quota: the command
    line, sharing the bucket, must wait for it (alone it would take about 2 s)."""
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(wire_event(id=f"cli-{i}")) + "\n" for i in range(100)))
    other = SharedRateLimit(redis_url, 5, token=SECRET, adaptive=False)
    for _ in range(25):
        assert other.bucket.reserve() is not None  # slots reserved ahead, without waiting
    with FaultServer(token=SECRET) as server:
        started = time.monotonic()
        run = _send(server.url, source, "--rate-limit", "5", "--rate-limit-url", redis_url)
        took = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert len(server.ledger) == 100
    assert took >= 4.5, took
    assert redis.Redis.from_url(redis_url).exists(bucket_key(None, SECRET, "ingest"))


def test_send_goes_on_when_the_redis_url_answers_nothing(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(wire_event(id=f"cli-{i}")) + "\n" for i in range(50)))
    with FaultServer(token=SECRET) as server:
        run = _send(server.url, source, "--rate-limit-url", "redis://127.0.0.1:9/0")
    assert run.returncode == 0, run.stderr
    assert len(server.ledger) == 50
    assert "WARNING" in run.stderr or "Redis" in run.stderr
