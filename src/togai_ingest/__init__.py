"""Production-grade ingestion for Togai, built on the generated ``togai_client`` package.

- ``Client`` / ``AsyncClient``: ``ingest``, ``ingest_batch`` and ``send`` (any number of
  events, batched, validated, retried, rate-limited).
- ``BackgroundSender``: ``enqueue`` from application code; delivery in a worker thread.
- ``new_event``: a typed ``togai_client.models.Event`` with a fresh id and timestamp.
- Errors: ``togai_ingest.errors`` (all subclasses of ``TogaiError``).
"""

from togai_client.models import Event, EventAttribute, EventDimensions

from ._logging import configure_from_env as _configure_logging
from .client import DEFAULT_TIMEOUT, AsyncClient, Client, SendAbortedError
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClosedError,
    ConfigurationError,
    InsecureTransportError,
    MalformedResponseError,
    PayloadTooLargeError,
    QueueFullError,
    RateLimitedError,
    ServiceUnavailableError,
    SpoolError,
    SpoolFullError,
    TogaiError,
    UnexpectedStatusError,
    ValidationError,
)
from .events import new_event
from .ratelimit import Limiter, RateLimiter
from .results import BatchOutcome, FailedEvent, InvalidEvent, RejectedEvent, SendResult
from .retry import RetryPolicy
from .sender import BackgroundSender, DeliveryReport
from .shared_limit import SharedRateLimit
from .shortlived import flush_after, flushing
from .validation import EncodedEvent, EventLike, encode_event, to_wire, validate_wire

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
    "ClosedError",
    "ConfigurationError",
    "DeliveryReport",
    "EncodedEvent",
    "Event",
    "EventAttribute",
    "EventDimensions",
    "EventLike",
    "FailedEvent",
    "InsecureTransportError",
    "InvalidEvent",
    "Limiter",
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
    "SharedRateLimit",
    "SpoolError",
    "SpoolFullError",
    "TogaiError",
    "UnexpectedStatusError",
    "ValidationError",
    "encode_event",
    "flush_after",
    "flushing",
    "new_event",
    "to_wire",
    "validate_wire",
]

_configure_logging()  # TOGAI_LOG=debug|info: the library's logs on stderr, token redacted
