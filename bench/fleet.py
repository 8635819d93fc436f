"""The fleet run: several processes share one quota (issue 9).

``python -m bench.fleet`` starts the bench sink (a token bucket at the document's quota,
``x-togai-rate-limit``, 50 requests/s; 50 ms latency) and
runs 8 processes x 5,000 events through ``togai_ingest.AsyncClient`` (its defaults: batches of
100, 4 in flight, the default retry policy) three ways: a fixed per-process limit at the quota
that ignores the server (the client before issue 9), the adaptive limit alone (the default),
and the Redis-shared limit (``SharedRateLimit``, a real ``redis-server`` started here). Then
one process with the Redis limit, and the Redis limit's overhead per request. Every worker is
ready (imported, events built, client open, one warm-up event sent outside the run) before a
common start; the time is from the first worker's start to the last one's end, by one clock.

``RedisServer`` starts Debian's ``redis-server`` on a free loopback port in a temporary
directory, without persistence; the tests use it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from togai_ingest.spec import spec

from .sink import SinkProcess

__all__ = ["FleetResult", "RedisServer", "fleet_run", "main", "render"]

Mode = Literal["fixed", "adaptive", "shared"]
MODES: tuple[Mode, ...] = ("fixed", "adaptive", "shared")
_ROOT = Path(__file__).resolve().parent.parent
QUOTA = spec().requests_per_second
"""The document's quota (``info.x-togai-rate-limit``): the sink's bucket and every limit."""
LATENCY = 0.05
BATCH = 100
TARGETS: dict[Mode, tuple[float, float]] = {
    "fixed": (1.0, 0.0),
    "adaptive": (0.05, 0.90),
    "shared": (0.01, 0.95),
}
"""Per mode: the most requests answered 429 (a share), the least share of the quota."""
SINGLE_TARGET = 0.95


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` on a free port of 127.0.0.1, no persistence, in a temporary directory.

    ``stop()`` kills it (the tests use this to take Redis away mid-run); ``start()`` again
    brings it back on the same port.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 10.0) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run 'make redis-server'")
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="togai-redis-")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--daemonize",
            "no",
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- one worker process ----------------------------------------------------------------------


def _limiter(mode: Mode, redis_url: str | None, token: str) -> Any:
    from togai_ingest.ratelimit import RateLimiter
    from togai_ingest.shared_limit import SharedRateLimit

    class Before(RateLimiter):
        """The client before issue 9: a fixed rate at the quota, deaf to the server (only the
        request that got a 429 waits for its Retry-After, in the retry policy)."""

        def observe(self, status: int | None, retry_after: float | None) -> None:
            pass

    if mode == "fixed":
        return Before(QUOTA, adaptive=False)
    if mode == "adaptive":
        return QUOTA  # a number: the adaptive limit, the client's default
    assert redis_url is not None
    return SharedRateLimit(redis_url, QUOTA, token=token)


async def _work(args: argparse.Namespace) -> dict[str, Any]:
    import togai_ingest

    from .contenders import TOKEN
    from .data import make_records, to_wire

    if os.environ.get("FLEET_DEBUG"):
        import logging

        logging.basicConfig(
            level=logging.INFO, format=f"%(created).3f {args.seed} %(message)s", stream=sys.stderr
        )
    events = [to_wire(r) for r in make_records(args.events, seed=args.seed)]
    limiter = _limiter(args.mode, args.redis, TOKEN)
    async with togai_ingest.AsyncClient(TOKEN, base_url=args.url, rate_limit=limiter) as client:
        # Warm up (connection, first-use costs) with one event that is not part of the run.
        await client.ingest_batch([to_wire(make_records(1, seed=10_000_000 + args.seed)[0])])
        print("ready", flush=True)
        sys.stdin.readline()  # the common start
        started_at = time.time()
        started = time.perf_counter()
        started_mono = time.monotonic()
        done: list[float] = []
        result = await client.send(
            events, batch_size=BATCH, collect=False, on_batch=lambda _: done.append(time.time())
        )
        seconds = time.perf_counter() - started
        ended_at = time.time()
        rate = getattr(client.rate_limiter, "rate", None)
        history = {
            name: [round(t - started_mono, 3) for t in getattr(client.rate_limiter, attr, ())]
            for name, attr in (("sends", "_sent"), ("refused", "_refused"))
        }
        throttles = getattr(client.rate_limiter, "throttles", None)
    return {
        "sent": len(events),
        "accepted": result.accepted,
        "failed": result.n_failed,
        "seconds": seconds,
        "started_at": started_at,
        "ended_at": ended_at,
        "done": done,
        "rate": rate,
        "throttles": throttles,
        **(history if os.environ.get("FLEET_DEBUG") else {}),
    }


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_work(args))), flush=True)
    return 0


# -- the run ---------------------------------------------------------------------------------


@dataclass
class FleetResult:
    mode: Mode
    processes: int
    events: int
    """Events per process."""
    seconds: float
    requests: int
    throttled: int
    distinct: int
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.processes * self.events

    @property
    def lost(self) -> int:
        return self.sent - self.distinct

    @property
    def share_throttled(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0

    @property
    def share_of_quota(self) -> float:
        return self.distinct / self.seconds / (QUOTA * BATCH)

    def passed(self) -> bool:
        most_throttled, least_share = (
            TARGETS[self.mode] if self.processes > 1 else (1.0, SINGLE_TARGET)
        )
        return (
            self.lost == 0
            and self.share_throttled <= most_throttled
            and self.share_of_quota >= least_share
        )


def fleet_run(
    mode: Mode,
    *,
    processes: int = 8,
    events: int = 5_000,
    redis_url: str | None = None,
    seed: int = 100,
) -> FleetResult:
    """``processes`` workers x ``events`` through ``AsyncClient`` against a fresh sink."""
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    with SinkProcess(latency=LATENCY, quota=QUOTA, track_ids=True) as sink:
        workers: list[subprocess.Popen[str]] = []
        try:
            for number in range(processes):
                command = [sys.executable, "-m", "bench.fleet", "worker", "--url", sink.url]
                command += ["--mode", mode, "--events", str(events), "--seed", str(seed + number)]
                if redis_url is not None:
                    command += ["--redis", redis_url]
                workers.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        cwd=_ROOT,
                        env=env,
                        text=True,
                    )
                )
            for worker in workers:
                assert worker.stdout is not None
                if worker.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a {mode} worker did not start")
            time.sleep(1.0)  # the sink's bucket refills after the warm-up requests
            before = sink.stats()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            reports: list[dict[str, Any]] = []
            for worker in workers:
                assert worker.stdout is not None
                line = worker.stdout.readline()
                if worker.wait(timeout=300) != 0 or not line:
                    raise RuntimeError(f"a {mode} worker failed")
                reports.append(json.loads(line))
            spent = sink.stats() - before
            # From the first worker's start to the last one's end (one clock: one machine).
            seconds = max(r["ended_at"] for r in reports) - min(r["started_at"] for r in reports)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
                for stream in (worker.stdin, worker.stdout):
                    if stream is not None:
                        stream.close()
    return FleetResult(
        mode=mode,
        processes=processes,
        events=events,
        seconds=seconds,
        requests=spent.requests,
        throttled=spent.throttled,
        distinct=spent.distinct,
        workers=reports,
    )


@dataclass(frozen=True)
class Overhead:
    sync_us: float
    async_us: float


def redis_overhead(redis_url: str, calls: int = 2_000) -> Overhead:
    """Mean microseconds one request spends in the shared limiter when nothing waits: the
    local limiter's bookkeeping and one EVALSHA round trip to Redis."""
    from togai_ingest.shared_limit import SharedRateLimit

    limiter = SharedRateLimit(redis_url, 1e9, key="overhead")
    limiter.acquire()  # connect, load the script
    started = time.perf_counter()
    for _ in range(calls):
        limiter.acquire()
    sync_us = (time.perf_counter() - started) / calls * 1e6

    async def measure() -> float:
        await limiter.acquire_async()
        started = time.perf_counter()
        for _ in range(calls):
            await limiter.acquire_async()
        return (time.perf_counter() - started) / calls * 1e6

    async_us = asyncio.run(measure())
    limiter.close()
    return Overhead(sync_us, async_us)


