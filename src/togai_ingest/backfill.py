"""One run of ``togai-ingest send``: feed the records to ``AsyncClient.send``, record every
event not accepted, keep the checkpoint, and report; ``run`` returns the exit status."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from .checkpoint import Checkpoint, Watermark
from .client import AsyncClient, SendAbortedError
from .errors import AuthenticationError
from .progress import Display, count_lines
from .readers import START, Input, InputError, Position, Record, read_records
from .results import BatchOutcome

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_NOT_ACCEPTED",
    "EXIT_USAGE",
    "TOKEN_ENV",
    "Options",
    "Plan",
    "StartError",
    "prepare",
    "run",
]

TOKEN_ENV = "TOGAI_API_TOKEN"
EXIT_OK, EXIT_SOME_NOT_ACCEPTED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_SHOWN_PROBLEMS = 10


class StartError(Exception):
    """The run cannot start (the rejected file cannot be opened); nothing was sent."""


@dataclass(frozen=True)
class Options:
    zone: dt.tzinfo | None
    batch_size: int
    concurrency: int
    rejected: Path | None
    checkpoint: Path | None
    quiet: bool
    progress_interval: float


@dataclass(frozen=True)
class Plan:
    """A run to do: its inputs and options, the checkpoint, where to start, and how much of
    the rejected file to keep (None: write it afresh)."""

    inputs: Sequence[Input]
    options: Options
    checkpoint: Checkpoint | None = None
    start: Position = START
    keep: int | None = None


def prepare(inputs: Sequence[Input], options: Options) -> Plan:
    """The run, resumed where ``options.checkpoint`` says; raises ``CheckpointError``."""
    if options.checkpoint is None:
        return Plan(inputs, options)
    checkpoint = Checkpoint(options.checkpoint, inputs)
    resume = checkpoint.load()
    if resume is None:
        return Plan(inputs, options, checkpoint)
    rejected = options.rejected
    same_file = rejected is not None and resume.rejected == str(rejected.resolve())
    keep = resume.rejected_size if same_file else 0
    return Plan(inputs, options, checkpoint, resume.position, keep)


# --- The rejected file.


class _RejectedFile:
    """JSON Lines of ``{"kind", "source", "reason", "event"}``; ``send`` reads them again."""

    def __init__(self, path: Path, keep: int | None) -> None:
        self.path = path
        if keep is not None and path.exists():
            self._stream: IO[bytes] = open(path, "r+b")  # noqa: SIM115 - closed in close()
            self._stream.truncate(min(keep, path.stat().st_size))
            self._stream.seek(0, os.SEEK_END)
        else:
            self._stream = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.size = self._stream.tell()
        self.count = 0

    def write(self, kind: str, event: Any, reason: str, source: str) -> None:
        entry = {"kind": kind, "source": source, "reason": reason, "event": event}
        try:
            data = json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        except UnicodeEncodeError:  # a lone surrogate from a \udcxx escape
            data = json.dumps(entry).encode() + b"\n"
        self._stream.write(data)
        self.size += len(data)
        self.count += 1

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


# --- The state of a run.


@dataclass
class _Tally:
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    invalid: int = 0

    @property
    def total(self) -> int:
        return self.accepted + self.rejected + self.failed + self.invalid


@dataclass
class _Job:
    """The state of one ``send`` run, updated from the reader and from ``on_batch``."""

    display: Display
    watermark: Watermark
    window: int
    rejected_file: _RejectedFile | None
    checkpoint: Checkpoint | None
    tally: _Tally = field(default_factory=_Tally)
    stop_reason: str | None = None
    error: str | None = None
    auth_error: AuthenticationError | None = None
    abandoned: bool = False
    shown: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: str) -> None:
        """Read no more input; batches already read are still sent."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()

    def fail(self, message: str) -> None:
        self.error = self.error or message
        self.stop("error")

    def problem(self, kind: str, event: Any, reason: str, source: str) -> None:
        """An event not accepted: to the rejected file, and the first ones to stderr."""
        if self.rejected_file is not None:
            self.rejected_file.write(kind, event, reason, source)
        if self.shown < _SHOWN_PROBLEMS:
            self.display.note(f"{source}: {kind}: {reason}")
        self.shown += 1

    def save(self) -> None:
        """Write the checkpoint (after the rejected entries it vouches for)."""
        if self.checkpoint is None:
            return
        rejected = self.rejected_file
        if rejected is not None:
            rejected.flush()
        self.checkpoint.save(
            self.watermark.position,
            None if rejected is None else str(rejected.path.resolve()),
            None if rejected is None else rejected.size,
        )

    def invalid(self, record: Record) -> None:
        self.problem("invalid", record.raw, record.problem or "invalid", record.source)
        self.tally.invalid += 1
        self.display.advance(1)
        if self.watermark.local(record.end):
            self.save()

    def on_batch(self, outcome: BatchOutcome) -> None:
        try:
            self._record(outcome)
        except OSError as error:
            self.fail(f"cannot write: {error}")

    def _record(self, outcome: BatchOutcome) -> None:
        source = self.watermark.source
        for rejected in outcome.rejected:
            where = source(rejected.index) if rejected.index >= 0 else "(not sent)"
            self.problem("rejected", rejected.event, rejected.message, where)
            self.tally.rejected += rejected.index >= 0
        for failed in outcome.failed:
            self.problem("failed", failed.event, str(failed.error), source(failed.index))
            if isinstance(failed.error, AuthenticationError):
                self.auth_error = failed.error
        for invalid in outcome.invalid:
            self.problem("invalid", invalid.event, str(invalid.error), source(invalid.index))
        self.tally.accepted += outcome.accepted
        self.tally.failed += len(outcome.failed)
        self.tally.invalid += len(outcome.invalid)
        self.display.advance(outcome.count)
        if self.auth_error is not None:
            self.watermark.settle(outcome.start, outcome.count)  # a resumed run sends them
            self.stop("the token was refused")
        elif self.watermark.done(outcome.start, outcome.count):
            self.save()
        self.wake.set()

    def unsettled(self) -> None:
        """After an abandoned or aborted run: the events sent with no outcome are failed."""
        if self.abandoned:
            reason = "abandoned by a second interrupt: it may or may not have been delivered"
        else:
            reason = "not sent: the API refused the token"
        for source, event in self.watermark.unsettled():
            self.problem("failed", event, reason, source)
            self.tally.failed += 1
            self.display.advance(1)


