"""Write the shipped samples: ``examples/events.jsonl`` and ``examples/events.csv``.

Deterministic (seeded): running it again writes the same bytes. The JSON Lines file holds
about 3,000 usage events in wire form across 8 accounts (API calls, storage snapshots,
compute minutes), mostly with ids, some without (``togai-ingest`` derives theirs), and a
handful of deliberately invalid lines, listed in ``INVALID_LINES``:

    python scripts/make_sample.py            # writes both files under examples/
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED = 20240501
COUNT = 3000
START = datetime(2024, 5, 1, tzinfo=UTC)
ACCOUNTS = (
    "acct-acme-corp",
    "acct-globex",
    "acct-initech",
    "acct-umbrella",
    "acct-hooli",
    "acct-stark-ind",
    "acct-wayne-ent",
    "acct-wonka",
)
ACCOUNT_WEIGHTS = (30, 20, 15, 10, 10, 7, 5, 3)
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-1")
ENDPOINTS = ("/v1/orders", "/v1/orders/{id}", "/v1/customers", "/v1/invoices", "/v1/search")
PLANS = ("starter", "growth", "enterprise")
INSTANCE_TYPES = ("c6g.large", "c6g.xlarge", "m6i.2xlarge", "r6i.large")
STORAGE_CLASSES = ("standard", "infrequent-access", "archive")
BERLIN_SUMMER = timezone(timedelta(hours=2))

Event = dict[str, Any]


def _timestamp(rng: random.Random, index: int) -> str:
    """Events in time order over May 2024, with milliseconds; some sources send +02:00."""
    moment = START + timedelta(
        seconds=index * 890 + rng.randint(0, 880), milliseconds=rng.randint(0, 999)
    )
    if rng.random() < 0.15:
        return moment.astimezone(BERLIN_SUMMER).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _attribute(name: str, value: object, unit: str | None = None) -> dict[str, str]:
    attribute = {"attributeName": name, "attributeValue": str(value)}
    if unit is not None:
        attribute["attributeValueUnit"] = unit
    return attribute


def _api_call(rng: random.Random) -> tuple[str, list[dict[str, str]], dict[str, str]]:
    attributes = [
        _attribute("requests", rng.choice((1, 1, 1, 5, 10, 25, 50))),
        _attribute("responseTime", rng.randint(8, 900), "Milliseconds"),
    ]
    dimensions = {
        "endpoint": rng.choice(ENDPOINTS),
        "method": rng.choice(("GET", "GET", "GET", "POST", "PUT")),
        "statusClass": rng.choice(("2xx",) * 12 + ("4xx", "5xx")),
        "region": rng.choice(REGIONS),
    }
    return "apiCall", attributes, dimensions


def _storage(rng: random.Random) -> tuple[str, list[dict[str, str]], dict[str, str]]:
    attributes = [_attribute("storageUsed", round(rng.uniform(0.5, 2048.0), 2), "GB")]
    dimensions = {
        "bucket": f"bkt-{rng.randint(1, 40):03d}",
        "storageClass": rng.choice(STORAGE_CLASSES),
        "region": rng.choice(REGIONS),
    }
    return "storageSnapshot", attributes, dimensions


def _compute(rng: random.Random) -> tuple[str, list[dict[str, str]], dict[str, str]]:
    attributes = [
        _attribute("computeTime", rng.randint(1, 240), "Minutes"),
        _attribute("vcpus", rng.choice((2, 4, 8, 16)), "None"),
    ]
    dimensions = {"instanceType": rng.choice(INSTANCE_TYPES), "region": rng.choice(REGIONS)}
    return "computeUsage", attributes, dimensions


KINDS: tuple[Callable[[random.Random], tuple[str, list[dict[str, str]], dict[str, str]]], ...]
KINDS = (_api_call,) * 6 + (_compute,) * 3 + (_storage,)


def _event(rng: random.Random, index: int) -> Event:
    name, attributes, dimensions = rng.choice(KINDS)(rng)
    account = rng.choices(ACCOUNTS, weights=ACCOUNT_WEIGHTS)[0]
    event: Event = {"eventName": name}
    if rng.random() < 0.9:  # the rest get an id derived from their content by togai-ingest
        event["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    event["eventTimestamp"] = _timestamp(rng, index)
    event["accountId"] = account
    event["eventAttributes"] = attributes
    event["dimensions"] = {"plan": PLANS[ACCOUNTS.index(account) % len(PLANS)], **dimensions}
    return event


def _line(event: Event) -> str:
    return json.dumps(event, ensure_ascii=False)


def _too_long_value(event: Event) -> str:
    event["eventAttributes"][0]["attributeValue"] = "req-" + "7f3a9c2e" * 7  # 60 characters
    return _line(event)


def _naive_timestamp(event: Event) -> str:
    event["eventTimestamp"] = "2024-05-14 09:31:07"
    return _line(event)


def _unknown_property(event: Event) -> str:
    event["userId"] = "u-48213"
    return _line(event)


def _missing_account(event: Event) -> str:
    del event["accountId"]
    return _line(event)


def _not_json(event: Event) -> str:
    return _line(event)[:97]  # a line cut short by a crashed writer


INVALID_LINES: dict[int, Callable[[Event], str]] = {
    412: _too_long_value,
    977: _naive_timestamp,
    1503: _unknown_property,
    2214: _missing_account,
    2850: _not_json,
}
"""Line number (1-based) -> how that line is broken."""


def jsonl_lines(seed: int = SEED, count: int = COUNT) -> Iterator[str]:
    rng = random.Random(seed)
    for index in range(count):
        event = _event(rng, index)
        breaker = INVALID_LINES.get(index + 1)
        yield _line(event) if breaker is None else breaker(event)


def csv_text(seed: int = SEED, count: int = 12) -> str:
    """A small CSV sample in the header convention of ``togai-ingest`` (API calls only)."""
    rng = random.Random(seed + 1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "eventName",
            "id",
            "eventTimestamp",
            "accountId",
            "attr.requests",
            "attr.responseTime",
            "unit.responseTime",
            "dim.endpoint",
            "dim.region",
        ]
    )
    for index in range(count):
        _, attributes, dimensions = _api_call(rng)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if index % 4 else ""
        writer.writerow(
            [
                "apiCall",
                event_id,
                _timestamp(rng, index * 40),
                ACCOUNTS[index % 3],
                attributes[0]["attributeValue"],
                attributes[1]["attributeValue"] if index != 5 else "",
                "Milliseconds",
                dimensions["endpoint"],
                dimensions["region"] if index != 7 else "",
            ]
        )
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsonl", type=Path, default=REPO / "examples" / "events.jsonl")
    parser.add_argument("--csv", type=Path, default=REPO / "examples" / "events.csv")
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    with args.jsonl.open("w", encoding="utf-8", newline="\n") as out:
        for line in jsonl_lines(args.seed, args.count):
            out.write(line + "\n")
    args.csv.write_text(csv_text(args.seed), encoding="utf-8", newline="\n")
    print(f"wrote {args.jsonl} ({args.count} lines, {len(INVALID_LINES)} invalid) and {args.csv}")


if __name__ == "__main__":
    main()
