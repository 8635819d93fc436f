"""One request: authentication, the body of a batch, reading an answer, and what it means.

Free of I/O decisions, so the sync and async clients share every one of them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx
import orjson

from ._logging import redact, redact_bytes
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    MalformedResponseError,
    ValidationError,
    error_from_answer,
)
from .results import BatchOutcome, FailedEvent, InvalidEvent, RejectedEvent
from .transport import check_route
from .validation import EncodedEvent, EventLike, encode_at

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Answer",
    "Batch",
    "BearerAuth",
    "BodyReader",
    "encode",
    "read_batch",
    "redact_error",
    "transport_error",
]

log = logging.getLogger("togai_ingest")

MAX_RESPONSE_BYTES = 1 << 20
"""At most this many bytes of an answer are read (1 MiB; a full 207 of 100 rejected events
at the document's limits is well under it); the rest is never read into memory."""


def redact_error(error: APIError) -> APIError:
    """``error`` with every text it carries redacted (in place): its message, the server's
    message, body and headers, which a hostile server can make echo the token."""
    error.args = tuple(redact(a) if isinstance(a, str) else a for a in error.args)
    message = getattr(error, "message", None)
    if isinstance(message, str):
        error.message = redact(message)  # type: ignore[attr-defined]
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        error.body = redact_bytes(body)  # type: ignore[attr-defined]
    headers = getattr(error, "headers", None)
    if isinstance(headers, httpx.Headers):
        error.headers = httpx.Headers(  # type: ignore[attr-defined]
            [(k, redact(v)) for k, v in headers.multi_items()]
        )
    return error


def check_token(token: object) -> str:
    """The token, with surrounding whitespace removed (a token file ending in CRLF); refused
    if it holds anything that cannot go in an HTTP header. Never echoes the token."""
    if not isinstance(token, str):
        raise ConfigurationError(f"the API token must be a string, not {type(token).__name__}")
    stripped = token.strip()
    if not stripped:
        raise ConfigurationError("the API token is empty")
    for position, char in enumerate(stripped):
        if not 0x21 <= ord(char) <= 0x7E:
            raise ConfigurationError(
                f"the API token has a character that cannot go in an HTTP header at "
                f"position {position} (only visible ASCII is allowed)"
            )
    return stripped


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on a route that keeps it secret; the token never
    shows in a repr, log or error."""

    def __init__(self, token: str, proxy: str | None, allow_insecure_http: bool = False) -> None:
        self._token = token  # checked by ``check_token``
        self._proxy = proxy
        self._allow_insecure_http = allow_insecure_http

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        check_route(request.url, self._proxy, self._allow_insecure_http)
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=<redacted>)"


def encode(payload: Any) -> bytes:
    """Compact UTF-8 JSON with orjson: several times faster than the standard library."""
    return orjson.dumps(payload)


def transport_error(exc: Exception, what: str) -> APIError:
    """httpx's exception -> ours; the text is redacted (h11 quotes bad header values)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(exc).__name__}: {redact(str(exc))})")
    return APIConnectionError(f"{what} failed: {type(exc).__name__}: {redact(str(exc))}")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response, read: status, headers, and at most ``MAX_RESPONSE_BYTES`` of body."""

    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool = False


class BodyReader:
    """The first ``cap`` bytes of an answer, fed chunk by chunk: the rest is never read."""

    def __init__(self, cap: int = MAX_RESPONSE_BYTES) -> None:
        self.cap = cap
        self.truncated = False
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False once past the cap (stop reading)."""
        self._parts.append(chunk)
        self._size += len(chunk)
        self.truncated = self._size > self.cap
        return not self.truncated

    def answer(self, status: int, headers: httpx.Headers) -> Answer:
        return Answer(status, headers, b"".join(self._parts)[: self.cap], self.truncated)


@dataclass(slots=True)
class Batch:
    """A slice of the input, validated and encoded: ready to send, or to split."""

    start: int
    count: int
    indexes: list[int] = field(default_factory=list)
    events: list[EncodedEvent] = field(default_factory=list)
    invalid: list[InvalidEvent] = field(default_factory=list)

    def add(self, event: EventLike) -> None:
        """Read one more event of the input: validated and encoded now (a snapshot of it as
        it is at this moment), or reported invalid at its index and not sent."""
        index = self.start + self.count
        self.count += 1
        try:
            encoded = encode_at(event, index)  # named ``events[index]`` in an error
        except ValidationError as error:
            self.invalid.append(InvalidEvent(index, _snapshot(event), error))
            return
        self.indexes.append(index)
        self.events.append(encoded)

    def body(self) -> bytes:
        return b'{"events":[' + b",".join([e.json for e in self.events]) + b"]}"

    def outcome(self) -> BatchOutcome:
        return BatchOutcome(self.start, self.count, invalid=list(self.invalid))

    def halves(self) -> list[Batch]:
        mid = len(self.events) // 2
        return [
            Batch(self.start, 0, self.indexes[part], self.events[part])
            for part in (slice(None, mid), slice(mid, None))
        ]

    def fail(self, outcome: BatchOutcome, error: APIError) -> None:
        outcome.failed.extend(
            FailedEvent(i, e.wire(), error) for i, e in zip(self.indexes, self.events, strict=True)
        )


def encoded_batch(events: Sequence[EncodedEvent], indexes: Sequence[int] | None) -> Batch:
    """A batch of events encoded already (the background sender's), at ``indexes``."""
    positions = list(range(len(events))) if indexes is None else list(indexes)
    if len(positions) != len(events):
        raise ValueError("indexes and events differ in length")
    start = positions[0] if positions else 0
    return Batch(start, len(events), positions, list(events))


def _snapshot(event: Any) -> Any:
    """A copy of an invalid event for the report (the event itself if it cannot be copied)."""
    try:
        return copy.deepcopy(event)
    except Exception:  # any object: a report must not fail on it
        return event


def _errors_of(body: bytes) -> list[dict[str, Any]] | None:
    """The ``errors`` of an ``IngestBatchEventResponse`` body, or None if it is not one."""
    try:
        parsed = orjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        return None
    return errors


def read_batch(
    batch: Batch, answer: Answer, outcome: BatchOutcome, success: Callable[[int], bool]
) -> None:
    """Record the answer to ``batch`` in ``outcome``, or raise the APIError it means.

    Only the document's success statuses count (``success``): 202 means every event was
    accepted; 207 lists the rejected events, each matched to an event of the batch by its id.
    A 207 that cannot be read, or that names an event not in the batch (or none), is a
    ``MalformedResponseError``: which events were accepted is unknown, so the batch is sent
    again (ids make that safe) and, if that keeps happening, failed. Any other status,
    2xx included (a proxy's 200 page, a 204), raises the error of its status.
    """
    if not success(answer.status):
        raise error_from_answer(answer)
    errors = None if answer.truncated else _errors_of(answer.body)
    if errors is None:
        if answer.status != HTTPStatus.ACCEPTED:  # 207 and others must list the rejected
            raise MalformedResponseError(
                answer.status, "unreadable list of rejected events", answer.body[:200]
            )
        if answer.body:
            log.debug("HTTP %d with an unreadable body; every event accepted", answer.status)
        errors = []
    if not errors:  # every event accepted (the usual answer): nothing to match
        outcome.accepted += len(batch.events)
        return
    pending: dict[str, list[int]] = {}
    for position, event in enumerate(batch.events):
        pending.setdefault(event.id, []).append(position)
    rejected: list[tuple[int, str]] = []
    for error in errors:
        message = error.get("message")
        payload = error.get("eventPayload")
        event_id = payload.get("id") if isinstance(payload, dict) else None
        positions = pending.get(event_id) if isinstance(event_id, str) else None
        if not positions:
            raise MalformedResponseError(
                answer.status,
                "the server rejected an event it does not identify as one of the batch "
                f"(message: {str(message)[:200]!r})",
                answer.body[:200],
            )
        rejected.append((positions.pop(0), message if isinstance(message, str) else ""))
    for position, message in rejected:
        outcome.rejected.append(
            RejectedEvent(
                batch.indexes[position],
                batch.events[position].wire(),
                message or "rejected (no message)",
            )
        )
    outcome.accepted += len(batch.events) - len(rejected)