# --- Sending.


def run(client: AsyncClient, plan: Plan) -> int:
    """Send the plan's inputs with ``client``, print the summary and the problems, and return
    the exit status; raises ``StartError`` if the rejected file cannot be opened."""
    inputs, options, start, store = plan.inputs, plan.options, plan.start, plan.checkpoint
    counts = count_lines(inputs)
    total = sum(counts) if counts is not None else None
    done = sum(counts[: start.file]) + start.line if counts is not None else 0
    mode = "none" if options.quiet else "bar" if sys.stderr.isatty() else "lines"
    try:
        sink = None if options.rejected is None else _RejectedFile(options.rejected, plan.keep)
    except OSError as error:
        raise StartError(f"cannot open {options.rejected}: {error.strerror or error}") from None
    display = Display(total, done, mode, options.progress_interval)
    job = _Job(display, Watermark(start), options.concurrency * options.batch_size, sink, store)
    started = time.monotonic()
    try:
        if store is not None and start != START:
            where = f"{inputs[start.file].name}:{start.line}"
            display.note(f"resuming after {where}, as {store.path} says")
        job.save()
        records = read_records(inputs, zone=options.zone, start=start)
        with display:
            asyncio.run(_run(client, records, job, options))
        job.unsettled()
        if job.stop_reason is None and not job.abandoned:
            job.save()
    except OSError as error:
        job.fail(f"cannot write: {error}")
    finally:
        if sink is not None:
            sink.close()
    return _report(job, time.monotonic() - started, options)


