"""A client-side request rate limit, shared by threads and asyncio tasks of one process.

Each caller reserves the next free time slot (slots are ``1/rate`` apart) and sleeps until
it; reserving under a lock and sleeping outside it serves threads and asyncio alike, which
no single well-kept library does for both (aiolimiter is asyncio only). Twenty lines of
arithmetic beat a dependency here.
"""

from __future__ import annotations

import asyncio
import threading
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, per_second: float, burst: int = 1) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self._interval = 1.0 / per_second
        self._burst = max(1, burst)
        self._next = 0.0
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Seconds to wait for the reserved slot."""
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now - (self._burst - 1) * self._interval)
            self._next = slot + self._interval
            return slot - now

    def acquire(self) -> None:
        wait = self._reserve()
        if wait > 0:
            time.sleep(wait)

    async def acquire_async(self) -> None:
        wait = self._reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def __repr__(self) -> str:
        return f"RateLimiter(per_second={self.per_second}, burst={self._burst})"
