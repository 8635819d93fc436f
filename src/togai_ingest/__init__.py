"""Production-grade ingestion for Togai, built on the generated ``togai_client`` package.

- ``Client`` / ``AsyncClient``: ``ingest``, ``ingest_batch`` and ``send`` (any number of
  events, batched, validated, retried, rate-limited).
- ``BackgroundSender``: ``enqueue`` from application code; delivery in a worker thread.
- ``new_event``: a typed ``togai_client.models.Event`` with a fresh id and timestamp.
- Errors: ``togai_ingest.errors`` (all subclasses of ``TogaiError``).
"""

from togai_client.models import Event, EventAttribute, EventDimensions

from .client import DEFAULT_TIMEOUT, AsyncClient, Client, SendAbortedError
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsecureTransportError,
    MalformedResponseError,
    PayloadTooLargeError,
    QueueFullError,
    RateLimitedError,
    ServiceUnavailableError,
    TogaiError,
    UnexpectedStatusError,
    ValidationError,
)
from .events import new_event
from .ratelimit import RateLimiter
from .results import BatchOutcome, FailedEvent, InvalidEvent, RejectedEvent, SendResult
from .retry import RetryPolicy
from .sender import BackgroundSender, DeliveryReport
from .validation import EventLike, to_wire, validate_wire

__all__ = [
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BackgroundSender",
    "BadRequestError",
    "BatchOutcome",
    "Client",
    "DeliveryReport",
    "Event",
    "EventAttribute",
    "EventDimensions",
    "EventLike",
    "FailedEvent",
    "InsecureTransportError",
    "InvalidEvent",
    "MalformedResponseError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RateLimitedError",
    "RateLimiter",
    "RejectedEvent",
    "RetryPolicy",
    "SendAbortedError",
    "SendResult",
    "ServiceUnavailableError",
    "TogaiError",
    "UnexpectedStatusError",
    "ValidationError",
    "new_event",
    "to_wire",
    "validate_wire",
]
