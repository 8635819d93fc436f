"""Every ``send`` ends with a summary whose counts add up to the records read, whatever the
server answers, and no raw traceback reaches the user.

``accepted + rejected + failed + invalid`` is the number of records read; the rejected file
holds exactly one entry per record not accepted; the exit status is 0, 1 or 2 (a refused
token), never an exception. The servers: ``tests/hostile.py`` (any status, any body: a 200
HTML page from a proxy, a 204, a 207 naming events that were not sent or none at all, the
same event twice) and ``tests/faultserver.py`` with a mixed fault script.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli import event, read_jsonl, run_cli, write_jsonl
from tests.faultserver import FaultServer, IdSample, mixed_script
from tests.hostile import Reply, Request, batch_errors, serving
from togai_ingest.cli import main

JSON = (("Content-Type", "application/json"),)


def _ids(request: Request) -> list[str]:
    try:
        return request.event_ids()
    except (ValueError, KeyError, TypeError):
        return []


ANSWERS: dict[str, Callable[[Request], Reply]] = {
    "accept": lambda r: Reply(202, b'{"errors": []}'),
    "accept-empty": lambda r: Reply(202, b""),
    "accept-garbage": lambda r: Reply(202, b"<<fine>>"),
    "html-200": lambda r: Reply(200, b"<html>proxy</html>", (("Content-Type", "text/html"),)),
    "no-content-204": lambda r: Reply(204, b""),
    "207-no-payload": lambda r: Reply(207, batch_errors([None])),
    "207-unknown-id": lambda r: Reply(207, batch_errors(["never-sent"])),
    "207-first": lambda r: Reply(207, batch_errors(_ids(r)[:1])),
    "207-first-twice": lambda r: Reply(207, batch_errors(_ids(r)[:1] * 2)),
    "207-all": lambda r: Reply(207, batch_errors(_ids(r))),
    "207-garbage": lambda r: Reply(207, b'{"errors": [1, "x", {"eventPayload": 7}]}'),
    "207-not-json": lambda r: Reply(207, b"{"),
    "400": lambda r: Reply(400, b'{"message": "bad"}'),
    "422": lambda r: Reply(422, b'{"message": "too large"}'),
    "429": lambda r: Reply(429, b"", (*JSON, ("Retry-After", "0"))),
    "500": lambda r: Reply(500, b"oops"),
    "520": lambda r: Reply(520, b'{"message": "upstream went aw'),
    "closed": lambda r: Reply(close=True),
    "401": lambda r: Reply(401, b'{"message": "bad token"}'),
}


def summary(stdout: str) -> dict[str, int]:
    match = re.search(
        r"summary: ([\d,]+) accepted, ([\d,]+) rejected, ([\d,]+) failed, ([\d,]+) invalid; "
        r"([\d,]+) events",
        stdout,
    )
    assert match is not None, stdout
    counts = [int(n.replace(",", "")) for n in match.groups()]
    return dict(zip(("accepted", "rejected", "failed", "invalid", "total"), counts, strict=True))


def _check(stdout: str, stderr: str, code: int, rejected: Path, read: int | None) -> None:
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "records read" not in stderr
    counts = summary(stdout)
    entries = read_jsonl(rejected)
    not_accepted = counts["rejected"] + counts["failed"] + counts["invalid"]
    assert counts["accepted"] + not_accepted == counts["total"]
    if read is not None:
        assert counts["total"] == read
    assert len(entries) == not_accepted
    sources = [entry["source"] for entry in entries]
    assert len(set(sources)) == len(sources), "a record reported twice"
    for kind in ("rejected", "failed", "invalid"):
        assert sum(entry["kind"] == kind for entry in entries) == counts[kind]
    assert code == (2 if "refused the token" in stderr else 1 if not_accepted else 0), stderr


def _lines(count: int, invalid_every: int) -> list[dict[str, Any] | str]:
    lines: list[dict[str, Any] | str] = []
    for n in range(count):
        if invalid_every and n % invalid_every == invalid_every - 1:
            lines.append("{not json" if n % 2 else event(n, accountId=None))
        else:
            lines.append(event(n))
    return lines


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    answers=st.lists(st.sampled_from(sorted(ANSWERS)), min_size=1, max_size=6),
    count=st.integers(0, 25),
    invalid_every=st.integers(0, 4),
    batch=st.integers(1, 7),
)
def test_whatever_the_server_answers_the_counts_add_up(
    tmp_path: Path, answers: list[str], count: int, invalid_every: int, batch: int
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", _lines(count, invalid_every))
    rejected = tmp_path / "rejected.jsonl"
    turn = iter(range(10**9))

    def script(request: Request) -> Reply:
        return ANSWERS[answers[next(turn) % len(answers)]](request)

    with serving(script) as server:
        args = ["send", str(path), "--base-url", server.url, "--rejected", str(rejected)]
        args += ["--rate-limit", "0", "--retries", "0", "--timeout", "5"]  # no backoff waits
        args += ["--batch-size", str(batch), "--concurrency", "2"]
        env = {"TOGAI_API_TOKEN": "t0k3n", "TOGAI_BASE_URL": None}
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    refused = "refused the token" in result.stderr
    _check(result.stdout, result.stderr, result.exit_code, rejected, None if refused else count)


def test_a_mixed_fault_script_in_a_subprocess(tmp_path: Path) -> None:
    lines = _lines(600, invalid_every=41)
    path = write_jsonl(tmp_path / "e.jsonl", lines)
    rejected = tmp_path / "rejected.jsonl"
    script = mixed_script(11, 40, fault_rate=0.4, client_errors=True)
    with FaultServer(script=script, reject_if=IdSample(one_in=53)) as server:
        run = run_cli(
            "send", path, "--base-url", server.url, "--rejected", rejected,
            "--rate-limit", "0", "--retries", "1", "--batch-size", "25",
        )  # fmt: skip
        _check(run.stdout, run.stderr, run.returncode, rejected, len(lines))
        assert server.violations == []


def test_bad_input_files_give_no_traceback(tmp_path: Path) -> None:
    """Inputs that cannot be read as a whole: a named error and exit 2, nothing else."""
    directory_like = tmp_path / "header.csv"
    directory_like.write_text('eventName,"eventTimestamp\n', encoding="utf-8")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_bytes(b"")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 64)
    with FaultServer() as server:
        for path, code in ((directory_like, 2), (empty_csv, 0), (binary, 1)):
            run = run_cli("send", path, "--base-url", server.url, "--rate-limit", "0")
            assert run.returncode == code, run.stderr
            assert "Traceback" not in run.stderr
            if code == 2:
                assert run.stderr.startswith("togai-ingest: error: ")
            else:
                assert summary(run.stdout)["total"] == (0 if path == empty_csv else 65)
