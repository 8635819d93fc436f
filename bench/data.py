"""Realistic usage events for the benchmark, as plain data, as wire dicts and as JSON Lines."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Record", "make_records", "to_wire", "write_jsonl"]

_START = datetime(2024, 6, 1, tzinfo=UTC)
_NAMES = ("apiCall", "storageUsed", "travelCompleted")
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
_PLANS = ("free", "pro", "enterprise")


class Record(NamedTuple):
    """One event as an application holds it before it meets the client (numbers as numbers)."""

    name: str
    account_id: str
    attributes: dict[str, tuple[int | float, str]]
    dimensions: dict[str, str]
    timestamp: datetime
    id: str


def make_records(count: int, seed: int = 7) -> list[Record]:
    """``count`` events with distinct UUIDv4 ids, two attributes with units, two dimensions."""
    rng = random.Random(seed)
    return [
        Record(
            name=rng.choice(_NAMES),
            account_id=f"acct-{rng.randrange(500)}",
            attributes={
                "requests": (rng.randrange(1, 1000), "None"),
                "latency": (round(rng.uniform(1, 500), 2), "Milliseconds"),
            },
            dimensions={"region": rng.choice(_REGIONS), "plan": rng.choice(_PLANS)},
            timestamp=_START + timedelta(milliseconds=i * 7),
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
        for i in range(count)
    ]


def to_wire(record: Record) -> dict[str, Any]:
    """The wire form (camelCase, values as strings) that an application would build itself."""
    return {
        "eventName": record.name,
        "id": record.id,
        "eventTimestamp": record.timestamp.isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        ),
        "accountId": record.account_id,
        "eventAttributes": [
            {"attributeName": name, "attributeValue": str(value), "attributeValueUnit": unit}
            for name, (value, unit) in record.attributes.items()
        ],
        "dimensions": record.dimensions,
    }


def write_jsonl(path: Path, count: int, seed: int = 11) -> None:
    """``count`` lines of wire-form events, written in chunks (memory stays flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    chunk = 10_000
    with partial.open("w", encoding="utf-8") as out:
        for start in range(0, count, chunk):
            records = make_records(min(chunk, count - start), seed=seed + start)
            out.writelines(json.dumps(to_wire(r), separators=(",", ":")) + "\n" for r in records)
    partial.replace(path)
