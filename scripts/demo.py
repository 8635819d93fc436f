"""``make demo``: Prism on the OpenAPI document, ``togai-ingest send`` on the shipped sample.

Starts Prism (``tests/prism.py``), sends ``examples/events.jsonl`` through the command line
as a subprocess (its progress shows live), prints the summary and the start of the rejected
file, and stops Prism. Exit status 0 when the run did what it should: the sample's
deliberately invalid lines reported as invalid, every other event accepted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.prism import PrismServer  # noqa: E402
from togai_ingest.readers import Input, read_records  # noqa: E402

SAMPLE = "examples/events.jsonl"
REJECTED = ".demo/rejected.jsonl"
DEMO_TOKEN = "demo-token-not-secret"
SHOWN_LINES = 3
SUMMARY = re.compile(r"summary: ([\d,]+) accepted, ([\d,]+) rejected, ([\d,]+) failed")


def _program() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).with_name("togai-ingest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "togai_ingest.cli"]


def _expected() -> tuple[int, set[str]]:
    """Valid events of the sample, and the sources of its invalid lines (validated here)."""
    valid, invalid = 0, set()
    for record in read_records([Input(SAMPLE, "jsonl")]):
        if record.event is None:
            invalid.add(record.source)
        else:
            valid += 1
    return valid, invalid


def _show_rejected() -> list[dict[str, object]]:
    lines = (REPO / REJECTED).read_text(encoding="utf-8").splitlines()
    print(f"\nthe first {SHOWN_LINES} of the {len(lines)} lines of {REJECTED}:")
    for line in lines[:SHOWN_LINES]:
        print(f"  {line[:157] + '...' if len(line) > 160 else line}")
    return [json.loads(line) for line in lines]


def _check(code: int, stdout: str, entries: list[dict[str, object]]) -> list[str]:
    valid, invalid = _expected()
    problems = []
    if code != 1:
        problems.append(f"exit status {code}, expected 1 (some events invalid)")
    match = SUMMARY.search(stdout)
    counts = [int(n.replace(",", "")) for n in match.groups()] if match else None
    if counts != [valid, 0, 0]:
        problems.append(f"expected {valid} accepted, 0 rejected, 0 failed; got {counts}")
    if {str(e.get("source")) for e in entries} != invalid or len(entries) != len(invalid):
        problems.append(f"the rejected file should list exactly {sorted(invalid)}")
    if any(e.get("kind") != "invalid" for e in entries):
        problems.append("every entry of the rejected file should be of kind 'invalid'")
    return problems


def main() -> int:
    os.chdir(REPO)
    (REPO / REJECTED).parent.mkdir(exist_ok=True)
    env = {**os.environ, "TOGAI_API_TOKEN": DEMO_TOKEN}
    env.pop("TOGAI_BASE_URL", None)
    print("starting Prism (a mock of the Togai API from openapi/togai-ingestion.yaml) ...")
    with PrismServer() as prism:
        args = ["send", SAMPLE, "--rejected", REJECTED, "--base-url", prism.url]
        args += ["--progress-interval", "0.5"]
        print(f"Prism is listening on {prism.url}\n")
        print(f"$ TOGAI_API_TOKEN=... {shlex.join(['togai-ingest', *args])}", flush=True)
        run = subprocess.run(
            [*_program(), *args], env=env, stdout=subprocess.PIPE, text=True, check=False
        )
        print(run.stdout, end="")
        expected = " (some events were not accepted: expected here)" if run.returncode == 1 else ""
        print(f"togai-ingest exited with status {run.returncode}{expected}")
    print("Prism stopped.")
    problems = _check(run.returncode, run.stdout, _show_rejected())
    if problems:
        print("\ndemo: FAILED\n  " + "\n  ".join(problems))
        return 1
    print(
        "\ndemo: OK - every valid event was accepted by the mock; the sample's deliberately "
        f"invalid lines are in {REJECTED} with their reasons (fix them, then send that file)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
