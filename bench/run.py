"""``make bench``: the ingestion client against a raw-httpx baseline, in one run.

Starts its own sink (``bench.sink``, a separate process), then measures, alternating the
contenders round by round: events/s of the baseline, typed, wire and async paths (as ratios to
the baseline of the same round), CPU per event without HTTP, the quota run and the memory run.
Prints a markdown report with PASS/FAIL per target and writes it to ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from togai_ingest.request import encode

from . import enqueue, fleet, memory, report
from .contenders import BATCH, CONTENDERS, TOKEN, Timer, Workload, cpu_costs
from .data import make_records, to_wire
from .profile import ProfilingTimer
from .quota import quota_run
from .report import Report, Round, SinkCheck
from .sink import Parse, SinkProcess

RESULTS = Path(__file__).resolve().parent / "results.md"
TMP = Path(__file__).resolve().parent / "tmp"
TARGETS = {"typed": 0.6, "wire": 0.8}
"""Minimum events/s as a share of the baseline's (issue 4)."""


def _revision() -> str:
    """The commit measured, ``+changes`` when the work tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" +changes" if dirty.stdout.strip() else "")


def _workload(count: int, seed: int = 7) -> Workload:
    records = make_records(count, seed)
    return Workload(records, [to_wire(r) for r in records])


def probe_sink(parse: Parse, body: bytes, seconds: float = 1.0, connections: int = 2) -> SinkCheck:
    """Drive a sink with pre-encoded batches from ``connections`` raw httpx connections."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sent = [0] * connections
    with SinkProcess(parse=parse) as sink:

        def drive(slot: int, deadline: float) -> None:
            with httpx.Client(base_url=sink.url, headers=headers) as http:
                while time.perf_counter() < deadline:
                    http.post("/ingestBatch", content=body).raise_for_status()
                    sent[slot] += 1

        before = sink.stats()
        started = time.perf_counter()
        threads = [
            threading.Thread(target=drive, args=(i, started + seconds)) for i in range(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        spent = sink.stats() - before
    return SinkCheck(
        parse=parse,
        connections=connections,
        events_per_second=sum(sent) * BATCH / elapsed,
        busy=spent.cpu / elapsed,
        cpu_per_request=spent.cpu / spent.requests,
    )


def throughput(work: Workload, rounds: int) -> list[Round]:
    """Every contender once per round, in an order rotated each round."""
    names = list(CONTENDERS)
    warm = Workload(work.records[: 20 * BATCH], work.wire[: 20 * BATCH])
    results: list[Round] = []
    with SinkProcess(parse="count") as sink:
        for contender in CONTENDERS.values():  # imports, compiled validator, caches
            contender(sink.url, warm, Timer())
        for number in range(rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            measured = Round()
            for name in order:
                before, timer = sink.stats(), Timer()
                seconds = CONTENDERS[name](sink.url, work, timer)
                spent = sink.stats() - before
                if spent.events != len(work.wire) + BATCH or spent.bad:
                    raise RuntimeError(f"{name}: the sink counted {spent}")
                measured.events_per_second[name] = len(work.wire) / seconds
                measured.sink_busy[name] = spent.cpu / seconds
                measured.client_cpu[name] = timer.cpu / len(work.wire)
            results.append(measured)
            print(f"round {number + 1}/{rounds}: {measured.summary()}", flush=True)
    return results


def cpu(work: Workload, rounds: int) -> list[dict[str, float]]:
    return [cpu_costs(work) for _ in range(rounds)]


def profiles(work: Workload, names: list[str]) -> dict[str, str]:
    """pyinstrument on each contender named, one send of ``work``; the library's hotspots."""
    tables: dict[str, str] = {}
    with SinkProcess(parse="count") as sink:
        for name in names:
            timer = ProfilingTimer()
            seconds = CONTENDERS[name](sink.url, work, timer)
            html = TMP / f"profile-{name}.html"
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(timer.html(), encoding="utf-8")
            tables[name] = report.profile_table(name, seconds, timer.hotspots(), html)
    return tables


def _wait(ready: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            return False
        print("waiting for togai-ingest (src/togai_ingest/cli.py) ...", flush=True)
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--events", type=int, default=100_000, help="events per contender")
    parser.add_argument("--quota-events", type=int, default=25_000)
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true", help="no memory run")
    parser.add_argument("--skip-fleet", action="store_true", help="no fleet run (issue 9)")
    parser.add_argument(
        "--cli-wait", type=float, default=0.0, help="seconds to wait for togai-ingest to appear"
    )
    parser.add_argument(
        "--profile",
        choices=["missed", "all", "none"],
        default="missed",
        help="profile the contenders that missed their target (default), all, or none",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    result = Report(
        when=datetime.now(UTC),
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        cpus=os.cpu_count() or 0,
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        revision=_revision(),
        rounds=args.rounds,
        events=args.events,
        targets=TARGETS,
    )
    work = _workload(args.events)
    gc.freeze()  # the workload is not the client's garbage: keep it out of GC passes

    body = encode({"events": work.wire[:BATCH]})
    result.sink_checks = [probe_sink("count", body), probe_sink("json", body)]
    result.rounds_measured = throughput(work, args.rounds)
    result.cpu = cpu(_workload(20_000, seed=3), args.rounds)
    print("quota run ...", flush=True)
    result.quota = quota_run(_workload(args.quota_events, seed=5).wire)

    missed = [name for name, target in TARGETS.items() if result.ratio(name) < target]
    to_profile = {"missed": missed, "all": list(CONTENDERS), "none": []}[args.profile]
    result.profiles = profiles(_workload(30_000, seed=9), to_profile)

    if args.skip_memory:
        result.memory_note = "skipped (--skip-memory)"
    elif _wait(memory.cli_ready, args.cli_wait):
        print(f"memory run: {args.memory_events:,} events ...", flush=True)
        path = memory.jsonl_file(args.memory_events)
        result.memory = memory.memory_run(path, args.memory_events)
    else:
        result.memory_note = "not run: togai-ingest is not installed yet (src/togai_ingest/cli.py)"

    result.duration = time.monotonic() - started
    result.load = (load_at_start, os.getloadavg()[0])
    text = result.render()
    print("background sender: enqueue and drain ...", flush=True)
    text += "\n" + enqueue.run()  # bench/enqueue.py: memory and spooled enqueue, spool drain
    if not args.skip_fleet:
        text += "\n" + fleet.render(fleet.run_all())  # bench/fleet.py: one quota, 8 processes
    print(text)
    args.output.write_text(text, encoding="utf-8")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
