"""Settings that cannot work are refused at once, with exit 2, before any input is read or any
output opened: numbers that are not finite (click's ``FloatRange`` accepts ``nan``) or out of
a sane range, and base URLs the client refuses at construction (``ConfigurationError``)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cli import CLI, environment, event, write_jsonl
from tests.faultserver import FaultServer
from togai_ingest.cli import main

BAD_NUMBERS = [
    ("--rate-limit", "nan"),
    ("--rate-limit", "NaN"),
    ("--rate-limit", "inf"),
    ("--rate-limit", "1e400"),
    ("--rate-limit", "-1"),
    ("--rate-limit", "1e-9"),
    ("--progress-interval", "nan"),
    ("--progress-interval", "inf"),
    ("--progress-interval", "0"),
    ("--progress-interval", "0.001"),
    ("--timeout", "nan"),
    ("--timeout", "inf"),
    ("--timeout", "-inf"),
    ("--timeout", "0"),
    ("--timeout", "1e9"),
]

BAD_URLS = [
    "api.togai.com",
    "ftp://api.togai.com",
    "https://",
    "https://api.togai.com\n",
    "http://[::1",
    "https:///ingest",
]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def _invoke(*args: str | Path, base_url: str | None = None) -> tuple[int, str]:
    env = {"TOGAI_API_TOKEN": "t0k3n", "TOGAI_BASE_URL": base_url}
    result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
    return result.exit_code, result.stderr


@pytest.mark.parametrize(("option", "value"), BAD_NUMBERS)
def test_numbers_that_cannot_work_are_usage_errors(
    tmp_path: Path, server: FaultServer, option: str, value: str
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    rejected = tmp_path / "rejected.jsonl"
    args = ("--base-url", server.url, "--rejected", rejected)
    code, stderr = _invoke("send", path, option, value, *args)
    assert code == 2, stderr
    assert f"Invalid value for '{option}'" in stderr
    assert not rejected.exists() and server.requests == []


def test_the_edges_that_do_work(tmp_path: Path, server: FaultServer) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    args = ("--rate-limit", "0", "--timeout", "3600", "--progress-interval", "0.05")
    code, stderr = _invoke("send", path, "--base-url", server.url, *args)
    assert code == 0, stderr
    code, stderr = _invoke("send", path, "--base-url", server.url, "--rate-limit", "0.01")
    assert code == 0, stderr
    assert len(server.requests) == 2


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_base_url_is_a_named_error_before_anything_is_written(
    tmp_path: Path, url: str
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    rejected = tmp_path / "rejected.jsonl"
    rejected.write_text("from the last run\n", encoding="utf-8")
    checkpoint = tmp_path / "ck.json"
    outputs = ("--rejected", rejected, "--checkpoint", checkpoint)
    for how in ("option", "environment"):
        started = time.monotonic()
        if how == "option":
            code, stderr = _invoke("send", path, "--base-url", url, *outputs)
        else:
            code, stderr = _invoke("send", path, *outputs, base_url=url)
        assert code == 2, stderr
        assert stderr.startswith("togai-ingest: error: base_url ") and "Traceback" not in stderr
        assert time.monotonic() - started < 2
        assert rejected.read_text(encoding="utf-8") == "from the last run\n"
        assert not checkpoint.exists()


def test_a_bad_base_url_is_refused_before_standard_input_is_read(tmp_path: Path) -> None:
    """Standard input is a pipe nobody writes to or closes: reading it would hang."""
    rejected = tmp_path / "rejected.jsonl"
    process = subprocess.Popen(
        [str(CLI), "send", "-", "--rejected", str(rejected), "--base-url", "ftp://x"],
        env=environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        assert process.stdin is not None
        process.stdin.close()
    assert process.returncode == 2
    assert "togai-ingest: error: base_url must start with https://" in stderr
    assert not rejected.exists()
