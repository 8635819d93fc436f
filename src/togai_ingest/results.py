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
    """The sum of every batch's outcome. Every input event is counted in exactly one of
    ``accepted``, ``n_rejected``, ``n_failed`` and ``n_invalid``; the lists hold the events
    themselves unless ``send(..., collect=False)``."""

    accepted: int = 0
    n_rejected: int = 0
    n_failed: int = 0
    n_invalid: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    invalid: list[InvalidEvent] = field(default_factory=list)
    batches: int = 0

    def add(self, outcome: BatchOutcome, collect: bool = True) -> None:
        self.accepted += outcome.accepted
        self.n_rejected += len(outcome.rejected)
        self.n_failed += len(outcome.failed)
        self.n_invalid += len(outcome.invalid)
        if collect:
            self.rejected.extend(outcome.rejected)
            self.failed.extend(outcome.failed)
            self.invalid.extend(outcome.invalid)
        self.batches += 1

    @property
    def total(self) -> int:
        return self.accepted + self.n_rejected + self.n_failed + self.n_invalid

    @property
    def ok(self) -> bool:
        """True when every event was accepted."""
        return not (self.n_rejected or self.n_failed or self.n_invalid)

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} rejected={self.n_rejected} "
            f"failed={self.n_failed} invalid={self.n_invalid}"
        )
