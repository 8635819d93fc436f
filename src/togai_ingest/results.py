"""What happened to the events: accepted, rejected by the server, failed, or invalid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, ValidationError

__all__ = ["BatchOutcome", "FailedEvent", "InvalidEvent", "RejectedEvent", "SendResult"]


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """The server refused this event (a 207 ``errors`` entry); retrying will not help."""

    index: int
    """Position of the event in the input (-1 when the server named an event not sent)."""
    event: Any
    """The event as it was given (model or dict)."""
    message: str


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """The event could not be delivered: the request failed after its retries."""

    index: int
    event: Any
    error: APIError


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """The event breaks the OpenAPI document and was not sent."""

    index: int
    event: Any
    error: ValidationError


@dataclass(slots=True)
class BatchOutcome:
    """One slice of the input: ``count`` events from position ``start``, sent as one request."""

    start: int
    count: int
    accepted: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    invalid: list[InvalidEvent] = field(default_factory=list)


@dataclass(slots=True)
class SendResult:
    """The sum of every batch's outcome. Every input event is counted in exactly one field."""

    accepted: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    invalid: list[InvalidEvent] = field(default_factory=list)
    batches: int = 0

    def add(self, outcome: BatchOutcome) -> None:
        self.accepted += outcome.accepted
        self.rejected.extend(outcome.rejected)
        self.failed.extend(outcome.failed)
        self.invalid.extend(outcome.invalid)
        self.batches += 1

    @property
    def total(self) -> int:
        known = [r for r in self.rejected if r.index >= 0]
        return self.accepted + len(known) + len(self.failed) + len(self.invalid)

    @property
    def ok(self) -> bool:
        """True when every event was accepted."""
        return not (self.rejected or self.failed or self.invalid)

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} rejected={len(self.rejected)} "
            f"failed={len(self.failed)} invalid={len(self.invalid)}"
        )
