"""A real redis-server (Debian's package; ``make redis-server`` installs it) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.fleet import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if not RedisServer.available():
        pytest.fail("redis-server is not installed: run 'make redis-server' (Debian package)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.answers():  # a test took it away: bring it back
        redis_server.start()
    return redis_server.url
