"""The contenders: each sends the same events to the sink and returns its wall-clock seconds.

Each opens its connection and sends one warm-up batch before the clock starts, and checks that
every event was accepted after it stops.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import httpx

import togai_ingest
from togai_ingest.request import encode
from togai_ingest.validation import validate_wire

from .data import Record

__all__ = ["BATCH", "CONTENDERS", "STEPS", "TOKEN", "Contender", "Timer", "Workload", "cpu_costs"]

TOKEN = "bench-token"
BATCH = 100


@dataclass(frozen=True)
class Workload:
    records: list[Record]
    """Plain data, for the typed path (it builds its models while it sends)."""
    wire: list[dict[str, Any]]
    """The same events in wire form, for the other contenders."""


def _models(records: list[Record]) -> Iterator[togai_ingest.Event]:
    for r in records:
        yield togai_ingest.new_event(
            r.name, r.account_id, r.attributes, r.dimensions, timestamp=r.timestamp, id=r.id
        )


def _check(result: togai_ingest.SendResult, expected: int) -> None:
    if result.accepted != expected or not result.ok:
        raise RuntimeError(f"expected {expected} events accepted, got {result}")


class Timer:
    """Times the measured section of a contender (``bench.profile`` also profiles it):
    wall-clock seconds, and this process's CPU seconds (steadier on a busy machine)."""

    elapsed = 0.0
    cpu = 0.0

    def __enter__(self) -> Self:
        gc.collect()  # the previous contender's garbage is not this one's cost
        self._cpu = time.process_time()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        self.cpu = time.process_time() - self._cpu


def baseline(url: str, work: Workload, timer: Timer) -> float:
    """Raw httpx: plain dicts with ``json=``, batches of 100, one connection."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        http.post("/ingestBatch", json={"events": work.wire[:BATCH]}).raise_for_status()
        with timer:
            for i in range(0, len(work.wire), BATCH):
                batch = work.wire[i : i + BATCH]
                http.post("/ingestBatch", json={"events": batch}).raise_for_status()
    return timer.elapsed


def _sync_send(url: str, events: Iterable[Any], count: int, warm: list[Any], timer: Timer) -> float:
    with togai_ingest.Client(TOKEN, base_url=url, rate_limit=None) as client:
        _check(client.send(warm), len(warm))
        with timer:
            result = client.send(events)
    _check(result, count)
    return timer.elapsed


def typed(url: str, work: Workload, timer: Timer) -> float:
    """Models built from plain data (``new_event``), validated and sent by ``Client.send``."""
    warm = list(_models(work.records[:BATCH]))
    return _sync_send(url, _models(work.records), len(work.records), warm, timer)


def wire(url: str, work: Workload, timer: Timer) -> float:
    """Wire-form dicts through ``Client.send`` (validated)."""
    return _sync_send(url, work.wire, len(work.wire), work.wire[:BATCH], timer)


def async_(url: str, work: Workload, timer: Timer) -> float:
    """Wire-form dicts through ``AsyncClient.send`` with its default concurrency."""

    async def run() -> None:
        async with togai_ingest.AsyncClient(TOKEN, base_url=url, rate_limit=None) as client:
            _check(await client.send(work.wire[:BATCH]), BATCH)
            with timer:
                result = await client.send(work.wire)
        _check(result, len(work.wire))

    asyncio.run(run())
    return timer.elapsed


Contender = Callable[[str, Workload, Timer], float]
"""Sends the workload to the sink at the URL; returns the seconds the timer measured."""

CONTENDERS: dict[str, Contender] = {
    "baseline": baseline,
    "typed": typed,
    "wire": wire,
    "async": async_,
}
"""Name -> contender; ``baseline`` first (the ratios' denominator)."""


STEPS = ("build", "to dict", "validate", "serialize")
"""The steps of ``cpu_costs``: ``new_event``, ``to_dict``, ``validate_wire``, serializing."""


def cpu_costs(work: Workload) -> dict[str, dict[str, float]]:
    """CPU µs per event of each step, without HTTP, in batches of 100 as ``send`` does them:
    ``typed`` (every step, ``encode`` serializes), ``wire`` (validate, ``encode``) and
    ``json.dumps`` (the baseline's serialization: httpx's ``json=`` calls ``json.dumps``)."""
    validate_wire(work.wire[0])  # compiles the validator, outside the measurement
    batches = [
        (work.records[i : i + BATCH], work.wire[i : i + BATCH])
        for i in range(0, len(work.records), BATCH)
    ]
    costs: dict[str, dict[str, float]] = {"typed": {}, "wire": {}, "json.dumps": {}}
    gc.collect()
    last = time.process_time()

    def lap(path: str, step: str) -> None:
        nonlocal last
        now = time.process_time()
        costs[path][step] = costs[path].get(step, 0.0) + now - last
        last = now

    for records, dicts in batches:
        models = list(_models(records))
        lap("typed", "build")
        built = [m.to_dict() for m in models]
        lap("typed", "to dict")
        for w in built:
            validate_wire(w)
        lap("typed", "validate")
        encode({"events": built})
        lap("typed", "serialize")
        for w in dicts:
            validate_wire(w)
        lap("wire", "validate")
        encode({"events": dicts})
        lap("wire", "serialize")
        json.dumps({"events": dicts})
        lap("json.dumps", "serialize")
    scale = 1e6 / len(work.records)
    return {path: {k: v * scale for k, v in steps.items()} for path, steps in costs.items()}
