"""One run of ``togai-ingest send``: feed the records to ``AsyncClient.send``, record every
event not accepted, keep the checkpoint, and report; ``run`` returns the exit status."""

from __future__ import annotations

import asyncio
import contextlib
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
from .client import TOKEN_ENV, AsyncClient, SendAbortedError
from .errors import AuthenticationError, TogaiError
from .progress import Display, count_lines
from .readers import START, Input, InputError, Position, Record, read_records
from .results import BatchOutcome, SendResult
from .validation import EncodedEvent

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_NOT_ACCEPTED",
    "EXIT_USAGE",
    "Options",
    "Plan",
    "StartError",
    "plan",
    "run",
]

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


def plan(inputs: Sequence[Input], options: Options) -> Plan:
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


def _wire(event: Any) -> Any:
    """What the rejected file shows of an event: its wire form."""
    return event.wire() if isinstance(event, EncodedEvent) else event


def _entry(kind: str, event: Any, reason: str, source: str) -> bytes:
    """One line of the rejected file (JSON, whatever ``event`` holds)."""
    entry = {"kind": kind, "source": source, "reason": reason, "event": _wire(event)}
    try:
        try:
            return json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        except UnicodeEncodeError:  # a lone surrogate from a \udcxx escape
            return json.dumps(entry).encode() + b"\n"
    except (ValueError, TypeError, RecursionError):  # nested too deep to write back
        entry["event"] = None
        entry["reason"] = f"{reason} (the record cannot be written back as JSON)"
        return json.dumps(entry).encode() + b"\n"


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
        self._synced = -1
        self.count = 0

    def write(self, kind: str, event: Any, reason: str, source: str) -> None:
        """One entry."""
        self.write_line(_entry(kind, event, reason, source))

    def write_line(self, data: bytes) -> None:
        """One entry made by ``_entry``."""
        self._stream.write(data)
        self.size += len(data)
        self.count += 1

    def sync(self) -> None:
        """To disk: the checkpoint about to be saved vouches for these entries."""
        self._stream.flush()
        if self._synced != self.size:
            os.fsync(self._stream.fileno())
            self._synced = self.size

    def close(self) -> None:
        self._stream.close()


# --- The state of a run.


