"""``togai-ingest``: send usage events from JSON Lines or CSV files to Togai, or validate them.

Click parses the command line (``send`` and ``validate``); ``readers`` turns files into
events; ``AsyncClient.send`` delivers them; ``checkpoint`` remembers how far it got. The
token is read from ``TOGAI_API_TOKEN`` only, never from an option (options show in ``ps``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import httpx
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

from .checkpoint import Checkpoint, CheckpointError, Watermark
from .client import DEFAULT_TIMEOUT, AsyncClient, SendAbortedError
from .errors import AuthenticationError, TogaiError
from .readers import (
    FORMATS,
    START,
    Format,
    Input,
    InputError,
    Position,
    Record,
    format_of,
    is_regular_file,
    parse_zone,
    read_records,
)
from .results import BatchOutcome
from .retry import RetryPolicy
from .spec import spec

__all__ = ["main"]

TOKEN_ENV = "TOGAI_API_TOKEN"
EXIT_OK, EXIT_SOME_NOT_ACCEPTED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SHOWN_PROBLEMS = 10
COUNT_LINES_UP_TO = 256 * 1024 * 1024
"""Inputs up to this many bytes are counted (for the bar's total and ETA) before sending."""

log = logging.getLogger("togai_ingest")


# --- Options shared by both commands.


def _zone(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.tzinfo | None:
    try:
        return None if value is None else parse_zone(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _input_options(command: Callable[..., Any]) -> Callable[..., Any]:
    files = click.argument(
        "files",
        nargs=-1,
        required=True,
        type=click.Path(exists=True, dir_okay=False, readable=True, allow_dash=True),
    )
    fmt = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        help="Input format [default: from the file name: *.csv is csv, anything else and - "
        "(stdin) jsonl].",
    )
    zone = click.option(
        "--assume-timezone",
        "zone",
        metavar="ZONE",
        callback=_zone,
        help="Zone of timestamps without a UTC offset (UTC, +02:00, Europe/Berlin); "
        "without it they are invalid.",
    )
    return files(fmt(zone(command)))


def _inputs(files: Sequence[str], fmt: Format | None) -> list[Input]:
    return [Input(path, format_of(path, fmt)) for path in files]


def _fail(message: str) -> NoReturn:
    click.echo(f"togai-ingest: error: {message}", err=True)
    raise SystemExit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="togai-ingestion-client")
def main() -> None:
    """Send usage events to Togai from JSON Lines or CSV files, or check them first.

    \b
    JSON Lines: one event per line in wire form (camelCase), as in the API:
      {"eventName": "apiCall", "id": "...", "eventTimestamp": "2024-05-01T10:00:00Z",
       "accountId": "acct-1", "eventAttributes": [{"attributeName": "calls",
       "attributeValue": "1"}], "dimensions": {"region": "eu"}}
    Lines of a --rejected file are read as their "event", so a fixed one can be sent again.

    \b
    CSV: a header row with eventName, eventTimestamp, accountId and optionally id; one
    attr.<name> column per attribute (value), with an optional unit.<name> column (its
    unit); one dim.<name> column per dimension. Empty cells are absent.

    \b
    Timestamps: RFC 3339 is sent as it is; other forms (2024-05-01 10:00:00+02:00,
    May 1 2024 10:00 UTC, 05/01/2024 10:00 -0500 read as month/day, Unix seconds or
    milliseconds) are parsed and sent as ISO 8601 with an offset. A timestamp without
    an offset is invalid unless --assume-timezone.

    \b
    Ids: an event without an id gets one derived from its content (UUIDv5), so sending
    the same file again never meters an event twice. Consequence: two identical records
    (same name, account, timestamp, attributes and dimensions) are one event; give them
    ids if they are distinct events.
    """


# --- validate


@main.command()
@_input_options
def validate(files: tuple[str, ...], fmt: Format | None, zone: dt.tzinfo | None) -> None:
    """Check every record of FILES against the API's schema without sending anything.

    Prints each invalid record as FILE:LINE: PATH: PROBLEM and a total. Exit status: 0 all
    valid, 1 some invalid, 2 an input cannot be read.
    """
    valid = invalid = 0
    try:
        for record in read_records(_inputs(files, fmt), zone=zone):
            if record.event is None:
                invalid += 1
                click.echo(f"{record.source}: {record.problem}")
            else:
                valid += 1
    except InputError as error:
        _fail(str(error))
    click.echo(f"{valid + invalid:,} records: {valid:,} valid, {invalid:,} invalid")
    raise SystemExit(EXIT_SOME_NOT_ACCEPTED if invalid else EXIT_OK)


# --- Progress display.


class _Rate(ProgressColumn):
    """Events per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- events/s" if speed is None else f"{speed:,.0f} events/s")


class _Display:
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

    def __enter__(self) -> _Display:
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


def _count_lines(inputs: Sequence[Input]) -> list[int] | None:
    """Records per input (lines, less a CSV header), when every input is a regular file
    and their total size is small enough to count quickly; else None."""
    if not all(is_regular_file(item.path) for item in inputs):
        return None
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
    return counts


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


# --- One run of ``send``.


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

    display: _Display
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
        if self.shown < SHOWN_PROBLEMS:
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
    client: AsyncClient, records: Generator[Record, None, None], job: _Job, options: _Options
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


@dataclass(frozen=True)
class _Options:
    batch_size: int
    concurrency: int
    rejected: Path | None
    checkpoint: Path | None
    quiet: bool
    progress_interval: float


def _prepare_checkpoint(
    path: Path | None, inputs: Sequence[Input], rejected: Path | None
) -> tuple[Checkpoint | None, Position, int | None]:
    """The checkpoint, where to start, and how much of the rejected file to keep."""
    if path is None:
        return None, START, None
    try:
        checkpoint = Checkpoint(path, inputs)
        resume = checkpoint.load()
    except CheckpointError as error:
        _fail(str(error))
    if resume is None:
        return checkpoint, START, None
    same_file = rejected is not None and resume.rejected == str(rejected.resolve())
    return checkpoint, resume.position, resume.rejected_size if same_file else 0


def _check_paths(inputs: Sequence[Input], *outputs: Path | None) -> None:
    for output in outputs:
        if output is None or not output.exists():
            continue
        for item in inputs:
            if item.path != "-" and os.path.samefile(item.path, output):
                _fail(f"{output} is also an input file; choose another path")


def _summary(job: _Job, seconds: float) -> str:
    tally = job.tally
    rate = tally.total / seconds if seconds > 0 else 0.0
    return (
        f"summary: {tally.accepted:,} accepted, {tally.rejected:,} rejected, "
        f"{tally.failed:,} failed, {tally.invalid:,} invalid; "
        f"{tally.total:,} events in {seconds:.2f} s ({rate:,.0f} events/s)"
    )


class _LogToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"togai-ingest: {self.format(record)}", err=True)


@main.command()
@_input_options
@click.option(
    "--base-url",
    envvar="TOGAI_BASE_URL",
    show_envvar=True,
    default=spec().default_server,
    show_default=True,
    help="API base URL.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, spec().max_batch_size),
    default=spec().max_batch_size,
    show_default=True,
    help="Events per request (the API allows at most this default).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests in flight.",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0),
    default=spec().requests_per_second,
    show_default=True,
    help="Requests per second at most (Togai's quota); 0 disables the limit.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=RetryPolicy().max_retries,
    show_default=True,
    help="Retries of a failed request (429, 5xx, timeouts, connection errors).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT.read,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@click.option(
    "--rejected",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every rejected, failed or invalid event here (JSON Lines with its reason); "
    "send it again once fixed.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Remember how far the input was sent; running the same command again resumes "
    "there. At most concurrency x batch-size events are sent again after a kill.",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between progress lines when stderr is not a terminal.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary; errors only.")
def send(
    files: tuple[str, ...],
    fmt: Format | None,
    zone: dt.tzinfo | None,
    base_url: str,
    batch_size: int,
    concurrency: int,
    rate_limit: float,
    retries: int,
    timeout: float,
    rejected: Path | None,
    checkpoint: Path | None,
    progress_interval: float,
    quiet: bool,
) -> None:
    """Send the events of FILES (- for stdin) to Togai. The token is read from
    TOGAI_API_TOKEN.

    Invalid records are reported and not sent. Ctrl-C stops reading, lets the batches in
    flight finish, writes the checkpoint and exits with 130.

    Exit status: 0 every event accepted, 1 some rejected, failed or invalid, 2 usage,
    input or token error, 130 interrupted.
    """
    options = _Options(batch_size, concurrency, rejected, checkpoint, quiet, progress_interval)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        _fail(f"no API token: set {TOKEN_ENV}")
    inputs = _inputs(files, fmt)
    _check_paths(inputs, rejected, checkpoint)
    store, start, keep = _prepare_checkpoint(checkpoint, inputs, rejected)
    try:
        client = AsyncClient(
            token,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, DEFAULT_TIMEOUT.connect or 5.0)),
            retry=RetryPolicy(max_retries=retries),
            rate_limit=rate_limit or None,
        )
    except (TogaiError, ValueError) as error:
        _fail(str(error))
    handler, level = _LogToStderr(), log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        code = _send(client, inputs, zone, start, keep, store, options)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    raise SystemExit(code)


def _send(
    client: AsyncClient,
    inputs: Sequence[Input],
    zone: dt.tzinfo | None,
    start: Position,
    keep: int | None,
    store: Checkpoint | None,
    options: _Options,
) -> int:
    counts = _count_lines(inputs)
    total = sum(counts) if counts is not None else None
    done = sum(counts[: start.file]) + start.line if counts is not None else 0
    mode = "none" if options.quiet else "bar" if sys.stderr.isatty() else "lines"
    try:
        sink = None if options.rejected is None else _RejectedFile(options.rejected, keep)
    except OSError as error:
        _fail(f"cannot open {options.rejected}: {error.strerror or error}")
    display = _Display(total, done, mode, options.progress_interval)
    job = _Job(display, Watermark(start), options.concurrency * options.batch_size, sink, store)
    started = time.monotonic()
    try:
        if store is not None and start != START:
            where = f"{inputs[start.file].name}:{start.line}"
            display.note(f"resuming after {where}, as {store.path} says")
        job.save()
        records = read_records(inputs, zone=zone, start=start)
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


def _report(job: _Job, seconds: float, options: _Options) -> int:
    """Summary on stdout, what went wrong on stderr; the exit status."""
    if not options.quiet:
        click.echo(_summary(job, seconds))
    if job.shown > SHOWN_PROBLEMS:
        where = job.rejected_file.path if job.rejected_file else "(pass --rejected PATH to keep)"
        click.echo(f"togai-ingest: {job.shown - SHOWN_PROBLEMS:,} more problems: {where}", err=True)
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


if __name__ == "__main__":
    main()
