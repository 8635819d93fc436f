"""``TOGAI_LOG=debug|info``: the library's logging to stderr, with secrets redacted.

As ``OPENAI_LOG`` and ``STRIPE_LOG`` do: ``info`` shows the ``togai_ingest`` logger (retries,
rate-limit cuts, the shared limit's fallbacks); ``debug`` adds its debug records and those of
httpx and httpcore (every request and connection). Whatever reaches that stderr handler goes
through ``RedactingFilter`` first: ``Bearer <anything>``, any ``Authorization`` value,
``$TOGAI_API_TOKEN`` and every token registered with ``register_secret`` become
``<redacted>``. ``configure_from_env()`` runs once, when ``togai_ingest`` is imported.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping

__all__ = [
    "ENV",
    "RedactingFilter",
    "configure_from_env",
    "protect",
    "redact",
    "redact_bytes",
    "register_secret",
]

ENV = "TOGAI_LOG"
MASK = "<redacted>"  # as request.Redactor
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_LOGGERS = ("togai_ingest",)
_HTTP_LOGGERS = ("httpx", "httpcore")
_PATTERNS = (
    # Bearer tokens anywhere: headers, reprs, exception messages.
    re.compile(r"(?i)(\bbearer\s+)[^\s'\",;)\]}]+"),
    # Any other Authorization value ("Authorization: Basic ...", {'authorization': '...'}).
    re.compile(
        r"(?i)(\bauthorization\b['\"]?\s*[:=,]\s*b?['\"]?)(?!bearer\b)(?!<redacted>)"
        r"[^'\"\r\n,;)\]}]+"
    ),
)
_secrets: set[str] = set()
_lock = threading.RLock()
_handler: logging.Handler | None = None


def register_secret(secret: str | None) -> None:
    """Redact ``secret`` wherever it appears in what ``TOGAI_LOG`` prints."""
    if secret and len(secret) >= 4:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``Authorization`` values and known secrets masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """``data`` with every known secret masked (a hostile server's body can echo one)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        data = data.replace(secret.encode("utf-8", "replace"), MASK.encode())
    return data


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and formatted exception) with ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_PROTECTED = (
    "togai_ingest",
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)
"""Loggers whose records can carry a token: httpcore's DEBUG records print response headers,
which a hostile server can make echo it."""
_protecting = RedactingFilter()


def protect(secret: str) -> None:
    """Register ``secret`` (a client's token) and redact the records of this package, httpx
    and httpcore at the logger, whatever handler prints them (``TOGAI_LOG`` or the
    application's own)."""
    register_secret(secret)
    register_secret(repr(secret)[1:-1])  # as an error text quoting it would show it
    with _lock:
        for name in _PROTECTED:
            logger = logging.getLogger(name)
            if _protecting not in logger.filters:
                logger.addFilter(_protecting)


def configure_from_env(environ: Mapping[str, str] | None = None) -> logging.Handler | None:
    """Turn on logging to stderr if ``TOGAI_LOG`` is ``debug`` or ``info``; once per process.

    Returns the handler added (None when ``TOGAI_LOG`` is unset). An unknown value is
    ignored with a line on stderr.
    """
    global _handler
    environ = os.environ if environ is None else environ
    value = environ.get(ENV, "").strip().lower()
    if not value:
        return None
    level = _LEVELS.get(value)
    if level is None:
        print(f"togai_ingest: {ENV}={value!r} ignored (use debug or info)", file=sys.stderr)
        return None
    with _lock:
        if _handler is not None:
            return _handler
        register_secret(environ.get("TOGAI_API_TOKEN"))
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        handler.setLevel(level)
        names = _LOGGERS + (_HTTP_LOGGERS if level == logging.DEBUG else ())
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            if logger.level == logging.NOTSET or logger.level > level:
                logger.setLevel(level)
        _handler = handler
        return handler
