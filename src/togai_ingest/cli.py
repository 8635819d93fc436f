"""``togai-ingest``: the command line (``send`` and ``validate``), its options and exit statuses.

``backfill`` does one ``send`` run; the token is read from ``TOGAI_API_TOKEN`` only, never from
an option (options show in ``ps``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import httpx

from . import backfill
from .backfill import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_NOT_ACCEPTED, EXIT_USAGE
from .checkpoint import CheckpointError
from .client import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    TOKEN_ENV,
    URL_ENV,
    AsyncClient,
    Client,
)
from .errors import TogaiError
from .readers import (
    FORMATS,
    STDIN,
    Format,
    Input,
    InputError,
    format_of,
    parse_zone,
    read_records,
)
from .retry import RetryPolicy
from .shared_limit import SharedRateLimit
from .spec import spec

__all__ = ["main"]

log = logging.getLogger("togai_ingest")
ClientT = TypeVar("ClientT", Client, AsyncClient)


# --- Options shared by both commands.


def _zone(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.tzinfo | None:
    try:
        return None if value is None else parse_zone(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


class _Finite(click.FloatRange):
    """A ``FloatRange`` of finite numbers: click's accepts ``nan`` (it fails no comparison)
    and ``inf``."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


_SLOWEST_RATE = 0.01