async def _feed(records: Generator[Record, None, None], job: _Job) -> AsyncIterator[dict[str, Any]]:
    """The valid events for ``send``; invalid ones are recorded on the way. At most
    ``job.window`` events are outstanding, which bounds memory and what a killed run
    sends again."""
    try:
        for record in records:
            if job.stop_reason is not None:
                break
            if record.event is None:
                job.invalid(record)
                continue
            while job.watermark.outstanding >= job.window and job.stop_reason is None:
                job.wake.clear()
                await job.wake.wait()
            if job.stop_reason is not None:
                break
            job.watermark.sent(record.source, record.end, record.event)
            yield record.event
    except InputError as error:
        job.fail(str(error))
    except OSError as error:
        job.fail(f"cannot write: {error}")
    finally:
        records.close()


async def _run(
    client: AsyncClient, records: Generator[Record, None, None], job: _Job, options: Options
) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def interrupt() -> None:
        if job.stop_reason is not None and main_task is not None:
            job.abandoned = True
            main_task.cancel()
            return
        job.stop("interrupted")
        job.display.note("stopping: waiting for the batches in flight (interrupt again to abandon)")

    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, interrupt)
    ticker = asyncio.create_task(job.display.tick())
    try:
        async with client:
            await client.send(
                _feed(records, job),
                batch_size=options.batch_size,
                concurrency=options.concurrency,
                on_batch=job.on_batch,
                collect=False,  # on_batch records every outcome; memory stays flat
                validated=True,  # the readers validated each record, to name its line
            )
    except SendAbortedError as error:
        job.auth_error = job.auth_error or (
            error.cause if isinstance(error.cause, AuthenticationError) else None
        )
    except asyncio.CancelledError:
        job.abandoned = True
    finally:
        ticker.cancel()
        for number in signals:
            loop.remove_signal_handler(number)


# --- The report.


def _summary(job: _Job, seconds: float) -> str:
    tally = job.tally
    rate = tally.total / seconds if seconds > 0 else 0.0
    return (
        f"summary: {tally.accepted:,} accepted, {tally.rejected:,} rejected, "
        f"{tally.failed:,} failed, {tally.invalid:,} invalid; "
        f"{tally.total:,} events in {seconds:.2f} s ({rate:,.0f} events/s)"
    )


def _report(job: _Job, seconds: float, options: Options) -> int:
    """Summary on stdout, what went wrong on stderr; the exit status."""
    if not options.quiet:
        click.echo(_summary(job, seconds))
    if job.shown > _SHOWN_PROBLEMS:
        where = job.rejected_file.path if job.rejected_file else "(pass --rejected PATH to keep)"
        click.echo(
            f"togai-ingest: {job.shown - _SHOWN_PROBLEMS:,} more problems: {where}", err=True
        )
    if job.rejected_file is not None and job.rejected_file.count and not options.quiet:
        click.echo(f"rejected file: {job.rejected_file.path} ({job.rejected_file.count:,} events)")
    resume = f"; run the same command again to resume ({options.checkpoint})"
    resume = resume if options.checkpoint else ""
    if job.error is not None:
        click.echo(f"togai-ingest: error: {job.error}{resume}", err=True)
        return EXIT_USAGE
    if job.auth_error is not None:
        click.echo(
            f"togai-ingest: error: the API refused the token ({job.auth_error}); "
            f"check {TOKEN_ENV}{resume}",
            err=True,
        )
        return EXIT_USAGE
    if job.abandoned or job.stop_reason == "interrupted":
        what = "abandoned the batches in flight" if job.abandoned else "stopped"
        click.echo(f"togai-ingest: interrupted: {what}{resume}", err=True)
        return EXIT_INTERRUPTED
    ok = job.tally.total == job.tally.accepted
    return EXIT_OK if ok else EXIT_SOME_NOT_ACCEPTED
