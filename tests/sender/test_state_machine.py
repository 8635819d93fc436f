"""A stateful property test of the background sender (issue 7): enqueue, change the caller's
dict after enqueue, flush, close, and server faults in any order. Every enqueued event ends
in exactly one outcome (accepted, rejected or failed), accepted events are in the server's
ledger exactly as they were at enqueue, and an enqueue after close raises a named error.
(Fork is tested in tests/reliability/test_sender.py and tests/sender/test_spool.py.)"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import SECRET
from tests.faultserver import (
    Action,
    BadGateway,
    EmptyAccept,
    Error,
    FaultServer,
    GarbageAccept,
    GatewayTimeout,
    Odd,
    ResetAfter,
    ResetBefore,
    Throttle,
    Unavailable,
)
from tests.sender.machines import run_machine
from tests.unit.conftest import wire_event
from togai_ingest import BackgroundSender, Client, DeliveryReport, RetryPolicy
from togai_ingest.errors import ClosedError

FAULTS: list[Action] = [
    Throttle(retry_after=0),
    Unavailable(retry_after=0),
    BadGateway(),
    GatewayTimeout(metered=True),
    ResetBefore(),
    ResetAfter(),
    EmptyAccept(),
    GarbageAccept(),
    Odd(),
    Error(400),
    Error(401),
]


class Feed:
    """The fault server's script, fed by the state machine: ``Ok`` whenever it is empty."""

    def __init__(self) -> None:
        self.actions: deque[Action] = deque()

    def __iter__(self) -> Iterator[Action]:
        return self

    def __next__(self) -> Action:
        if not self.actions:
            raise StopIteration
        return self.actions.popleft()


FEED = Feed()
EXAMPLES = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer(token=SECRET, script=FEED, reject_if=lambda i: i.endswith("-r")) as srv:
        yield srv


class SenderMachine(RuleBasedStateMachine):
    server: FaultServer

    def __init__(self) -> None:
        super().__init__()
        FEED.actions.clear()
        self.prefix = f"sm{next(EXAMPLES)}"
        client = Client(
            SECRET,
            base_url=self.server.url,
            rate_limit=None,
            timeout=5.0,
            retry=RetryPolicy(max_retries=1, initial_delay=0.001, max_delay=0.002),
        )
        self.sender = BackgroundSender(client, flush_interval=0.01, batch_size=4)
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.live: list[dict[str, Any]] = []
        self.reports: list[DeliveryReport] = []
        self.closed = False

    @rule(value=st.text(max_size=12), rejected=st.booleans())
    def enqueue(self, value: str, rejected: bool) -> None:
        event_id = f"{self.prefix}-{len(self.snapshots) + len(self.live)}" + (
            "-r" if rejected else ""
        )
        event = wire_event(id=event_id)
        event["eventAttributes"][0]["attributeValue"] = value
        if self.closed:
            with pytest.raises(ClosedError):
                self.sender.enqueue(event)
            return
        self.sender.enqueue(event)
        self.snapshots[event_id] = copy.deepcopy(event)
        self.live.append(event)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def mutate(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.live))
        what = data.draw(st.sampled_from(["id", "attribute", "list", "dimension", "account"]))
        if what == "id":
            event["id"] = f"{self.prefix}-mutated"
        elif what == "attribute" and event["eventAttributes"]:
            event["eventAttributes"][0]["attributeValue"] = "mutated"
        elif what == "attribute":
            event["eventAttributes"].append({"attributeName": "a", "attributeValue": "m"})
        elif what == "list":
            event["eventAttributes"].clear()
        elif what == "dimension":
            event["dimensions"]["region"] = "mutated"
        else:
            event["accountId"] = "mutated"

    @rule(fault=st.sampled_from(FAULTS), count=st.integers(1, 3))
    def fault(self, fault: Action, count: int) -> None:
        FEED.actions.extend([fault] * count)

    @rule()
    def flush(self) -> None:
        self.reports.append(self.sender.flush(timeout=30))

    @rule()
    def close(self) -> None:
        self.reports.append(self.sender.close(timeout=30))
        self.closed = True

    @invariant()
    def nothing_reported_twice(self) -> None:
        ids = [r.event["id"] for rep in self.reports for r in rep.rejected]
        ids += [f.event["id"] for rep in self.reports for f in rep.failed]
        assert len(ids) == len(set(ids))

    def teardown(self) -> None:
        self.reports.append(self.sender.close())
        self.reports.append(self.sender.close())
        rejected = {r.event["id"]: r.event for rep in self.reports for r in rep.rejected}
        failed = {f.event["id"]: f.event for rep in self.reports for f in rep.failed}
        accepted = sum(rep.accepted for rep in self.reports)
        assert all(not rep.undelivered and not rep.in_flight for rep in self.reports)
        assert not set(rejected) & set(failed)
        assert set(rejected) | set(failed) <= set(self.snapshots)
        assert accepted == len(self.snapshots) - len(rejected) - len(failed)
        assert all(i.endswith("-r") for i in rejected)
        for event_id, snapshot in self.snapshots.items():
            if event_id in rejected:
                assert rejected[event_id] == snapshot
            elif event_id in failed:
                assert failed[event_id] == snapshot
            else:
                assert self.server.ledger.get(event_id) == snapshot, event_id
        assert f"{self.prefix}-mutated" not in self.server.ledger


def test_background_sender_state_machine(server: FaultServer) -> None:
    SenderMachine.server = server
    run_machine(SenderMachine, examples=30, steps=25)