def _rate(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if 0 < value < _SLOWEST_RATE:
        raise click.BadParameter(
            f"{value:g} is less than one request per {1 / _SLOWEST_RATE:.0f} seconds; "
            "0 disables the limit"
        )
    return value


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


def _client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that configure the client, the same for every command that sends."""
    options = [
        click.option(
            "--base-url",
            envvar=URL_ENV,
            show_envvar=True,
            default=spec().default_server,
            show_default=True,
            help="API base URL.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, spec().max_batch_size),
            default=spec().max_batch_size,
            show_default=True,
            help="Events per request (the API allows at most this default).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(1, 64),
            default=DEFAULT_CONCURRENCY,
            show_default=True,
            help="Requests in flight.",
        ),
        click.option(
            "--rate-limit",
            type=_Finite(min=0),
            callback=_rate,
            default=spec().requests_per_second,
            show_default=True,
            help="Requests per second at most (Togai's quota); 0 disables the limit. The "
            "rate adapts: it is cut on 429 and grows back on success, never above this.",
        ),
        click.option(
            "--rate-limit-url",
            metavar="URL",
            envvar="TOGAI_RATE_LIMIT_URL",
            show_envvar=True,
            help="Share Togai's request quota with every process and host that uses this "
            "Redis (redis://[:password@]host:6379/0, rediss:// for TLS; needs the 'redis' "
            "extra). Processes with the same token share one bucket; if Redis is unreachable "
            "each process adapts on its own until it answers again.",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=RetryPolicy().max_retries,
            show_default=True,
            help=f"Retries of a failed request. {RetryPolicy().describe()}",
        ),
        click.option(
            "--timeout",
            type=_Finite(min=0, min_open=True, max=3600),
            default=DEFAULT_TIMEOUT.read,
            show_default=True,
            help="Seconds to wait for an answer.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _progress_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How a sending command shows its progress: the same for ``send`` and ``drain``."""
    command = click.option(
        "-q", "--quiet", is_flag=True, help="No progress and no summary; errors only."
    )(command)
    return click.option(
        "--progress-interval",
        type=_Finite(min=0.05, max=86400),
        default=5.0,
        show_default=True,
        help="Seconds between progress lines when stderr is not a terminal.",
    )(command)


def _client(
    cls: type[ClientT],
    token: str,
    base_url: str,
    timeout: float,
    retries: int,
    rate_limit: float,
    rate_limit_url: str | None,
) -> ClientT:
    """The client the options describe; a bad setting is a usage error (exit 2)."""
    try:
        limit: float | SharedRateLimit | None = rate_limit or None
        if rate_limit_url:
            limit = SharedRateLimit(rate_limit_url, per_second=rate_limit or None, token=token)
        return cls(
            token,
            base_url=base_url,
            timeout=httpx.Timeout(
                timeout, connect=min(timeout, DEFAULT_TIMEOUT.connect or timeout)
            ),
            retry=RetryPolicy(max_retries=retries),
            rate_limit=limit,
        )
    except (TogaiError, ValueError) as error:
        _fail(str(error))


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
    except KeyboardInterrupt:
        click.echo(f"togai-ingest: interrupted after {valid + invalid:,} records", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    click.echo(f"{valid + invalid:,} records: {valid:,} valid, {invalid:,} invalid")
    raise SystemExit(EXIT_SOME_NOT_ACCEPTED if invalid else EXIT_OK)


# --- send


def _file_id(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, symlinks followed; None if there is none."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino


def _stdin_id() -> tuple[int, int] | None:
    """(device, inode) of what standard input reads (a file redirected with ``<``)."""
    try:
        stat = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (closed, or in-process)
        return None
    return stat.st_dev, stat.st_ino


def _check_paths(inputs: Sequence[Input], **outputs: Path | None) -> None:
    """Refuse an output (``--rejected``, ``--checkpoint``) that is the same file as an input
    or as the other output, however named: stdin redirected from it, a symlink, a hard
    link, a relative path. Done before anything is opened for writing."""
    files: dict[tuple[int, int], str] = {}
    for item in inputs:
        found = _stdin_id() if item.path == STDIN else _file_id(item.path)
        if found is not None:
            what = "standard input" if item.path == STDIN else f"input {item.path}"
            files.setdefault(found, what)
    for option, output in outputs.items():
        found = None if output is None else _file_id(output)
        if found is None:
            continue
        if found in files:
            _fail(
                f"--{option} {output} is the same file as {files[found]}: writing it would "
                "destroy what is read; choose another path"
            )
        files[found] = f"--{option} {output}"


class _LogToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"togai-ingest: {self.format(record)}", err=True)


@main.command()
@_input_options
@_client_options
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
@_progress_options
def send(
    files: tuple[str, ...],
    fmt: Format | None,
    zone: dt.tzinfo | None,
    base_url: str,
    batch_size: int,
    concurrency: int,
    rate_limit: float,
    rate_limit_url: str | None,
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
    # Everything that can be refused is refused before an input is read or an output opened:
    # the outputs against the inputs, the settings (the client checks the base URL), and
    # the checkpoint.
    _check_paths(inputs, rejected=rejected, checkpoint=checkpoint)
    client = _client(AsyncClient, token, base_url, timeout, retries, rate_limit, rate_limit_url)
    try:
        plan = backfill.plan(inputs, options)
    except CheckpointError as error:
        _fail(str(error))
    handler, level = _LogToStderr(), log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        code = backfill.run(client, plan)
    except backfill.StartError as error:
        _fail(str(error))
    except KeyboardInterrupt:  # before the run's own handler is in place (counting lines)
        click.echo("togai-ingest: interrupted", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    raise SystemExit(code)


# --- drain (owned with sender.py/spool.py/drain.py)


@main.command()
@click.argument("spool", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_client_options
@click.option(
    "--rejected",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every rejected, failed, invalid or unreadable event here (JSON Lines with "
    "its reason), as send does.",
)
@click.option(
    "--dead-letter",
    is_flag=True,
    help="Keep rejected events in the spool's dead_letter table (not in a salvage: the "
    "damaged file is never written).",
)
@click.option(
    "--salvage",
    "force_salvage",
    is_flag=True,
    help="Salvage SPOOL even if SQLite can open it (e.g. a spool whose -wal was lost). "
    "A damaged spool, or a file the sender moved aside (*.corrupt-*), is always salvaged.",
)
@_progress_options
def drain(
    spool: Path,
    base_url: str,
    batch_size: int,
    concurrency: int,
    rate_limit: float,
    rate_limit_url: str | None,
    retries: int,
    timeout: float,
    rejected: Path | None,
    dead_letter: bool,
    force_salvage: bool,
    progress_interval: float,
    quiet: bool,
) -> None:
    """Send every event the background sender's SPOOL file holds, then remove it from the
    spool. Safe while live senders use the same spool (their events are left to them).
    Failed events stay spooled for the next run. The token is read from TOGAI_API_TOKEN.

    A damaged SPOOL (or one moved aside as SPOOL.corrupt-*) is salvaged: every event that
    can still be read is sent, the rest is counted; the file is only read, and renamed
    *.salvaged once every readable event has an outcome. Never while a process has it open.

    Exit status: 0 every event accepted, 1 some rejected, failed, invalid, unreadable or
    left, 2 usage, spool or token error.
    """
    import threading
    import time as _time

    from . import drain as _drain
    from . import salvage as _salvage
    from .errors import SpoolError
    from .progress import Display
    from .results import BatchOutcome

    token = os.environ.get(TOKEN_ENV)
    if not token:
        _fail(f"no API token: set {TOKEN_ENV}")
    if rejected is not None and rejected.exists() and os.path.samefile(rejected, spool):
        _fail(f"{rejected} is the spool; choose another path")
    client = _client(Client, token, base_url, timeout, retries, rate_limit, rate_limit_url)
    salvaging = force_salvage or ".corrupt-" in spool.name or _salvage.damaged(spool)
    try:
        sink = None if rejected is None else backfill._RejectedFile(rejected, None)
    except OSError as error:
        _fail(f"cannot open {rejected}: {error.strerror or error}")
    mode = "none" if quiet else "bar" if sys.stderr.isatty() else "lines"
    shown = [0]
    display = [Display(None, 0, "none", progress_interval)]
    stop = threading.Event()

    def start(total: int | None) -> None:
        display[0] = Display(total, 0, mode, progress_interval)
        display[0].__enter__()
        if mode == "lines":
            threading.Thread(target=tick, name="togai-drain-progress", daemon=True).start()

    def tick() -> None:
        while not stop.wait(progress_interval):
            display[0].note(display[0].line())

    def problem(kind: str, event: Any, reason: str) -> None:
        if sink is not None:
            sink.write(kind, event, reason, f"{spool}")
        if shown[0] < 10:
            event_id = event.get("id") if isinstance(event, dict) else None
            named = f"{event_id}: " if event_id is not None else ""
            display[0].note(f"{spool}: {kind}: {named}{reason}")
        shown[0] += 1

    def on_batch(outcome: BatchOutcome, _result: _drain.DrainResult) -> None:
        for r in outcome.rejected:
            problem("rejected", r.event, r.message)
        for f in outcome.failed:
            problem("failed", f.event, str(f.error))
        for i in outcome.invalid:
            problem("invalid", i.event, str(i.error))
        display[0].advance(outcome.count)

    started = _time.monotonic()
    try:
        if salvaging and not quiet:
            display[0].note(
                f"togai-ingest: {spool} is damaged or was moved aside: salvaging it "
                "(read only): every event that can still be read is sent"
                if not force_salvage
                else f"togai-ingest: salvaging {spool} (read only)"
            )
        if salvaging:
            start(None)
            result = _salvage.salvage(
                spool, client, batch_size=batch_size, concurrency=concurrency, on_batch=on_batch
            )
        else:
            result = _drain.drain(
                spool,
                client,
                batch_size=batch_size,
                concurrency=concurrency,
                dead_letter=dead_letter,
                on_batch=on_batch,
                on_start=start,
            )
    except SpoolError as error:
        _fail(str(error))
    except OSError as error:  # writing the rejected file
        _fail(f"cannot write: {error}")
    finally:
        stop.set()
        display[0].__exit__()
        client.close()
    seconds = _time.monotonic() - started
    damage = result.damage
    try:
        if damage is not None and sink is not None:
            for _, event_id, reason in damage.rows:
                if event_id is not None:
                    sink.write("unreadable", {"id": event_id}, reason, f"{spool}")
        if sink is not None:
            sink.close()
    except OSError as error:
        _fail(f"cannot write {rejected}: {error}")
    if damage is not None:
        if not quiet:
            read = f"{damage.rows_read:,} rows read from {damage.pages_read:,} pages"
            click.echo(f"salvage: {read}", err=True)
        for line in damage.describe():
            click.echo(line, err=True)
    if shown[0] > 10:
        where = rejected if sink is not None else "(pass --rejected PATH to keep)"
        click.echo(f"togai-ingest: {shown[0] - 10:,} more problems: {where}", err=True)
    if not quiet:
        click.echo(_drain.summary(result, seconds))
        if sink is not None and sink.count:
            click.echo(f"rejected file: {rejected} ({sink.count:,} events)")
    if result.aborted is not None:
        kept = "the file is left as it is" if salvaging else "the events stay spooled"
        click.echo(
            f"togai-ingest: error: the API refused the token ({result.aborted}); "
            f"check {TOKEN_ENV}; {kept}",
            err=True,
        )
        raise SystemExit(EXIT_USAGE)
    if salvaging:
        _after_salvage(spool, result)
    raise SystemExit(EXIT_OK if result.ok else EXIT_SOME_NOT_ACCEPTED)


def _after_salvage(spool: Path, result: Any) -> None:
    """What becomes of the damaged file, on stderr: left as it is while events failed (run
    again), else renamed *.salvaged, unchanged, with the command to delete it."""
    from . import salvage as _salvage

    damage = result.damage
    if result.failed:
        click.echo(
            f"togai-ingest: {len(result.failed):,} events failed: {spool} is left as it is; "
            "run the same command again to send them (what was accepted is sent again, "
            "harmlessly: same ids)",
            err=True,
        )
        return
    moved = _salvage.finish(spool)
    if moved is None:
        click.echo(f"togai-ingest: salvaged; {spool} is left as it is", err=True)
        return
    import shlex

    names = [f"{moved}{s}" for s in ("", "-wal", "-shm") if Path(f"{moved}{s}").exists()]
    files = " ".join(map(shlex.quote, names))
    click.echo(
        f"togai-ingest: salvaged: every readable event has an outcome; {spool} is renamed "
        f"{moved} (unchanged; it is not salvaged again). Delete it when you no longer need "
        f"it: rm -- {files}",
        err=True,
    )
    if damage is not None and not damage.none:
        click.echo(
            f"togai-ingest: what could not be read is lost to this tool; `sqlite3 {moved} "
            ".recover` may read more",
            err=True,
        )


if __name__ == "__main__":
    main()
