"""One request: authentication, the body of a batch, and what an answer means.

Free of I/O, so the sync and async clients and the background sender share every decision.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httpx
import orjson

from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InsecureTransportError,
    MalformedResponseError,
    ValidationError,
    error_from_response,
)
from .results import BatchOutcome, FailedEvent, InvalidEvent, RejectedEvent
from .validation import EventLike, to_wire

__all__ = ["BearerAuth", "PreparedBatch", "check_transport", "encode", "prepare", "read_batch"]

log = logging.getLogger("togai_ingest")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(url: httpx.URL, allow_insecure_http: bool) -> None:
    """Refuse to send the token over plain http, except to loopback or when allowed."""
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise InsecureTransportError(
            f"refusing to send the API token over plain http to {url.host}; use https, "
            "or pass allow_insecure_http=True"
        )


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; the token never shows in a repr, log or error."""

    def __init__(self, token: str, allow_insecure_http: bool = False) -> None:
        self._token = token
        self._allow_insecure_http = allow_insecure_http

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        check_transport(request.url, self._allow_insecure_http)
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=<redacted>)"


def encode(payload: Any) -> bytes:
    """Compact UTF-8 JSON, the bytes httpx's ``json=`` writes, with orjson: several times
    faster than the standard library's encoder, which matters at a million events."""
    return orjson.dumps(payload)


def transport_error(exc: httpx.TransportError, what: str) -> APIError:
    """httpx's exception -> ours (the message names the request, never the headers)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(exc).__name__})")
    return APIConnectionError(f"{what} failed: {type(exc).__name__}: {exc}")


@dataclass(slots=True)
class PreparedBatch:
    """A slice of the input, validated and encoded: ready to send, or to split."""

    start: int
    count: int
    indexes: list[int] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    wire: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[InvalidEvent] = field(default_factory=list)

    def body(self) -> bytes:
        return encode({"events": self.wire})

    def outcome(self) -> BatchOutcome:
        return BatchOutcome(self.start, self.count, invalid=list(self.invalid))

    def halves(self) -> list[PreparedBatch]:
        mid = len(self.wire) // 2
        return [
            PreparedBatch(self.start, 0, self.indexes[part], self.events[part], self.wire[part])
            for part in (slice(None, mid), slice(mid, None))
        ]

    def fail(self, outcome: BatchOutcome, error: APIError) -> None:
        outcome.failed.extend(
            FailedEvent(i, e, error) for i, e in zip(self.indexes, self.events, strict=True)
        )


def prepare(chunk: Sequence[EventLike], start: int, validated: bool = False) -> PreparedBatch:
    """Validate every event of ``chunk`` (input positions from ``start``); ``validated``: the
    events are wire dicts that already went through ``to_wire``."""
    if validated:
        wires = cast(list[dict[str, Any]], list(chunk))
        return PreparedBatch(
            start, len(wires), list(range(start, start + len(wires))), wires, wires
        )
    batch = PreparedBatch(start, len(chunk))
    for offset, event in enumerate(chunk):
        index = start + offset
        try:
            wire = to_wire(event, f"events[{index}]")
        except ValidationError as error:
            batch.invalid.append(InvalidEvent(index, event, error))
            continue
        batch.indexes.append(index)
        batch.events.append(event)
        batch.wire.append(wire)
    return batch


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


def read_batch(batch: PreparedBatch, response: httpx.Response, outcome: BatchOutcome) -> None:
    """Record the answer to ``batch`` in ``outcome``; raise the APIError of a failed request.

    A 202 means every event was accepted, whatever its body. A 207 lists the rejected events;
    a 207 whose body cannot be read is a ``MalformedResponseError`` (retried: the ids make a
    re-send safe). Any other status raises the error of its status.
    """
    status = response.status_code
    if not HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
        raise error_from_response(response)
    errors = _errors_of(response.content)
    if errors is None:
        if status == HTTPStatus.MULTI_STATUS:
            raise MalformedResponseError(status, "unreadable list of rejected events")
        if response.content:
            log.debug("HTTP %d with an unreadable body; every event accepted", status)
        errors = []
    if not errors:
        outcome.accepted += len(batch.wire)
        return
    pending: dict[str, list[int]] = {}
    for position, wire in enumerate(batch.wire):
        pending.setdefault(wire["id"], []).append(position)
    rejected_positions: set[int] = set()
    for error in errors:
        message = error.get("message")
        message = message if isinstance(message, str) else "rejected (no message)"
        payload = error.get("eventPayload")
        event_id = payload.get("id") if isinstance(payload, dict) else None
        positions = pending.get(event_id) if isinstance(event_id, str) else None
        if positions:
            position = positions.pop(0)
            rejected_positions.add(position)
            outcome.rejected.append(
                RejectedEvent(batch.indexes[position], batch.events[position], message)
            )
        else:
            log.warning("the server rejected an event that was not in the batch: %s", message)
            outcome.rejected.append(RejectedEvent(-1, payload, message))
    outcome.accepted += len(batch.wire) - len(rejected_positions)
