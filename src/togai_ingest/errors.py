"""One exception hierarchy for everything that can go wrong while ingesting.

::

    TogaiError
    ├── ValidationError            bad input, found before any byte is sent
    ├── ConfigurationError         a bad setting (URL, token, timeout, size), found at construction
    │   └── InsecureTransportError the token would travel in clear text (plain http, a proxy)
    ├── ClosedError                the client or sender was closed (or used from another loop)
    ├── QueueFullError             BackgroundSender.enqueue on a full queue or spool
    ├── SpoolError                 the spool cannot be read or written
    │   └── SpoolFullError         the disk (or the spool's page limit) is full
    └── APIError                   the server, or the way to it, failed
        ├── APIStatusError         a status that is not a success (.status .message .headers)
        │   ├── BadRequestError            400
        │   ├── AuthenticationError        401
        │   ├── PayloadTooLargeError       422
        │   ├── RateLimitedError           429
        │   ├── ServiceUnavailableError    503
        │   └── UnexpectedStatusError      any other status (502, 504, 499, 520, ...)
        ├── MalformedResponseError  a success status whose body cannot be read when it must be
        ├── APITimeoutError
        └── APIConnectionError

Messages carry the status and the server's message, never the token.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx
import orjson
from togai_client.models import ErrorResponse

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClosedError",
    "ConfigurationError",
    "InsecureTransportError",
    "MalformedResponseError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "SpoolError",
    "SpoolFullError",
    "TogaiError",
    "UnexpectedStatusError",
    "ValidationError",
    "error_from_answer",
]


class TogaiError(Exception):
    """Base class of every error this package raises."""


class ValidationError(TogaiError, ValueError):
    """An event breaks the OpenAPI document; nothing was sent."""

    def __init__(self, path: str, problem: str, limit: Any = None) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.limit = limit


class ConfigurationError(TogaiError, ValueError):
    """A setting cannot work (a base URL without a scheme or host, a token with a control
    character, a timeout that is not a finite positive number, ...); raised at construction,
    before anything is sent."""


class InsecureTransportError(ConfigurationError):
    """The bearer token would travel in clear text: plain http to a host that is not loopback,
    or through a proxy that is not loopback."""


class ClosedError(TogaiError):
    """The client or background sender was closed (an ``enqueue`` racing ``close`` gets this:
    its event was not queued), or an ``AsyncClient`` was used from a second event loop."""


class SpoolError(TogaiError):
    """The spool cannot be written or read (permissions, I/O error, a locked file)."""


class SpoolFullError(SpoolError):
    """The disk (or the spool's page limit) is full: the event was not spooled; what was
    spooled before stays."""


class QueueFullError(TogaiError):
    """The background sender's queue is full (policy ``raise``, or ``block`` timed out)."""


class APIError(TogaiError):
    """The request did not succeed."""


class APIStatusError(APIError):
    """The server answered with a status that is not a success."""

    def __init__(
        self, status: int, message: str | None, headers: httpx.Headers, body: bytes = b""
    ) -> None:
        reason = _reason(status)
        text = f"HTTP {status} {reason}".rstrip()
        super().__init__(f"{text}: {message}" if message else text)
        self.status = status
        self.message = message
        self.headers = headers
        self.body = body


class BadRequestError(APIStatusError):
    """400: the server refused the request."""


class AuthenticationError(APIStatusError):
    """401: the token is missing or not valid."""


class PayloadTooLargeError(APIStatusError):
    """422: the payload is above the supported size limit."""


class RateLimitedError(APIStatusError):
    """429: over the request quota."""


class ServiceUnavailableError(APIStatusError):
    """503: the service is unavailable."""


class UnexpectedStatusError(APIStatusError):
    """Any other status, documented (``default``) or not."""


class MalformedResponseError(APIError):
    """A success status whose body could not be read where the outcome depends on it."""

    def __init__(self, status: int, problem: str, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status}: {problem}")
        self.status = status
        self.body = body


class APITimeoutError(APIError):
    """The request timed out; the server may or may not have processed it."""


class APIConnectionError(APIError):
    """The connection failed or was reset; the server may or may not have processed it."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    HTTPStatus.BAD_REQUEST: BadRequestError,
    HTTPStatus.UNAUTHORIZED: AuthenticationError,
    HTTPStatus.UNPROCESSABLE_ENTITY: PayloadTooLargeError,
    HTTPStatus.TOO_MANY_REQUESTS: RateLimitedError,
    HTTPStatus.SERVICE_UNAVAILABLE: ServiceUnavailableError,
}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _server_message(body: bytes) -> str | None:
    """The ``message`` of an ``ErrorResponse`` body, if the body is one."""
    try:
        parsed = orjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    try:
        message = ErrorResponse.from_dict(parsed).message
    except (KeyError, TypeError, ValueError):
        return None
    return message if isinstance(message, str) else None


def error_from_answer(answer: Any) -> APIStatusError:
    """The exception for an answer (``request.Answer``) that is not a success, whatever its
    body."""
    body: bytes = answer.body
    cls = _BY_STATUS.get(answer.status, UnexpectedStatusError)
    message = _server_message(body)
    if message is None and body:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"(no ErrorResponse body) {snippet}" if snippet else None
    return cls(answer.status, message, answer.headers, body)
