"""Invariant 5, bounded: one attempt is bounded in time as a whole (connect + send + the full
answer), not per read, and the retry budget cuts an attempt in progress; an answer is read up
to ``MAX_RESPONSE_BYTES`` and never buffered beyond it."""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import SECRET
from tests.hardening.conftest import client_for, event
from tests.hostile import Reply, replies, serving
from togai_ingest import APITimeoutError, AsyncClient, RetryPolicy
from togai_ingest.request import MAX_RESPONSE_BYTES


def _rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


TRICKLE = Reply(202, b'{"errors": []}' + b" " * 200, trickle=0.05)
"""An answer of ~300 bytes at 20 bytes a second: every read is quick, the whole is ~15 s."""


def test_a_trickled_answer_is_cut_at_the_attempt_deadline() -> None:
    with serving(replies([], then=TRICKLE)) as server:
        with client_for(server.url, timeout=0.6, retry=RetryPolicy(max_retries=0)) as client:
            started = time.monotonic()
            result = client.send([event(1)])
            took = time.monotonic() - started
    assert result.n_failed == 1 and isinstance(result.failed[0].error, APITimeoutError)
    assert took < 0.6 + 0.6 + 1.0  # connect + read budget, with slack for a loaded machine


def test_the_retry_budget_cuts_an_attempt_in_progress() -> None:
    policy = RetryPolicy(max_retries=10, initial_delay=0.01, total_timeout=1.0)
    with serving(replies([], then=TRICKLE)) as server:
        with client_for(server.url, timeout=30.0, retry=policy) as client:
            started = time.monotonic()
            result = client.send([event(1)])
            took = time.monotonic() - started
    assert result.n_failed == 1
    assert took < 1.0 + 1.0


async def test_the_async_client_bounds_an_attempt_too() -> None:
    with serving(replies([], then=TRICKLE)) as server:
        async with AsyncClient(
            SECRET,
            base_url=server.url,
            timeout=0.6,
            retry=RetryPolicy(max_retries=0),
            rate_limit=None,
        ) as client:
            started = time.monotonic()
            result = await client.send([event(1)])
            took = time.monotonic() - started
    assert result.n_failed == 1 and took < 0.6 + 0.6 + 1.0


def test_a_trickled_header_is_cut_too() -> None:
    slow_head = Reply(202, b"", trickle=0.2)
    with serving(replies([], then=slow_head)) as server:
        with client_for(server.url, timeout=0.5, retry=RetryPolicy(max_retries=0)) as client:
            started = time.monotonic()
            result = client.send([event(1)])
    assert result.n_failed == 1 and time.monotonic() - started < 3.0


@pytest.mark.parametrize("status", [202, 207, 500])
def test_an_endless_answer_is_read_up_to_the_cap(status: int) -> None:
    """A 1 TiB body: RSS must not grow by more than a few times the cap."""
    endless = Reply(status, b'{"errors": [', endless=True)
    before = _rss()
    with serving(replies([], then=endless)) as server:
        with client_for(server.url, timeout=5.0, retry=RetryPolicy(max_retries=1)) as client:
            result = client.send([event(i) for i in range(3)])
    grown = _rss() - before
    assert grown < 40 * MAX_RESPONSE_BYTES, grown
    assert result.total == 3
    if status == 202:
        assert result.accepted == 3  # a 202 says all accepted; its body does not matter
    else:
        assert result.n_failed == 3  # a 207 too large to read cannot say which were rejected


async def test_the_async_client_reads_up_to_the_cap() -> None:
    endless = Reply(207, b'{"errors": [', endless=True)
    with serving(replies([], then=endless)) as server:
        async with AsyncClient(
            SECRET,
            base_url=server.url,
            timeout=5.0,
            retry=RetryPolicy(max_retries=0),
            rate_limit=None,
        ) as client:
            result = await client.send([event(1)])
    assert result.n_failed == 1
