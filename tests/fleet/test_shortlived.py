"""Short-lived processes (Celery tasks, serverless handlers): flush when the handler returns,
within a budget, reporting (never raising) what was not delivered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SECRET
from tests.faults import Slow
from tests.faultserver import FaultServer
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, DeliveryReport, RetryPolicy
from togai_ingest.shortlived import flush_after, flushing


def make_sender(url: str) -> BackgroundSender:
    client = Client(SECRET, base_url=url, rate_limit=None, retry=RetryPolicy(max_retries=1))
    # A long flush interval: without the flush, nothing would go before the handler returns.
    return BackgroundSender(client, flush_interval=60.0)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(token=SECRET) as srv:
        yield srv


def test_the_block_ends_with_everything_delivered(server: FaultServer) -> None:
    sender = make_sender(server.url)
    with flushing(sender, budget=10.0) as flush:
        for i in range(150):
            sender.enqueue(wire_event(id=f"b{i}"))
    assert flush.report is not None and flush.report.ok
    assert flush.report.accepted == 150
    assert len(server.ledger) == 150
    sender.close(5)


def test_the_decorator_flushes_after_a_sync_handler(server: FaultServer) -> None:
    sender = make_sender(server.url)

    @flush_after(sender, budget=10.0)
    def handler(n: int) -> str:
        for i in range(n):
            sender.enqueue(wire_event(id=f"s{i}"))
        return "done"

    assert handler(30) == "done"
    assert len(server.ledger) == 30  # before the handler's caller goes on
    assert handler.__name__ == "handler"
    sender.close(5)


def test_the_decorator_flushes_after_an_async_handler(server: FaultServer) -> None:
    sender = make_sender(server.url)
    ticks: list[float] = []

    @flush_after(lambda: sender, budget=10.0)  # a function returning the sender works too
    async def handler() -> int:
        for i in range(20):
            sender.enqueue(wire_event(id=f"a{i}"))
        return 7

    async def main() -> int:
        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        try:
            return await handler()
        finally:
            ticker.cancel()

    assert asyncio.run(main()) == 7
    assert len(server.ledger) == 20
    assert len(ticks) >= 2  # the flush waited on a thread: the event loop kept running
    sender.close(5)


def test_a_handler_that_raises_still_flushes(server: FaultServer) -> None:
    sender = make_sender(server.url)

    @flush_after(sender, budget=10.0)
    def handler() -> None:
        sender.enqueue(wire_event(id="r1"))
        raise RuntimeError("the task failed")

    with pytest.raises(RuntimeError, match="the task failed"):
        handler()
    assert list(server.ledger) == ["r1"]
    sender.close(5)


def test_the_budget_bounds_the_flush_and_what_is_left_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "togai_ingest")
    told: list[DeliveryReport] = []
    with FaultServer(token=SECRET, script=[Slow(3.0)]) as srv:
        sender = make_sender(srv.url)
        started = time.monotonic()
        with flushing(sender, budget=0.5, on_undelivered=told.append) as flush:
            sender.enqueue(wire_event(id="slow-1"))
        took = time.monotonic() - started
        assert took < 2.5  # the budget, not the server's 3 s
        assert flush.report is not None and not flush.report.ok
        assert told == [flush.report]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("not everything was delivered" in w and "slow-1" in w for w in warnings)
        sender.close(10)


class Broken:
    def flush(self, timeout: float | None = None) -> DeliveryReport:
        raise OSError("the sender is gone")


def test_a_failing_flush_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "togai_ingest")

    @flush_after(Broken(), budget=1.0)
    def handler() -> int:
        return 1

    assert handler() == 1
    assert any("flush after the handler failed" in r.getMessage() for r in caplog.records)
    with flushing(Broken()) as flush:
        pass
    assert flush.report is None


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        flushing(Broken(), budget=0)
