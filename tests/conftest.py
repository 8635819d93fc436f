"""Suite-wide guard: no test token ever reaches a log record (DEBUG, httpx and httpcore too)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# Tokens the suites use; a distinctive one is easy to spot if it leaks.
SECRET = "tgi_test_S3cr3t-9f8e7d6c5b4a"
KNOWN_TOKENS = (SECRET, "t0k3n")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r} {record.exc_info[1]}"
        self.texts.append(text)


@pytest.fixture(autouse=True)
def no_token_in_logs() -> Iterator[None]:
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    leaked = [t for t in handler.texts if any(token in t for token in KNOWN_TOKENS)]
    assert not leaked, f"a token appeared in log records: {leaked[:3]}"
