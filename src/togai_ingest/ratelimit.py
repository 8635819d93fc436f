"""Client-side request rate limits: adaptive by default, pluggable, optionally shared.

``RateLimiter`` paces requests: each caller reserves the next free time slot (slots are
``1/rate`` apart) under a lock and sleeps until it outside the lock, which serves threads and
asyncio tasks alike. Its rate adapts to the server (a throttle cuts it to the rate this
process actually got through, success probes back up; see ``RateLimiter``): the client calls
``observe(status, retry_after)`` after every attempt.

Any object with the ``Limiter`` protocol can be passed as ``rate_limit``; ``limiter_from``
puts it behind an adaptive ``RateLimiter`` so that the server's signals are honoured whatever
the limiter. ``SharedRateLimit`` (``togai_ingest.shared_limit``) is the one shared by every
process and host through Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
import weakref
from collections import deque
from http import HTTPStatus
from typing import Protocol, runtime_checkable

from . import metrics
from .errors import ConfigurationError

__all__ = ["Limiter", "RateLimiter", "limiter_from"]

log = logging.getLogger("togai_ingest")
_clock = time.monotonic  # tests replace it
_random = random.random  # tests replace it

BETA = 0.85
"""A throttle leaves at most this share of the rate. The delivered rate makes the deep cuts
(a fleet's first wave); ``BETA`` only makes sure that every cut takes something, gently
(CUBIC and botocore take 0.7 of a rate they cannot measure): a process cut deeper than its
share becomes the fleet's slow tail."""
HORIZON = 1.0
"""Seconds of the server's own burst assumed when the delivered rate is measured from the
start of a busy stretch: a gateway's bucket starts full, so a fleet that starts together gets
its quota plus a burst before the first 429, and ``HORIZON`` keeps that burst out of the rate
(the document gives the quota, not the burst; a bucket of one second's quota is the usual)."""
WINDOW = 4.0
"""The longest window (seconds) the delivered rate is measured over."""
SAMPLES = 16
"""The window reaches back to the latest this many requests (within ``WINDOW``)."""
MIN_SAMPLES = 4
"""Fewer requests than this in the window tell nothing: the cut is then ``BETA``'s alone."""
MIN_SPAN = 0.1
"""A window shorter than this (seconds) is counted as this long."""
MAX_GAP = 0.5
"""Seconds between two requests (or two intervals of the rate, if longer) that end a busy
stretch: idle time is not a rate."""
SPACING = 0.5
"""Without a burst, requests go at least this share of an interval apart, as they really go."""
GUARD = 0.25
"""Throttles this soon after a cut answer requests sent before it: they cut nothing."""
PROBE_DOUBLING = 6.0
"""The additive increase doubles every this many seconds without a throttle (convex probing,
as CUBIC's: slow right after a cut, faster the longer the server says nothing)."""
MAX_PAUSE = 60.0
"""The longest ``Retry-After`` the limiter honours (as ``RetryPolicy.max_retry_after``)."""
TOO_MANY_REQUESTS = HTTPStatus.TOO_MANY_REQUESTS
SERVICE_UNAVAILABLE = HTTPStatus.SERVICE_UNAVAILABLE


@runtime_checkable
class Limiter(Protocol):
    """What a client needs of a rate limiter.

    ``acquire``/``acquire_async`` are called before every attempt; ``observe`` after every
    attempt with the answer's status (None: no answer, a timeout or a connection error) and
    its ``Retry-After`` in seconds; a forked child uses ``after_fork()``'s limiter.
    """

    def acquire(self) -> None: ...

    async def acquire_async(self) -> None: ...

    def observe(self, status: int | None, retry_after: float | None) -> None: ...

    def after_fork(self) -> Limiter: ...


def is_throttle(status: int | None, retry_after: float | None) -> bool:
    """429, or 503 with ``Retry-After``: the server asks for fewer requests."""
    return status == TOO_MANY_REQUESTS or (
        status == SERVICE_UNAVAILABLE and retry_after is not None
    )


class RateLimiter:
    """Requests paced at an adaptive rate, never above ``per_second``.

    The rate starts at ``per_second`` (a process alone uses the whole quota at once) and
    adapts to the server's signals, time-based so that it does not depend on latency:

    - **On a throttle** (429, or 503 with ``Retry-After``) the rate becomes what this process
      actually got through lately, its *delivered rate* (as BBR's estimate): the requests it
      sent, less those refused, over the window of its latest ``SAMPLES`` requests (at most
      ``WINDOW`` seconds, never across idle time) — and at most ``BETA`` times the rate. The
      fleet's delivered rates add up to the server's quota, so one cut lands every process
      near its share, where halving needs a halving per doubling of the fleet (three waves
      of 429s for 8 processes). At the first cut of a busy stretch the window is counted
      ``HORIZON`` seconds longer: what the server's bucket held before the stretch is a
      burst, not a rate.
    - **Retry-After is honoured**: no request goes before it has passed, and a slot reserved
      before the throttle is given up. The first request after the pause goes at a random
      point of the first interval of the cut rate, so that processes throttled by the same
      wave do not all start again at the same instant. Throttles arriving within ``GUARD``
      seconds of a cut, or during its pause, answer requests sent before it: they lengthen
      the pause and cut nothing more.
    - **On every other answer** the rate grows by ``increase`` requests/s per second elapsed
      (default ``per_second / 100``), an increase that doubles every ``PROBE_DOUBLING``
      seconds without a throttle, up to ``per_second``: slow right after a cut, where the
      share was just measured; fast after a long calm, when others have stopped sending
      (CUBIC's idea, as botocore's adaptive mode). No answer (a timeout, a connection error)
      changes nothing.
    - Requests whose slots came while the process was busy (a blocked event loop) do not go
      as one burst: without a ``burst``, they go at least ``SPACING`` of an interval apart.

    ``adaptive=False`` keeps the rate fixed (``Retry-After`` is still honoured). ``inner``
    is another ``Limiter`` that every request must also pass (after this one's wait), and
    that sees every ``observe``.
    """

    def __init__(
        self,
        per_second: float,
        burst: int = 1,
        *,
        adaptive: bool = True,
        increase: float | None = None,
        min_per_second: float | None = None,
        inner: Limiter | None = None,
    ) -> None:
        per_second = _positive_rate(per_second, "per_second")
        self.per_second = per_second
        self.adaptive = adaptive
        self.increase = per_second / 100 if increase is None else increase
        self.min_per_second = (
            min(per_second, max(0.1, per_second / 100))
            if min_per_second is None
            else min_per_second
        )
        self.inner = inner
        self.throttles = 0
        """Throttles that cut the rate."""
        self._burst = max(1, burst)
        self._lock = threading.Lock()
        self._rate = per_second
        self._next = 0.0
        self._last_went = -math.inf
        self._not_before = 0.0
        self._guard_until = -math.inf
        self._resumed_at = -math.inf
        self._grown_at = _clock()
        self._epoch = 0
        self._sent: deque[float] = deque(maxlen=_HISTORY)
        """When each of the latest requests went."""
        self._refused: deque[float] = deque(maxlen=_HISTORY)
        """When each of the latest throttles came."""
        self._stretch = -math.inf
        """When the current busy stretch began (its first request after idle time)."""
        self._fresh = True
        """No cut yet in this busy stretch."""
        _live.add(self)

    @property
    def rate(self) -> float:
        """Requests per second allowed now."""
        return self._rate

    # -- pacing ---------------------------------------------------------------------------

    def _inner_paces(self) -> bool:
        """True when ``inner`` keeps the pace now: this limiter then only holds requests back
        after a throttle (a cut rate, a ``Retry-After``). Two pacers in a row at the same
        rate lose to each other's jitter."""
        return self.inner is not None

    def _paces(self) -> bool:
        return not (self._rate >= self.per_second and self._inner_paces())

    def _reserve(self) -> float:
        """Seconds to wait for the slot reserved."""
        return self._reserve_slot()[0]

    def _reserve_slot(self) -> tuple[float, int]:
        """Seconds to wait for the slot reserved, and the throttle epoch it belongs to."""
        with self._lock:
            now = _clock()
            if not self._paces():
                slot = max(now, self._not_before)
            else:
                interval = 1.0 / self._rate
                slot = max(self._next, self._not_before, now - (self._burst - 1) * interval)
                if self._burst == 1:
                    slot = max(slot, self._last_went + interval)
                self._next = slot + interval
            return slot - now, self._epoch

    def _may_go(self, epoch: int) -> bool:
        """True if the request whose slot has come may go now: no throttle came since it
        reserved its slot (``epoch``), and, without a burst, the previous request went at
        least ``SPACING`` of an interval ago (slots that came while the event loop was
        blocked would otherwise go together)."""
        with self._lock:
            if epoch != self._epoch:
                return False
            now = _clock()
            if self._paces() and self._burst == 1 and now < self._last_went + SPACING / self._rate:
                return False
            self._last_went = now
            return True

    def _pause_left(self) -> float:
        return self._not_before - _clock()

    def acquire(self) -> None:
        """Block until one request may go.

        A slot reserved before a throttle is given up: the request waits for the cut rate
        and the ``Retry-After`` instead of adding to the burst the server refused."""
        started = _clock()
        while True:
            wait, epoch = self._reserve_slot()
            if wait > 0:
                time.sleep(wait)
            if self._may_go(epoch):
                break
        if self.inner is not None:
            self.inner.acquire()
            if epoch != self._epoch and (pause := self._pause_left()) > 0:
                time.sleep(pause)
        self._went()
        metrics.record_throttle_wait(_clock() - started)

    async def acquire_async(self) -> None:
        """Wait (without blocking the event loop) until one request may go."""
        started = _clock()
        while True:
            wait, epoch = self._reserve_slot()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._may_go(epoch):
                break
        if self.inner is not None:
            await self.inner.acquire_async()
            if epoch != self._epoch and (pause := self._pause_left()) > 0:
                await asyncio.sleep(pause)
        self._went()
        metrics.record_throttle_wait(_clock() - started)

    def _went(self) -> None:
        """One request goes now: what the delivered rate is counted from."""
        with self._lock:
            now = _clock()
            gap = self._max_gap()
            idle = not self._sent or now - self._sent[-1] > gap
            if idle and now > self._not_before + gap:
                # Idle time (not a pause the server asked for) begins a new busy stretch.
                self._stretch = now
                self._fresh = True
            self._sent.append(now)

    def _max_gap(self) -> float:
        return max(MAX_GAP, 2.0 / self._rate)

    # -- adapting -------------------------------------------------------------------------

    def observe(self, status: int | None, retry_after: float | None) -> None:
        """The answer to one attempt: ``status`` (None: none came) and its ``Retry-After``."""
        if self.inner is not None:
            self.inner.observe(status, retry_after)
        if status is None:
            return
        now = _clock()
        with self._lock:
            if is_throttle(status, retry_after):
                self._throttled(now, min(MAX_PAUSE, max(0.0, retry_after or 0.0)), status)
            elif self.adaptive and status < 500:
                self._succeeded(now)

    def _throttled(self, now: float, pause: float, status: int) -> None:
        self._epoch += 1
        self._refused.append(now)
        if not self.adaptive or now < self._guard_until:
            # Honoured even when fixed; a guarded throttle only lengthens the pause.
            if now + pause > self._not_before:
                self._not_before = now + pause
                self._resumed_at = max(self._resumed_at, self._not_before)
                self._grown_at = max(self._grown_at, self._not_before)
            return
        self._not_before = max(self._not_before, now + pause)
        cut = self._rate * BETA
        delivered = self._delivered(now)
        if delivered is not None:
            cut = min(cut, delivered)
        self._rate = max(self.min_per_second, cut)
        self._fresh = False
        self._resumed_at = self._not_before
        self._guard_until = max(self._not_before, now + GUARD)
        self._grown_at = self._not_before
        # The first request after the pause goes at a random point of the first interval.
        self._next = max(self._next, self._not_before + _random() / self._rate)
        self.throttles += 1
        log.info(
            "rate limit: %d from the server; %.3g requests/s from now on, none for %.3g s",
            status,
            self._rate,
            pause,
        )

    def _delivered(self, now: float) -> float | None:
        """Requests/s this process got through lately (sent, less refused): over the window
        since the latest of its ``SAMPLES``-th latest request, ``WINDOW`` seconds ago, the
        start of the busy stretch and the end of the last pause; ``HORIZON`` seconds longer
        at the stretch's first cut. None with fewer than ``MIN_SAMPLES`` requests in it."""
        sent = self._sent
        if len(sent) < MIN_SAMPLES:
            return None
        since = max(now - WINDOW, self._stretch, self._resumed_at, sent[-min(len(sent), SAMPLES)])
        went = _count_since(sent, since)
        if went < MIN_SAMPLES:
            return None
        got = max(0, went - _count_since(self._refused, since))
        span = max(MIN_SPAN, now - since)
        return got / (span + HORIZON) if self._fresh else got / span

    def _succeeded(self, now: float) -> None:
        if now > self._grown_at:
            if self._rate < self.per_second:
                calm = max(0.0, now - self._resumed_at) if self.throttles else 0.0
                step = self.increase * 2.0 ** (calm / PROBE_DOUBLING)
                grown = self._rate + step * (now - self._grown_at)
                self._rate = min(self.per_second, grown)
            self._grown_at = now

    # -- processes ------------------------------------------------------------------------

    def after_fork(self) -> RateLimiter:
        """A fresh limiter (new lock) for a forked child, at the rate learnt so far."""
        inner = self.inner.after_fork() if self.inner is not None else None
        child = RateLimiter(
            self.per_second,
            self._burst,
            adaptive=self.adaptive,
            increase=self.increase,
            min_per_second=self.min_per_second,
            inner=inner,
        )
        child._rate = self._rate
        return child

    def __repr__(self) -> str:
        mode = "adaptive" if self.adaptive else "fixed"
        inner = f", inner={self.inner!r}" if self.inner is not None else ""
        return (
            f"RateLimiter(per_second={self.per_second}, burst={self._burst}, {mode}, "
            f"rate={self._rate:.3g}{inner})"
        )


_HISTORY = 1024
"""Sends and throttles remembered (the window never needs more)."""


def _count_since(times: deque[float], since: float) -> int:
    """How many of ``times`` (oldest first) are at ``since`` or later."""
    count = 0
    for moment in reversed(times):
        if moment < since:
            break
        count += 1
    return count


_live: weakref.WeakSet[RateLimiter] = weakref.WeakSet()


def _current_rates() -> list[float]:
    return [limiter.rate for limiter in list(_live)]


metrics.observe_send_rate(_current_rates)


def _positive_rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{name} must be a number of requests per second, not {type(value).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number of requests per second > 0")
    return float(value)


def limiter_from(rate_limit: float | Limiter | None, *, quota: float) -> Limiter | None:
    """The limiter a client uses for its ``rate_limit=`` setting.

    - a number: an adaptive ``RateLimiter`` that never goes above that many requests/s;
    - ``None``: no limit;
    - a ``RateLimiter`` (or ``SharedRateLimit``): itself;
    - any other object with the ``Limiter`` protocol: behind an adaptive ``RateLimiter``
      capped at ``quota``, so that 429s and ``Retry-After`` are honoured whatever it does
      (it keeps the pace; the wrapper holds requests back only after a throttle).

    Raises ``ConfigurationError`` for anything else, and for a rate that is not a finite
    number above 0.
    """
    if rate_limit is None:
        return None
    if isinstance(rate_limit, RateLimiter):
        return rate_limit
    if isinstance(rate_limit, int | float) and not isinstance(rate_limit, bool):
        return RateLimiter(_positive_rate(rate_limit, "rate_limit"))
    if isinstance(rate_limit, Limiter):
        return RateLimiter(_positive_rate(quota, "quota"), inner=rate_limit)
    raise ConfigurationError(
        "rate_limit must be requests per second, None, or a limiter with acquire, "
        f"acquire_async, observe and after_fork; not {type(rate_limit).__name__}"
    )