@dataclass
class FleetReport:
    runs: list[FleetResult]
    overhead: Overhead | None
    note: str = ""

    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed() for r in self.runs if r.mode != "fixed")


def run_all(processes: int = 8, events: int = 5_000, single_events: int = 20_000) -> FleetReport:
    runs: list[FleetResult] = []
    local: tuple[Mode, ...] = ("fixed", "adaptive")
    for number, mode in enumerate(local):
        print(f"fleet run: {mode}, {processes} x {events:,} events ...", flush=True)
        runs.append(fleet_run(mode, processes=processes, events=events, seed=1000 * number))
    if not RedisServer.available():
        return FleetReport(runs, None, "redis-server is not installed: no shared runs")
    with RedisServer() as redis:
        print(f"fleet run: shared, {processes} x {events:,} events ...", flush=True)
        runs.append(
            fleet_run("shared", processes=processes, events=events, redis_url=redis.url, seed=2000)
        )
        print(f"fleet run: shared, 1 x {single_events:,} events ...", flush=True)
        runs.append(
            fleet_run("shared", processes=1, events=single_events, redis_url=redis.url, seed=3000)
        )
        overhead = redis_overhead(redis.url)
    return FleetReport(runs, overhead)


def render(report: FleetReport) -> str:
    lines = [
        f"## Fleet run: sink +{LATENCY * 1000:.0f} ms per request, 429 above {QUOTA:.0f} "
        f"requests/s (token bucket {QUOTA:.0f}, {QUOTA:.0f}/s); `AsyncClient` per process",
        "",
        "| limit | processes x events | seconds | share of quota | requests | answered 429 "
        "| lost | target |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    names = {
        "fixed": "fixed per process (before)",
        "adaptive": "adaptive only",
        "shared": "Redis-shared",
    }
    for r in report.runs:
        if r.mode == "fixed":
            target = "(reference)"
        elif r.processes > 1:
            most, least = TARGETS[r.mode]
            target = f"≤ {most:.0%} 429, ≥ {least:.0%} quota, 0 lost"
        else:
            target = f"≥ {SINGLE_TARGET:.0%} quota, 0 lost"
        verdict = "" if r.mode == "fixed" else (" PASS" if r.passed() else " FAIL")
        lines.append(
            f"| {names[r.mode]} | {r.processes} x {r.events:,} | {r.seconds:.2f} | "
            f"{r.share_of_quota:.1%} | {r.requests} | {r.throttled} ({r.share_throttled:.1%}) | "
            f"{r.lost} | {target}{verdict} |"
        )
    lines.append("")
    if report.overhead is not None:
        lines.append(
            f"Redis-shared limit overhead per request (nothing waiting; local bookkeeping and "
            f"one EVALSHA round trip to a loopback redis-server): "
            f"{report.overhead.sync_us:.0f} µs sync, {report.overhead.async_us:.0f} µs async."
        )
    if report.note:
        lines.append(report.note)
    verdict = "PASS" if report.passed() else "FAIL"
    lines += ["", f"- {verdict} fleet run targets (issue 9)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--events", type=int, default=5_000, help="events per process")
    parser.add_argument("--single-events", type=int, default=20_000)
    parser.add_argument(
        "--only",
        choices=MODES,
        default=None,
        help="one run of that mode; prints each worker (FLEET_DEBUG=1: its batches' end times, "
        "the limiter's log, and when its latest requests went and 429s came)",
    )
    args = parser.parse_args(argv)
    if args.only is not None:
        return _only(args.only, args.processes, args.events)
    report = run_all(args.processes, args.events, args.single_events)
    print(render(report))
    return 0 if report.passed() else 1


def _only(mode: Mode, processes: int, events: int) -> int:
    redis = RedisServer().start() if mode == "shared" else None
    try:
        run = fleet_run(
            mode, processes=processes, events=events, redis_url=redis.url if redis else None
        )
    finally:
        if redis is not None:
            redis.close()
    print(render(FleetReport([run], None)))
    start = min(w["started_at"] for w in run.workers)
    for worker in run.workers:
        print({k: v for k, v in worker.items() if k != "done"})
        if os.environ.get("FLEET_DEBUG"):
            print(" ".join(f"{t - start:.1f}" for t in worker["done"]))
    return 0 if run.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
