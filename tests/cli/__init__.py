"""Tests of ``togai-ingest`` (``togai_ingest.cli``, ``readers``, ``checkpoint``), and their helpers.

Subprocess runs use the installed console script next to the test's Python
(``.venv/bin/togai-ingest``); servers are ``tests.faultserver.FaultServer`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from togai_ingest.cli import main
from togai_ingest.readers import Input, Record, read_records

TOKEN = "t0k3n"
CLI = Path(sys.executable).with_name("togai-ingest")


def event(number: int, **changes: Any) -> dict[str, Any]:
    """A valid wire event without an id, distinct per ``number``; ``changes`` override keys
    (a value of None removes the key)."""
    made: dict[str, Any] = {
        "eventName": "apiCall",
        "eventTimestamp": f"2024-05-01T{number // 3600 % 24:02d}:{number // 60 % 60:02d}:"
        f"{number % 60:02d}Z",
        "accountId": f"acct-{number % 8}",
        "eventAttributes": [
            {"attributeName": "requests", "attributeValue": str(number)},
            {
                "attributeName": "latency",
                "attributeValue": "12",
                "attributeValueUnit": "Milliseconds",
            },
        ],
        "dimensions": {"region": "eu-west-1", "n": str(number)},
    }
    for key, value in changes.items():
        if value is None:
            made.pop(key, None)
        else:
            made[key] = value
    return made


def write_jsonl(path: Path, items: Iterable[Mapping[str, Any] | str]) -> Path:
    """One line per item: a dict as JSON, a string as it is."""
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            out.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ids_of(path: Path, fmt: str = "jsonl") -> list[str]:
    """The ids ``togai-ingest`` sends for the valid records of ``path``, in order."""
    records = read_records([Input(str(path), "csv" if fmt == "csv" else "jsonl")])
    return [r.event.id for r in records if r.event is not None]


def wire(record: Record) -> dict[str, Any]:
    """The wire form of a valid record's event."""
    assert record.event is not None, record.problem
    return record.event.wire()


def environment(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOGAI_")}
    if token is not None:
        env["TOGAI_API_TOKEN"] = token
    return {**env, **extra}


def run_cli(
    *args: str | Path,
    token: str | None = TOKEN,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``togai-ingest ARGS`` as a subprocess; stdout and stderr captured (not a terminal)."""
    return subprocess.run(
        [str(CLI), *map(str, args)],
        env=environment(token),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def invoke(*args: str | Path, token: str | None = TOKEN) -> Result:
    """``togai-ingest ARGS`` in this process (faster; stderr is not a terminal)."""
    env: dict[str, str | None] = {"TOGAI_API_TOKEN": token, "TOGAI_BASE_URL": None}
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
