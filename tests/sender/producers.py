"""Threads that put events at the same time and keep, for each event, whether its call
returned or was refused: the books the concurrency tests check the queue's against."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Producers:
    """``threads`` threads, each calling ``put(event_id)`` for ``each`` ids
    ``f"{prefix}{slot}-{i}"``; an exception of ``refusals`` is a refusal (its message kept in
    ``why``), any other ends the thread (pytest reports it) and the counts no longer add up."""

    def __init__(
        self,
        put: Callable[[str], object],
        prefix: str,
        refusals: tuple[type[BaseException], ...],
        threads: int = 4,
        each: int = 400,
    ) -> None:
        self.returned: list[str] = []
        self.refused: list[str] = []
        self.why: dict[str, str] = {}
        self.total = threads * each
        self._lock = threading.Lock()
        self._put, self._prefix, self._refusals, self._each = put, prefix, refusals, each
        self.threads = [threading.Thread(target=self._produce, args=(k,)) for k in range(threads)]

    def _produce(self, slot: int) -> None:
        for i in range(self._each):
            event_id = f"{self._prefix}{slot}-{i}"
            try:
                self._put(event_id)
            except self._refusals as exc:
                with self._lock:
                    self.refused.append(event_id)
                    self.why[event_id] = str(exc)
                continue
            with self._lock:
                self.returned.append(event_id)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 60) -> None:
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a put did not return"
