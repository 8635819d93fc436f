"""10,000 events through every sending path under a mixed fault script.

Every event must end up in the server's ledger exactly once, or be reported back to the
caller as rejected or failed with its reason. Zero lost; no event re-sent except after a
fault that left the outcome unknown (those re-sends are what idempotency keys are for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET
from tests.faultserver import FaultServer, IdSample, mixed_script
from tests.unit.conftest import wire_event
from togai_ingest import (
    AsyncClient,
    BackgroundSender,
    Client,
    FailedEvent,
    RejectedEvent,
    RetryPolicy,
)

N_EVENTS = 10_000
TIMEOUT = 0.5
POLICY = RetryPolicy(max_retries=8, initial_delay=0.01, max_delay=0.1)
Reported = tuple[list[RejectedEvent], list[FailedEvent], int]


def events(run: str) -> list[dict[str, Any]]:
    return [wire_event(id=f"{run}-{i:05d}", accountId=f"acct-{i % 7}") for i in range(N_EVENTS)]


def via_sync_send(url: str, batch: list[dict[str, Any]]) -> Reported:
    with Client(SECRET, base_url=url, retry=POLICY, rate_limit=None, timeout=TIMEOUT) as client:
        result = client.send(batch)
    return result.rejected, result.failed, len(result.invalid)


def via_async_send(url: str, batch: list[dict[str, Any]]) -> Reported:
    async def run() -> Reported:
        async with AsyncClient(
            SECRET, base_url=url, retry=POLICY, rate_limit=None, timeout=TIMEOUT
        ) as client:
            result = await client.send(batch, concurrency=4)
        return result.rejected, result.failed, len(result.invalid)

    return asyncio.run(run())


def via_background_sender(url: str, batch: list[dict[str, Any]]) -> Reported:
    rejected: list[RejectedEvent] = []
    failed: list[FailedEvent] = []
    client = Client(SECRET, base_url=url, retry=POLICY, rate_limit=None, timeout=TIMEOUT)
    with BackgroundSender(
        client, on_rejected=rejected.extend, on_failed=failed.extend, flush_interval=0.2
    ) as sender:
        for event in batch:
            sender.enqueue(event)
        report = sender.flush(timeout=120)
    assert report.in_flight == [] and report.undelivered == []
    assert len(report.rejected) == len(rejected) and len(report.failed) == len(failed)
    client.close()
    return rejected, failed, 0


@pytest.mark.parametrize(
    "path", [via_sync_send, via_async_send, via_background_sender], ids=lambda f: f.__name__
)
def test_nothing_lost_nothing_metered_twice(
    path: Callable[[str, list[dict[str, Any]]], Reported], capsys: pytest.CaptureFixture[str]
) -> None:
    run = path.__name__
    sent = events(run)
    script = mixed_script(seed=len(run), n=150, fault_rate=0.3, slow=TIMEOUT * 2)
    with FaultServer(
        token=SECRET, script=script, reject_if=IdSample(one_in=97), client_timeout=TIMEOUT
    ) as srv:
        rejected, failed, invalid = path(srv.url, sent)
    sent_ids = {e["id"] for e in sent}
    rejected_ids = {r.event["id"] for r in rejected}
    failed_ids = {f.event["id"] for f in failed}
    metered = sent_ids & set(srv.ledger)
    lost = sent_ids - metered - rejected_ids - failed_ids
    resent = {i for i, n in srv.deliveries.items() if n > 1}
    unexplained_resends = resent - srv.ambiguous_ids
    faults = sum(1 for r in srv.requests if r.action != "Ok")
    with capsys.disabled():
        print(
            f"\n{run}: sent={len(sent_ids)} accepted={len(metered)} rejected={len(rejected_ids)} "
            f"failed={len(failed_ids)} invalid={invalid} lost={len(lost)} "
            f"resent_after_ambiguous_fault={len(resent)} "
            f"unexplained_resends={len(unexplained_resends)} requests={len(srv.requests)} "
            f"faults_injected={faults}"
        )
    assert srv.violations == []
    assert faults >= 25, "the script injected too few faults to mean anything"
    assert lost == set()
    assert unexplained_resends == set()
    assert rejected_ids == srv.rejected_ids & sent_ids
    assert rejected_ids and not rejected_ids & set(srv.ledger)
    assert all(r.message for r in rejected) and all(str(f.error) for f in failed)
    assert invalid == 0
    assert len(srv.ledger) == len(metered)  # nothing metered that was not sent


def test_a_lost_event_would_be_detected() -> None:
    """The check above can fail: drop one event on the client's side and it shows."""
    sent = events("control")[:300]
    with FaultServer(token=SECRET) as srv:
        with Client(SECRET, base_url=srv.url, rate_limit=None) as client:
            client.send(sent[1:])
        lost = {e["id"] for e in sent} - set(srv.ledger)
    assert lost == {sent[0]["id"]}


def test_timeout_defaults_are_explicit() -> None:
    client = Client(SECRET, base_url="http://127.0.0.1:9")
    timeout = client.timeout
    assert isinstance(timeout, httpx.Timeout)
    assert timeout.connect is not None and timeout.read is not None