@dataclass
class _Job:
    """The state of one ``send`` run, updated from the reader and from ``on_batch``.

    ``tally`` counts every record read exactly once: invalid ones as they are read, the
    others from their batch's outcome (each index of the batch once: the first outcome
    reported for it, accepted if none), or as failed if the run ends without one."""

    display: Display
    watermark: Watermark
    window: int
    rejected_file: _RejectedFile | None
    checkpoint: Checkpoint | None
    tally: SendResult = field(default_factory=SendResult)
    read: int = 0
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

    def problem(self, kind: str, event: Any, reason: str, source: str) -> bytes | None:
        """An event not accepted: the first ones to stderr; its rejected-file entry (None
        without a rejected file)."""
        if self.shown < _SHOWN_PROBLEMS:
            self.display.note(f"{source}: {kind}: {reason}")
        self.shown += 1
        return None if self.rejected_file is None else _entry(kind, event, reason, source)

    def write(self, entry: bytes) -> None:
        """The watermark's sink: entries it passed, in input order."""
        if self.rejected_file is not None:
            self.rejected_file.write_line(entry)

    def save(self) -> None:
        """Write the checkpoint (after the rejected entries it vouches for)."""
        if self.checkpoint is None:
            return
        rejected = self.rejected_file
        if rejected is not None:
            rejected.sync()
        self.checkpoint.save(
            self.watermark.position,
            None if rejected is None else str(rejected.path.resolve()),
            None if rejected is None else rejected.size,
        )

    def invalid(self, record: Record) -> None:
        self.read += 1
        entry = self.problem("invalid", record.raw, record.problem or "invalid", record.source)
        self.tally.n_invalid += 1
        self.display.advance(1)
        if self.watermark.local(record.end, entry, self.write):
            self.save()

    def on_batch(self, outcome: BatchOutcome) -> None:
        try:
            self._record(outcome)
        except OSError as error:
            self.fail(f"cannot write: {error}")

    def _record(self, outcome: BatchOutcome) -> None:
        source, first, last = self.watermark.source, outcome.start, outcome.start + outcome.count
        found: dict[int, tuple[str, Any, str]] = {}
        for rejected in outcome.rejected:
            found.setdefault(rejected.index, ("rejected", rejected.event, rejected.message))
        for failed in outcome.failed:
            found.setdefault(failed.index, ("failed", failed.event, str(failed.error)))
            if isinstance(failed.error, AuthenticationError):
                self.auth_error = failed.error
        for invalid in outcome.invalid:
            found.setdefault(invalid.index, ("invalid", invalid.event, str(invalid.error)))
        counts = {"rejected": 0, "failed": 0, "invalid": 0}
        for index, (kind, event, reason) in sorted(found.items()):
            if not first <= index < last:  # not an event of this batch: nothing to count
                self.display.note(f"(not sent): {kind}: {reason}")
                continue
            entry = self.problem(kind, event, reason, source(index))
            if entry is not None:
                self.watermark.note(index, entry)
            counts[kind] += 1
        self.tally.n_rejected += counts["rejected"]
        self.tally.n_failed += counts["failed"]
        self.tally.n_invalid += counts["invalid"]
        self.tally.accepted += outcome.count - sum(counts.values())
        self.display.advance(outcome.count)
        if self.auth_error is not None:
            self.watermark.settle(outcome.start, outcome.count)  # a resumed run sends them
            self.stop("the token was refused")
        elif self.watermark.done(outcome.start, outcome.count, self.write):
            self.save()
        self.wake.set()

    def finish(self) -> None:
        """At the end of the run: the entries still waiting (records past the watermark,
        read again by a resumed run), and the events sent with no outcome (an abandoned or
        aborted run), failed."""
        self.watermark.pending(self.write)
        if self.abandoned:
            reason = "abandoned by a second interrupt: it may or may not have been delivered"
        else:
            reason = "not sent: the API refused the token"
        for source, event in self.watermark.unsettled():
            entry = self.problem("failed", event, reason, source)
            if entry is not None:
                self.write(entry)
            self.tally.n_failed += 1
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
        job.finish()
        if job.stop_reason is None and not job.abandoned:
            job.save()
    except OSError as error:
        job.fail(f"cannot write: {error}")
    finally:
        if sink is not None:
            with contextlib.suppress(OSError):
                sink.close()
    return _report(job, time.monotonic() - started, options)


async def _feed(records: Generator[Record, None, None], job: _Job) -> AsyncIterator[EncodedEvent]:
    """The valid events for ``send``; invalid ones are recorded on the way. At most
    ``job.window`` events are outstanding, which bounds memory and what a killed run
    sends again. No record is read once the run stops: each one read is reported."""
    try:
        while job.stop_reason is None:
            while job.watermark.outstanding >= job.window and job.stop_reason is None:
                job.wake.clear()
                await job.wake.wait()
            if job.stop_reason is not None:
                break
            record = next(records, None)
            if record is None:
                break
            if record.event is None:
                job.invalid(record)
                continue
            job.read += 1
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
            )
    except SendAbortedError as error:
        job.auth_error = job.auth_error or (
            error.cause if isinstance(error.cause, AuthenticationError) else None
        )
        if job.auth_error is None:
            job.fail(f"sending stopped: {error.cause}")
    except TogaiError as error:  # e.g. a setting the client refuses only when it sends
        job.fail(str(error))
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
        f"summary: {tally.accepted:,} accepted, {tally.n_rejected:,} rejected, "
        f"{tally.n_failed:,} failed, {tally.n_invalid:,} invalid; "
        f"{tally.total:,} events in {seconds:.2f} s ({rate:,.0f} events/s)"
    )


def _report(job: _Job, seconds: float, options: Options) -> int:
    """Summary on stdout, what went wrong on stderr; the exit status."""
    if not options.quiet:
        click.echo(_summary(job, seconds))
    if job.tally.total != job.read:  # cannot happen: every record read has one outcome
        click.echo(
            f"togai-ingest: warning: {job.read:,} records read, "
            f"{job.tally.total:,} outcomes reported",
            err=True,
        )
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
    return EXIT_OK if job.tally.ok else EXIT_SOME_NOT_ACCEPTED
