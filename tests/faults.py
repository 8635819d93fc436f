"""The fault server's script: what to answer to each request, and how it is worded.

A script is a list of actions, one consumed per request (``Ok`` once the script runs out);
``tests/faultserver.py`` serves it over HTTP and keeps the ledger. The actions and the answers
they give are plain data and functions, so they can be read (and tested) without a socket::

    script = [Throttle(retry_after=1), *unavailable_burst(3), ResetAfter(), Ok()]
    script = mixed_script(seed=7, n=300)          # about a quarter of them faults, reproducibly

"Metered" means the events of the request enter the server's ledger (Togai billed them).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "Action",
    "Answer",
    "BadGateway",
    "Canned",
    "EmptyAccept",
    "Error",
    "Event",
    "GarbageAccept",
    "GatewayTimeout",
    "Headers",
    "IdSample",
    "Metering",
    "Odd",
    "Ok",
    "Reject",
    "ResetAfter",
    "ResetBefore",
    "Slow",
    "Throttle",
    "Unavailable",
    "accepted_answer",
    "json_bytes",
    "metered_answer",
    "mixed_script",
    "unavailable_burst",
]

Event = dict[str, Any]
Headers = Sequence[tuple[str, str]]
Answer = tuple[int, Headers, bytes]


# --- Script actions: one is consumed per request. "Metered" means the events enter the ledger.


@dataclass(frozen=True)
class Ok:
    """Meter the events: 202 ``{"errors": []}`` (``/ingest``: 202, empty body)."""


@dataclass(frozen=True)
class Reject:
    """Reject every ``every``-th event of the batch (1-based) and the events whose id matches
    ``predicate``; meter the rest. 207 listing each rejected event as received (``/ingest``:
    400 ErrorResponse). Ids already in the ledger are not rejected again: dedup wins."""

    every: int = 0
    predicate: Callable[[str], bool] | None = None
    message: str = "Event rejected by the fault script"

    def rejects(self, position: int, event_id: str) -> bool:
        by_position = self.every > 0 and position % self.every == self.every - 1
        return by_position or (self.predicate is not None and self.predicate(event_id))


@dataclass(frozen=True)
class Slow:
    """Meter the events, wait ``seconds``, then answer like ``Ok``."""

    seconds: float


@dataclass(frozen=True)
class ResetBefore:
    """Read part of the body, then reset the connection (RST). Not metered."""


@dataclass(frozen=True)
class ResetAfter:
    """Meter the events (not those ``reject_if`` rejects), then reset the connection without
    answering (ambiguous)."""


@dataclass(frozen=True)
class EmptyAccept:
    """Meter the events: 202 with an empty body, also on ``/ingestBatch`` (answered like ``Ok``
    when ``reject_if`` rejects some: a 202 says all were accepted)."""


@dataclass(frozen=True)
class GarbageAccept:
    """Meter the events: 202 with a body that is not JSON (like ``Ok`` when ``reject_if``
    rejects some)."""

    body: bytes = b"<<accepted, probably>>"


@dataclass(frozen=True)
class GatewayTimeout:
    """504 with an empty body; with ``metered=True`` the events were metered (ambiguous),
    but not those ``reject_if`` rejects."""

    metered: bool = False


def _retry_after(value: float | str | None, http_date: bool) -> Headers:
    if value is None:
        return []
    if isinstance(value, str):
        return [("Retry-After", value)]
    if http_date:  # whole seconds only: round up, so that the client waits long enough
        when = datetime.now(UTC) + timedelta(seconds=value)
        if value > 0 and when.microsecond:
            when = when.replace(microsecond=0) + timedelta(seconds=1)
        return [("Retry-After", email.utils.format_datetime(when, usegmt=True))]
    return [("Retry-After", str(int(value)) if float(value).is_integer() else str(value))]


def json_bytes(document: object) -> bytes:
    """``document`` as a JSON body."""
    return json.dumps(document).encode()


@dataclass(frozen=True)
class Throttle:
    """429 ErrorResponse, not metered. ``retry_after``: seconds (an int per HTTP; a float is
    sent as is), a raw header value (str) or None for no header; ``http_date=True`` sends
    now + ``retry_after`` seconds as an HTTP-date instead."""

    retry_after: float | str | None = 1
    http_date: bool = False
    message: str = "Rate limit exceeded"

    def answer(self) -> Answer:
        headers = [("Content-Type", "application/json")]
        headers += _retry_after(self.retry_after, self.http_date)
        return 429, headers, json_bytes({"message": self.message})


@dataclass(frozen=True)
class Unavailable:
    """503 ErrorResponse, not metered; Retry-After as in ``Throttle``, none by default."""

    retry_after: float | str | None = None
    http_date: bool = False
    message: str = "Service temporarily unavailable"

    def answer(self) -> Answer:
        headers = [("Content-Type", "application/json")]
        headers += _retry_after(self.retry_after, self.http_date)
        return 503, headers, json_bytes({"message": self.message})


@dataclass(frozen=True)
class BadGateway:
    """502 with an HTML body, as a proxy sends it. Not metered."""

    def answer(self) -> Answer:
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return 502, [("Content-Type", "text/html")], body


@dataclass(frozen=True)
class Odd:
    """An unusual status with a malformed JSON body. Not metered (so use a status >= 300)."""

    status: int = 520
    body: bytes = b'{"message": "upstream went aw'

    def answer(self) -> Answer:
        return self.status, [("Content-Type", "application/json")], self.body


@dataclass(frozen=True)
class Error:
    """An ErrorResponse with ``status`` (400, 401, 422, ...). Not metered.
    ``message=None`` sends an error body without the required ``message``."""

    status: int = 400
    message: str | None = "Bad request"

    def answer(self) -> Answer:
        body = {"error": "no message here"} if self.message is None else {"message": self.message}
        return self.status, [("Content-Type", "application/json")], json_bytes(body)


Canned = Throttle | Unavailable | BadGateway | Odd | Error
Metering = Ok | Reject | Slow | ResetAfter | EmptyAccept | GarbageAccept | GatewayTimeout
Action = Metering | ResetBefore | Canned


def unavailable_burst(n: int, retry_after: float | str | None = None) -> list[Action]:
    """``n`` answers 503 in a row."""
    return [Unavailable(retry_after=retry_after) for _ in range(n)]


@dataclass(frozen=True)
class IdSample:
    """Deterministic id predicate, true for about one id in ``one_in``; the same id always gets
    the same answer (use as ``reject_if`` or ``Reject(predicate=...)``)."""

    one_in: int
    salt: str = ""

    def __call__(self, event_id: str) -> bool:
        digest = hashlib.sha256(f"{self.salt}:{event_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.one_in == 0


def mixed_script(
    seed: int,
    n: int,
    *,
    fault_rate: float = 0.25,
    retry_after: int = 0,
    slow: float = 0.0,
    client_errors: bool = False,
) -> list[Action]:
    """``n`` actions, reproducible for a seed: ``Ok`` except for about ``fault_rate`` of them,
    drawn from the transient faults (429/503 with ``retry_after`` seconds as an int or an
    HTTP-date, a burst of three 503, 502 HTML, 504 with and without metering, resets before
    and after processing, 202 empty or garbage, 520 garbage), plus ``Slow(slow)`` when
    ``slow > 0`` and 400/422 errors when ``client_errors``. Permanent per-event rejections
    (207) come from the server's ``reject_if``, so a re-sent rejected event is rejected again.
    """
    rng = random.Random(seed)
    faults: list[tuple[int, list[Action]]] = [
        (3, [Throttle(retry_after=retry_after)]),
        (1, [Throttle(retry_after=retry_after, http_date=True)]),
        (2, [Unavailable(retry_after=retry_after)]),
        (1, unavailable_burst(3, retry_after)),
        (1, [BadGateway()]),
        (1, [GatewayTimeout()]),
        (1, [GatewayTimeout(metered=True)]),
        (2, [ResetBefore()]),
        (2, [ResetAfter()]),
        (1, [EmptyAccept()]),
        (1, [GarbageAccept()]),
        (1, [Odd()]),
    ]
    if slow > 0:
        faults.append((2, [Slow(slow)]))
    if client_errors:
        faults += [(1, [Error(400)]), (1, [Error(422, "Payload exceeds the size limit")])]
    weights = [weight for weight, _ in faults]
    script: list[Action] = []
    while len(script) < n:
        if rng.random() < fault_rate:
            script += rng.choices([actions for _, actions in faults], weights)[0]
        else:
            script.append(Ok())
    return script[:n]


# --- The answers of metering actions (the canned ones answer for themselves).


def metered_answer(
    action: Metering, path: str, rejections: dict[int, str], events: list[Event]
) -> tuple[int | None, Headers, bytes]:
    """The answer to a metering action; status None: reset the connection instead."""
    if isinstance(action, ResetAfter):
        return None, [], b""
    if isinstance(action, GatewayTimeout):
        return 504, [], b""
    if rejections or isinstance(action, Ok | Reject | Slow):  # a 202 says "all accepted"
        return accepted_answer(path, rejections, events)
    if isinstance(action, GarbageAccept):
        return 202, [("Content-Type", "application/json")], action.body
    return 202, [], b""


def accepted_answer(path: str, rejections: dict[int, str], events: list[Event]) -> Answer:
    """202, or 207 listing each rejected event as received (``/ingest``: 400 ErrorResponse)."""
    json_type = [("Content-Type", "application/json")]
    if path == "/ingest":
        if rejections:
            return 400, json_type, json_bytes({"message": next(iter(rejections.values()))})
        return 202, [], b""
    errors = [
        {"message": message, "eventPayload": events[position]}
        for position, message in sorted(rejections.items())
    ]
    return (207 if errors else 202), json_type, json_bytes({"errors": errors})
