from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SECRET
from tests.faultserver import FaultServer
from togai_ingest import Client, RetryPolicy


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(token=SECRET) as srv:
        yield srv


@pytest.fixture
def client(server: FaultServer) -> Iterator[Client]:
    with Client(
        SECRET, base_url=server.url, rate_limit=None, retry=RetryPolicy(max_retries=0)
    ) as c:
        yield c


def wire_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventName": "apiCall",
        "id": "evt-1",
        "eventTimestamp": "2024-03-01T12:00:00Z",
        "accountId": "acct-1",
        "eventAttributes": [
            {"attributeName": "requests", "attributeValue": "1"},
            {
                "attributeName": "latency",
                "attributeValue": "12",
                "attributeValueUnit": "Milliseconds",
            },
        ],
        "dimensions": {"region": "eu-west-1"},
    }
    event.update(overrides)
    return event
