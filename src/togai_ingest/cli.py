"""``togai-ingest``: the command line (``send`` and ``validate``), its options and exit statuses.

``backfill`` does one ``send`` run; the token is read from ``TOGAI_API_TOKEN`` only, never from
an option (options show in ``ps``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from . import backfill
from .backfill import EXIT_OK, EXIT_SOME_NOT_ACCEPTED, EXIT_USAGE, TOKEN_ENV
from .checkpoint import CheckpointError
from .client import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, AsyncClient
from .errors import TogaiError
from .readers import FORMATS, Format, Input, InputError, format_of, parse_zone, read_records
from .retry import RetryPolicy
from .spec import spec

__all__ = ["main"]

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


# --- send


def _check_paths(inputs: Sequence[Input], *outputs: Path | None) -> None:
    for output in outputs:
        if output is None or not output.exists():
            continue
        for item in inputs:
            if item.path != "-" and os.path.samefile(item.path, output):
                _fail(f"{output} is also an input file; choose another path")


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
    default=DEFAULT_CONCURRENCY,
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
    options = backfill.Options(
        zone, batch_size, concurrency, rejected, checkpoint, quiet, progress_interval
    )
    token = os.environ.get(TOKEN_ENV)
    if not token:
        _fail(f"no API token: set {TOKEN_ENV}")
    inputs = _inputs(files, fmt)
    _check_paths(inputs, rejected, checkpoint)
    try:
        plan = backfill.prepare(inputs, options)
    except CheckpointError as error:
        _fail(str(error))
    try:
        client = AsyncClient(
            token,
            base_url=base_url,
            timeout=httpx.Timeout(
                timeout, connect=min(timeout, DEFAULT_TIMEOUT.connect or timeout)
            ),
            retry=RetryPolicy(max_retries=retries),
            rate_limit=rate_limit or None,
        )
    except (TogaiError, ValueError) as error:
        _fail(str(error))
    handler, level = _LogToStderr(), log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        code = backfill.run(client, plan)
    except backfill.StartError as error:
        _fail(str(error))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
