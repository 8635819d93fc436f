"""A child process for the crash tests: enqueue events into a spool, note each id whose
``enqueue`` returned, and let the background sender deliver (until killed, or to the end).

``python -m tests.sender.child URL SPOOL PREFIX COUNT NOTES [--close]`` prints ``ready`` once
the sender exists; every id is appended to NOTES only after its ``enqueue`` returned.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tests.actor import tagged
from togai_ingest import BackgroundSender, Client, RetryPolicy


def wire_event(event_id: str) -> dict[str, Any]:
    """tests.unit.conftest.wire_event (not imported: it pulls in pytest and the fault server,
    which would double this process's start-up time)."""
    return {
        "eventName": "apiCall",
        "id": event_id,
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


def main(argv: list[str]) -> None:
    url, spool, prefix, count, notes = argv[:5]
    client = Client(
        os.environ["TOGAI_API_TOKEN"],
        base_url=url,
        rate_limit=None,
        timeout=5.0,
        retry=RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.05),
        httpx_args=tagged(prefix),
    )
    sender = BackgroundSender(client, spool_path=spool, batch_size=50, flush_interval=0.05)
    fd = os.open(notes, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    print("ready", flush=True)
    for i in range(int(count)):
        event_id = f"{prefix}-{i}"
        sender.enqueue(wire_event(event_id))
        os.write(fd, f"{event_id}\n".encode())
    os.close(fd)
    print("enqueued", flush=True)
    if "--close" in argv:
        report = sender.close(60)
        print(f"closed {report}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
