"""Progress of ``togai-ingest send`` on stderr: a rich bar on a terminal, else periodic lines."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Sequence

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .readers import Input, is_regular_file

__all__ = ["COUNT_LINES_UP_TO", "Display", "count_lines"]

COUNT_LINES_UP_TO = 256 * 1024 * 1024
"""Inputs up to this many bytes are counted (for the bar's total and ETA) before sending."""


class _Rate(ProgressColumn):
    """Events per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- events/s" if speed is None else f"{speed:,.0f} events/s")


class Display:
    """Progress and messages on stderr: a rich bar on a terminal, else periodic lines."""

    def __init__(self, total: int | None, done: int, mode: str, interval: float) -> None:
        self.total, self.done, self.mode, self.interval = total, done, mode, interval
        self._first = done
        self._started = time.monotonic()
        self._bar: Progress | None = None
        if mode == "bar":
            self._bar = Progress(
                TextColumn("sending"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task("sending", total=total, completed=done)

    def __enter__(self) -> Display:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.advance(self._task, count)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message, err=True)

    async def tick(self) -> None:
        """Print a progress line every ``interval`` seconds (plain mode only)."""
        if self.mode != "lines":
            return
        while True:
            await asyncio.sleep(self.interval)
            self.note(self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = (self.done - self._first) / elapsed if elapsed > 0 else 0.0
        text = f"progress: {self.done:,} events"
        if self.total:
            left = max(0, self.total - self.done)
            eta = _duration(left / rate) if rate > 0 else "?"
            text += f" of {self.total:,} ({100 * self.done / self.total:.0f}%), ETA {eta}"
        return f"{text}, {rate:,.0f} events/s, {_duration(elapsed)} elapsed"


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def count_lines(inputs: Sequence[Input]) -> list[int] | None:
    """Records per input (lines, less a CSV header), when every input is a regular readable
    file and their total size is small enough to count quickly; else None."""
    if not all(is_regular_file(item.path) for item in inputs):
        return None
    try:
        if sum(os.path.getsize(item.path) for item in inputs) > COUNT_LINES_UP_TO:
            return None
        counts = []
        for item in inputs:
            lines, last = 0, b"\n"
            with open(item.path, "rb") as stream:
                while block := stream.read(1 << 20):
                    lines += block.count(b"\n")
                    last = block[-1:]
            lines += last != b"\n"
            counts.append(max(0, lines - (item.format == "csv")))
    except OSError:  # gone or unreadable: reading it says so, with the file's name
        return None
    return counts
