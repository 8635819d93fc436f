"""Shared by the hardening tests: events, a fast retry policy, clients on a hostile server."""

from __future__ import annotations

from typing import Any

from tests.conftest import SECRET
from togai_ingest import Client, RetryPolicy

FAST = RetryPolicy(max_retries=2, initial_delay=0.001, max_delay=0.002)
"""Retries without waiting, so a test sees the final outcome quickly."""


def event(i: int | str, **overrides: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "eventName": "apiCall",
        "id": f"evt-{i}",
        "eventTimestamp": "2024-03-01T12:00:00Z",
        "accountId": "acct-1",
        "eventAttributes": [{"attributeName": "requests", "attributeValue": "1"}],
        "dimensions": {"region": "eu"},
    }
    wire.update(overrides)
    return wire


def client_for(url: str, **options: Any) -> Client:
    options.setdefault("retry", FAST)
    options.setdefault("rate_limit", None)
    options.setdefault("timeout", 2.0)
    return Client(SECRET, base_url=url, **options)


def indexes_of(result: Any) -> list[int]:
    """Every index a SendResult reports, sorted (accepted ones are not listed)."""
    found = [r.index for r in result.rejected]
    found += [f.index for f in result.failed]
    found += [i.index for i in result.invalid]
    return sorted(found)
