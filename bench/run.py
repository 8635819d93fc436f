"""``make bench``: the ingestion client against a raw-httpx baseline, in one run.

Starts its own sink (``bench.sink``, a separate process), checks that the sink is not the
bottleneck, then measures, rotating the contenders round by round: events/s of the baseline,
typed, wire and async paths (as ratios to the baseline of the same round), CPU per event
without HTTP, the quota run, profiles of the paths below their target, the memory run, the
background sender's enqueue and drain (``bench.enqueue``) and the fleet run (``bench.fleet``).
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
from datetime import UTC, datetime
from pathlib import Path

import httpx

from togai_ingest.request import encode

from . import enqueue, fleet, memory
from .contenders import BATCH, CONTENDERS, TOKEN, Timer, Workload, cpu_costs
from .data import make_records, to_wire
from .profile import profiles
from .quota import quota_run
from .report import TARGETS, Report, Round, SinkCheck, median_ratio
from .sink import Parse, SinkProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.md"
TMP = ROOT / "bench" / "tmp"


def _revision() -> str:
    """The commit measured, ``+changes`` when the work tree differs from it."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return (head.stdout.strip() or "unknown") + (" +changes" if dirty.stdout.strip() else "")


def _workload(count: int, seed: int = 7) -> Workload:
    records = make_records(count, seed)
    return Workload(records, [to_wire(r) for r in records])


def probe_sink(parse: Parse, body: bytes, seconds: float = 1.0) -> SinkCheck:
    """Drive a sink with pre-encoded batches from 2 raw httpx connections for ``seconds``."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sent = [0, 0]
    with SinkProcess(parse=parse) as sink:

        def drive(slot: int, deadline: float) -> None:
            with httpx.Client(base_url=sink.url, headers=headers) as http:
                while time.perf_counter() < deadline:
                    http.post("/ingestBatch", content=body).raise_for_status()
                    sent[slot] += 1

        before, started = sink.stats(), time.perf_counter()
        threads = [threading.Thread(target=drive, args=(i, started + seconds)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        spent = sink.stats() - before
    return SinkCheck(parse, sum(sent) * BATCH / elapsed, spent.cpu / elapsed, spent.cpu / sum(sent))


def throughput(work: Workload, rounds: int) -> list[Round]:
    """Every contender once per round, in an order rotated each round."""
    names = list(CONTENDERS)
    warm = Workload(work.records[: 20 * BATCH], work.wire[: 20 * BATCH])
    results: list[Round] = []
    with SinkProcess(parse="count") as sink:
        for contender in CONTENDERS.values():  # imports, compiled validator, caches
            contender(sink.url, warm, Timer())
        for number in range(rounds):
            measured = Round()
            for name in names[number % len(names) :] + names[: number % len(names)]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--events", type=int, default=100_000, help="events per contender")
    parser.add_argument("--quota-events", type=int, default=25_000)
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true", help="no memory run")
    parser.add_argument("--skip-fleet", action="store_true", help="no fleet run (issue 9)")
    parser.add_argument(
        "--profile",
        choices=["missed", "all", "none"],
        default="missed",
        help="profile the contenders that missed their target (default), all, or none",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started, load_at_start = time.monotonic(), os.getloadavg()[0]
    when = datetime.now(UTC)
    TMP.mkdir(exist_ok=True)
    work = _workload(args.events)
    gc.freeze()  # the workload is not the client's garbage: keep it out of GC passes

    body = encode({"events": work.wire[:BATCH]})
    sink_checks = [probe_sink("count", body), probe_sink("json", body)]
    rounds = throughput(work, args.rounds)
    cpu = [cpu_costs(_workload(20_000, seed=3)) for _ in range(args.rounds)]
    print("quota run ...", flush=True)
    quota = quota_run(_workload(args.quota_events, seed=5).wire)
    missed = [name for name, target in TARGETS.items() if median_ratio(rounds, name) < target]
    to_profile = {"missed": missed, "all": list(CONTENDERS), "none": []}[args.profile]
    profiled = profiles(_workload(30_000, seed=9), to_profile, TMP)
    memory_result = None
    if not args.skip_memory:
        print(f"memory run: {args.memory_events:,} events ...", flush=True)
        memory_result = memory.memory_run(args.memory_events)
    print("background sender: enqueue and drain ...", flush=True)
    sections = [enqueue.run()]  # memory and spooled enqueue, spool drain (issue 8)
    fleet_report = None
    if not args.skip_fleet:
        fleet_report = fleet.run_all()  # one quota, 8 processes (issue 9)
        sections.append(fleet.render(fleet_report))

    header = (
        f"# `make bench` — {when:%Y-%m-%d %H:%M} UTC\n\n"
        f"{platform.python_implementation()} {platform.python_version()} · "
        f"{os.cpu_count()} CPUs · {platform.system()} {platform.release()} {platform.machine()} "
        f"· commit {_revision()} · {args.rounds} rounds × {args.events:,} events per contender "
        f"· batches of {BATCH} · run took {time.monotonic() - started:.0f} s · load average "
        f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    result = Report(
        header, rounds, cpu, quota, sink_checks, memory_result, profiled, fleet_report, sections
    )
    text = result.render()
    print(text)
    args.output.write_text(text, encoding="utf-8")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
