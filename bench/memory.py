"""The memory run: ``togai-ingest send`` on a large JSON Lines file, as a child process.

Peak RSS is measured twice, never with ``wait4``/``RUSAGE_CHILDREN`` from this process: on
Linux a child's ``ru_maxrss`` includes the RSS of the parent it was forked from (``exec``
keeps the old memory's high-water mark), and this process holds the benchmark's events.

- ``/usr/bin/time -f %M`` (when installed) launches the command: its ``ru_maxrss`` is exact
  (``time`` itself is small).
- ``VmHWM`` (the kernel's high-water mark of the RSS) of the command, read from ``/proc``
  every 20 ms: exact up to growth in its last 20 ms.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .contenders import TOKEN
from .data import write_jsonl
from .sink import SinkProcess

__all__ = ["MemoryResult", "MiB", "memory_run"]

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "togai-ingest"
MiB = 1024 * 1024


@dataclass(frozen=True)
class MemoryResult:
    events: int
    seconds: float
    time_rss: int | None
    """Bytes: peak RSS as ``/usr/bin/time -f %M`` reports it (None without it)."""
    polled_rss: int
    """Bytes: the largest ``VmHWM`` read from ``/proc`` (the command and its children)."""
    exit_code: int
    distinct: int
    """Distinct event ids the sink accepted."""
    command: str
    output_tail: str
    """The command's last lines of output (its summary)."""

    @property
    def peak_rss(self) -> int:
        return self.polled_rss if self.time_rss is None else max(self.time_rss, self.polled_rss)

    @property
    def events_per_second(self) -> float:
        return self.distinct / self.seconds


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _high_water_mark(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:  # ended, or not Linux
        pass
    return 0


def _poll(pid: int, peak: list[int], done: threading.Event) -> None:
    while not done.wait(0.02):
        peak[0] = max([peak[0], *(_high_water_mark(p) for p in _tree(pid))])


def memory_run(count: int, *, timeout: float = 900) -> MemoryResult:
    """Run ``togai-ingest send`` (rate limit off, default concurrency) to a sink, on
    ``bench/tmp/events-<count>.jsonl`` (written once and reused)."""
    path = ROOT / "bench" / "tmp" / f"events-{count}.jsonl"
    if not path.exists():
        write_jsonl(path, count)
    time_file = path.with_suffix(".maxrss")
    time_file.unlink(missing_ok=True)
    timer = shutil.which("time", path="/usr/bin:/bin")
    with SinkProcess(track_ids=True) as sink:
        command = [str(CLI), "send", str(path), "--base-url", sink.url, "--rate-limit", "0"]
        launcher = [timer, "-f", "%M", "-o", str(time_file)] if timer else []
        log = path.with_suffix(".cli.log")
        with log.open("wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen(
                [*launcher, *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TOGAI_API_TOKEN": TOKEN},
            )
            peak, done = [0], threading.Event()
            poller = threading.Thread(target=_poll, args=(process.pid, peak, done))
            poller.start()
            try:
                exit_code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
            finally:
                done.set()
                poller.join()
            seconds = time.perf_counter() - started
        distinct = sink.stats().distinct
    time_rss = None
    if timer and time_file.exists():
        kib = time_file.read_text().strip().splitlines()[-1]
        time_rss = int(kib) * 1024 if kib.isdigit() else None
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-2:]
    return MemoryResult(
        events=count,
        seconds=seconds,
        time_rss=time_rss,
        polled_rss=peak[0],
        exit_code=exit_code,
        distinct=distinct,
        command=" ".join(["togai-ingest", "send", path.name, "--rate-limit", "0"]),
        output_tail="\n".join(tail),
    )
