"""``togai-ingest send`` and ``validate`` end to end, against ``FaultServer`` on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import openapi
from tests.cli import event, ids_of, invoke, read_jsonl, run_cli, write_jsonl
from tests.faultserver import FaultServer, Unavailable, unavailable_burst

REPO = Path(__file__).resolve().parents[2]
FAST = ("--rate-limit", "0")

MAX_BATCH = openapi.limit("IngestBatchEventRequest", "events", "maxItems")


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def summary(stdout: str) -> dict[str, int]:
    match = re.search(
        r"summary: ([\d,]+) accepted, ([\d,]+) rejected, ([\d,]+) failed, "
        r"([\d,]+) invalid",
        stdout,
    )
    assert match is not None, stdout
    counts = [int(n.replace(",", "")) for n in match.groups()]
    return dict(zip(("accepted", "rejected", "failed", "invalid"), counts, strict=True))


# --- validate


def test_validate_reports_each_bad_line_and_a_total(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "e.jsonl", [event(1), event(2, accountId=None), "{oops", event(4)]
    )
    run = run_cli("validate", path)
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == [
        f"{path}:2: event.accountId: required property is missing",
        f"{path}:3: not JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        "4 records: 2 valid, 2 invalid",
    ]
    assert run_cli("validate", write_jsonl(tmp_path / "ok.jsonl", [event(1)])).returncode == 0


def test_validate_unreadable_input_is_exit_2(tmp_path: Path) -> None:
    assert run_cli("validate", tmp_path / "missing.jsonl").returncode == 2
    bad_header = tmp_path / "e.csv"
    bad_header.write_text("eventName,colour\n", encoding="utf-8")
    run = run_cli("validate", bad_header)
    assert run.returncode == 2 and "unknown column 'colour'" in run.stderr


def _make_sample() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_sample", REPO / "scripts" / "make_sample.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_samples_are_what_make_sample_writes_and_validate_as_documented() -> None:
    make_sample = _make_sample()
    shipped = (REPO / "examples" / "events.jsonl").read_text(encoding="utf-8")
    assert shipped == "".join(line + "\n" for line in make_sample.jsonl_lines())
    assert (REPO / "examples" / "events.csv").read_text(encoding="utf-8") == make_sample.csv_text()
    result = invoke(
        "validate", REPO / "examples" / "events.jsonl", REPO / "examples" / "events.csv"
    )
    bad = [line.split(":")[1] for line in result.stdout.splitlines()[:-1]]
    assert bad == [str(n) for n in make_sample.INVALID_LINES]
    assert result.exit_code == 1


# --- send: outcomes and exit status


def test_send_everything_accepted_is_exit_0(tmp_path: Path, server: FaultServer) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(250)])
    run = run_cli("send", path, "--base-url", server.url, *FAST)
    assert run.returncode == 0, run.stderr
    assert summary(run.stdout) == {"accepted": 250, "rejected": 0, "failed": 0, "invalid": 0}
    assert sorted(server.ledger) == sorted(ids_of(path))
    assert server.violations == []
    size = openapi.limit("IngestBatchEventRequest", "events", "maxItems")
    full, rest = divmod(250, size)
    assert sorted(len(r.event_ids) for r in server.requests) == sorted(
        [size] * full + ([rest] if rest else [])
    )


def test_rejected_file_lists_every_problem_and_can_be_sent_again(
    tmp_path: Path,
) -> None:
    events = [event(n) for n in range(10)]
    path = write_jsonl(
        tmp_path / "e.jsonl", [*events[:5], event(50, accountId=None), "{cut", *events[5:]]
    )
    refused = {ids_of(path)[3]}
    rejected = tmp_path / "rejected.jsonl"
    with FaultServer(reject_if=lambda event_id: event_id in refused) as server:
        result = invoke("send", path, "--base-url", server.url, "--rejected", rejected, *FAST)
        assert result.exit_code == 1, result.output
        assert summary(result.stdout) == {"accepted": 9, "rejected": 1, "failed": 0, "invalid": 2}
        entries = read_jsonl(rejected)
        assert [(e["kind"], e["source"]) for e in entries] == [  # in input order
            ("rejected", f"{path}:4"),
            ("invalid", f"{path}:6"),
            ("invalid", f"{path}:7"),
        ]
        assert entries[1]["event"] == event(50, accountId=None)
        assert entries[1]["reason"] == "event.accountId: required property is missing"
        assert entries[2]["event"] == "{cut" and entries[2]["reason"].startswith("not JSON")
        assert entries[0]["event"] == {**events[3], "id": ids_of(path)[3]}
        assert "always rejects" in entries[0]["reason"]
        assert "rejected file: " in result.stdout

        entries[1]["event"]["accountId"] = "acct-fixed"
        entries[2]["event"] = json.dumps(event(51))
        fixed = write_jsonl(tmp_path / "fixed.jsonl", entries)
        refused.clear()
        again = invoke("send", fixed, "--base-url", server.url, *FAST)
        assert again.exit_code == 0, again.output
        assert set(server.ledger) == set(ids_of(path)) | set(ids_of(fixed))
        assert len(server.ledger) == 12 and server.violations == []


def test_failed_requests_are_recorded_with_the_error_and_retried_ones_are_not(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(300)])
    rejected = tmp_path / "rejected.jsonl"
    with FaultServer(script=[Unavailable(retry_after=0), *unavailable_burst(2)]) as server:
        result = invoke(
            "send", path, "--base-url", server.url, "--rejected", rejected, "--retries", "0",
            "--concurrency", "1", *FAST,
        )  # fmt: skip
        assert result.exit_code == 1
        assert summary(result.stdout) == {"accepted": 0, "rejected": 0, "failed": 300, "invalid": 0}
        entries = read_jsonl(rejected)
        assert {e["kind"] for e in entries} == {"failed"} and len(entries) == 300
        assert "HTTP 503" in entries[0]["reason"]
        retried = invoke("send", rejected, "--base-url", server.url, "--retries", "3", *FAST)
        assert retried.exit_code == 0
        assert len(server.ledger) == 300


def test_503s_are_retried_within_the_retry_budget(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(200)])
    with FaultServer(script=unavailable_burst(3, retry_after=0)) as server:
        result = invoke("send", path, "--base-url", server.url, *FAST)
        assert result.exit_code == 0, result.output
        assert len(server.ledger) == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--batch-size", str(MAX_BATCH + 1)),
            f"{MAX_BATCH + 1} is not in the range 1<=x<={MAX_BATCH}",
        ),
        (("--assume-timezone", "Mars/Base"), "unknown time zone 'Mars/Base'"),
        (("--concurrency", "0"), "0 is not in the range"),
        (("--format", "xml"), "'xml' is not one of"),
    ],
)
def test_usage_errors_are_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    result = invoke("send", path, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_no_token_missing_file_and_refused_token_are_exit_2(
    tmp_path: Path, server: FaultServer
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(5)])
    no_token = run_cli("send", path, "--base-url", server.url, token=None)
    assert no_token.returncode == 2 and "TOGAI_API_TOKEN" in no_token.stderr
    missing = run_cli("send", tmp_path / "nope.jsonl", "--base-url", server.url)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    refused = run_cli("send", path, "--base-url", server.url, token="wrong-token")
    assert refused.returncode == 2 and "refused the token" in refused.stderr
    assert "wrong-token" not in refused.stderr + refused.stdout
    assert server.ledger == {}


def test_outputs_must_not_overwrite_an_input(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    for option in ("--rejected", "--checkpoint"):
        result = invoke("send", path, option, path)
        assert result.exit_code == 2 and "is the same file as input" in result.stderr
    assert path.read_text(encoding="utf-8").count("\n") == 1


def test_plain_http_to_another_host_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    result = invoke("send", path, "--base-url", "http://example.com")
    assert result.exit_code == 2 and "plain http" in result.stderr


# --- send: inputs


def test_ids_are_stable_across_runs_and_identical_rows_are_one_event(
    tmp_path: Path, server: FaultServer
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1), event(2), event(1), event(3)])
    for _ in range(2):
        run = run_cli("send", path, "--base-url", server.url, *FAST)
        assert run.returncode == 0, run.stderr
    assert sorted(server.ledger) == sorted(set(ids_of(path)))
    assert len(server.ledger) == 3
    assert server.deliveries[ids_of(path)[0]] == 4  # twice per run, metered once
    assert {server.deliveries[i] for i in ids_of(path)[1:]} <= {2, 4}


def test_csv_is_sent_in_wire_form(server: FaultServer) -> None:
    sample = REPO / "examples" / "events.csv"
    result = invoke("send", sample, "--base-url", server.url, *FAST)
    assert result.exit_code == 0, result.output
    assert sorted(server.ledger) == sorted(ids_of(sample, "csv")) and len(server.ledger) == 12
    first = server.ledger[ids_of(sample, "csv")[0]]
    assert first["eventAttributes"][1] == {
        "attributeName": "responseTime",
        "attributeValue": "196",
        "attributeValueUnit": "Milliseconds",
    }
    assert set(first["dimensions"]) == {"endpoint", "region"}
    assert server.violations == []


def test_stdin_is_read_as_json_lines(tmp_path: Path, server: FaultServer) -> None:
    lines = "".join(json.dumps(event(n)) + "\n" for n in range(30))
    run = run_cli("send", "-", "--base-url", server.url, *FAST, stdin=lines)
    assert run.returncode == 0, run.stderr
    assert len(server.ledger) == 30


def test_naive_timestamps_need_assume_timezone(tmp_path: Path, server: FaultServer) -> None:
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [event(n, eventTimestamp=f"2024-05-01 10:00:{n:02d}") for n in range(3)],
    )
    refused = invoke("send", path, "--base-url", server.url, *FAST)
    assert refused.exit_code == 1 and "pass --assume-timezone" in refused.stderr
    assert summary(refused.stdout)["invalid"] == 3 and server.ledger == {}
    result = invoke("send", path, "--base-url", server.url, "--assume-timezone", "Europe/Berlin")
    assert result.exit_code == 0, result.output
    stamps = sorted(e["eventTimestamp"] for e in server.ledger.values())
    assert stamps == [f"2024-05-01T10:00:{n:02d}+02:00" for n in range(3)]


# --- send: progress, quiet, checkpoints


def test_progress_lines_on_stderr_when_not_a_terminal(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(1500)])
    with FaultServer(latency=0.06) as server:
        run = run_cli(
            "send", path, "--base-url", server.url, "--concurrency", "1",
            "--progress-interval", "0.25", *FAST,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stderr.splitlines() if line.startswith("progress: ")]
    assert len(progress) >= 2, run.stderr
    assert re.fullmatch(
        r"progress: [\d,]+ events of 1,500 \(\d+%\), ETA [\d:?]+, [\d,]+ events/s, "
        r"[\d:]+ elapsed",
        progress[0],
    )
    assert "\x1b[" not in run.stderr
    assert summary(run.stdout)["accepted"] == 1500


def test_quiet_prints_only_errors(tmp_path: Path, server: FaultServer) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(1), "{bad"])
    result = invoke("send", path, "--base-url", server.url, "--quiet", *FAST)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "not JSON" in result.stderr and "progress" not in result.stderr


def test_a_completed_checkpoint_sends_nothing_and_a_changed_file_is_refused(
    tmp_path: Path, server: FaultServer
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(120)])
    checkpoint = tmp_path / "ck.json"
    first = invoke("send", path, "--base-url", server.url, "--checkpoint", checkpoint, *FAST)
    assert first.exit_code == 0, first.output
    saved = json.loads(checkpoint.read_text(encoding="utf-8"))
    assert saved["position"] == {"file": 0, "offset": path.stat().st_size, "line": 120}
    requests = len(server.requests)
    again = invoke("send", path, "--base-url", server.url, "--checkpoint", checkpoint, *FAST)
    assert again.exit_code == 0 and len(server.requests) == requests
    assert summary(again.stdout)["accepted"] == 0
    write_jsonl(path, [event(n) for n in range(121)])
    changed = invoke("send", path, "--base-url", server.url, "--checkpoint", checkpoint, *FAST)
    assert changed.exit_code == 2 and "other or changed input files" in changed.stderr


def test_a_refused_token_records_every_event_read_and_keeps_the_checkpoint(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [event(n) for n in range(2000)])
    rejected, checkpoint = tmp_path / "rejected.jsonl", tmp_path / "ck.json"
    with FaultServer(token="another-token") as server:
        result = invoke(
            "send", path, "--base-url", server.url, "--rejected", rejected,
            "--checkpoint", checkpoint, "--concurrency", "2", *FAST,
        )  # fmt: skip
    assert result.exit_code == 2 and "refused the token" in result.stderr
    entries = read_jsonl(rejected)
    assert 0 < len(entries) == summary(result.stdout)["failed"] < 2000
    assert {e["kind"] for e in entries} == {"failed"}
    assert len({e["source"] for e in entries}) == len(entries)
    assert json.loads(checkpoint.read_text(encoding="utf-8"))["position"]["line"] == 0
