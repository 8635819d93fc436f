"""Fixtures of the contract tests: one Prism per test session, and the violation recorder.

Every test that sends requests does so through clients wired to `recorder`; its teardown
fails the test if Prism reported a violation for any of them that the test did not take
(`recorder.take_violations()`) and check itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.prism import PrismServer, ViolationRecorder, load_spec


@pytest.fixture(scope="session")
def prism() -> Iterator[PrismServer]:
    with PrismServer() as server:
        yield server


@pytest.fixture(scope="session")
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture
def recorder() -> Iterator[ViolationRecorder]:
    recorder = ViolationRecorder()
    yield recorder
    recorder.assert_clean()
