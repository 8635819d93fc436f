"""The adaptive rate: on 429 (and 503 with Retry-After) a cut to the delivered rate (at most
BETA of the rate), Retry-After honoured with a jittered restart, probing back up to the cap;
a fleet of limiters against one token bucket (simulated, deterministic); and several
uncoordinated clients against one quota (real sink)."""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.sink import SinkProcess
from tests.unit.conftest import wire_event
from togai_ingest import AsyncClient, RateLimiter, RetryPolicy
from togai_ingest import ratelimit as rl


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """The limiter's clock, moved by hand; its jitter at 0 (the first slot after a pause is
    the pause's end) unless a test sets ``rl._random``."""
    fake = Clock()
    monkeypatch.setattr(rl, "_clock", fake)
    monkeypatch.setattr(rl, "_random", lambda: 0.0)
    yield fake


def send(limiter: RateLimiter, clock: Clock, count: int, every: float) -> None:
    """``count`` requests going ``every`` seconds apart (as ``acquire`` records them)."""
    for _ in range(count):
        limiter._went()
        clock.now += every


def test_a_throttle_without_history_cuts_by_beta_and_holds_for_retry_after(
    clock: Clock,
) -> None:
    limiter = RateLimiter(50)
    limiter.observe(202, None)
    assert limiter.rate == 50  # already at the cap
    limiter.observe(429, 1.5)
    assert limiter.rate == pytest.approx(50 * rl.BETA)
    assert limiter.throttles == 1
    assert limiter._reserve() == pytest.approx(1.5)  # nothing goes before Retry-After
    assert limiter._reserve() == pytest.approx(1.5 + 1 / (50 * rl.BETA))  # at the cut rate


def test_the_first_cut_of_a_stretch_lands_on_the_delivered_rate(clock: Clock) -> None:
    """A fleet starts together at the cap: this process got 10 requests through in 0.2 s
    (the server's full bucket) before a 429. Its cut is to what it got, counted over the
    stretch plus HORIZON (the burst is not a rate), not to a half or BETA of the cap."""
    limiter = RateLimiter(50)
    send(limiter, clock, 10, 0.02)  # 10 requests, 0.00 .. 0.18; now 0.20
    limiter._went()  # the 11th goes and is refused
    limiter.observe(429, 1.0)
    assert limiter.rate == pytest.approx(10 / (0.2 + rl.HORIZON))


def test_a_later_cut_is_to_the_delivered_rate_over_the_window(clock: Clock) -> None:
    """After the first cut a throttle cuts to what got through over the latest SAMPLES
    requests (no HORIZON: the stretch's burst is spent) when that is below BETA."""
    limiter = RateLimiter(50)
    send(limiter, clock, 2, 0.02)
    limiter.observe(429, 0.0)  # too few requests to tell: BETA's cut
    send(limiter, clock, 20, 0.1)  # 10/s although more are allowed (CPU, concurrency)
    limiter.observe(429, None)
    span = (rl.SAMPLES - 1) * 0.1 + 0.1  # from the 16th latest request to now
    assert limiter.rate == pytest.approx((rl.SAMPLES - 1) / span)
    assert limiter.throttles == 2


def test_a_cut_is_never_shallower_than_beta(clock: Clock) -> None:
    limiter = RateLimiter(50)
    send(limiter, clock, 2, 0.02)
    limiter.observe(429, 0.0)  # too few requests to tell: BETA's cut
    allowed = 50 * rl.BETA
    send(limiter, clock, 40, 1 / allowed)  # all through at the allowed rate
    limiter.observe(429, None)
    assert limiter.rate == pytest.approx(allowed * rl.BETA)


def test_idle_time_is_not_counted_as_a_low_rate(clock: Clock) -> None:
    """One request, two seconds of nothing, then 10/s: the window begins with the busy
    stretch, not with the lone request before the idle time."""
    limiter = RateLimiter(50)
    limiter._went()
    clock.now += 2.0
    send(limiter, clock, 10, 0.1)  # 0.0 .. 0.9 of the stretch; now 1.0
    limiter.observe(429, None)
    assert limiter.rate == pytest.approx(9 / (1.0 + rl.HORIZON))


def test_too_few_requests_cut_by_beta_alone(clock: Clock) -> None:
    limiter = RateLimiter(50)
    send(limiter, clock, rl.MIN_SAMPLES - 1, 0.02)
    limiter.observe(429, None)
    assert limiter.rate == pytest.approx(50 * rl.BETA)


def test_throttles_answering_requests_sent_before_a_cut_cut_nothing_more(clock: Clock) -> None:
    limiter = RateLimiter(40)
    limiter.observe(429, 1.0)
    clock.now += 0.1
    limiter.observe(429, 1.0)  # in flight when the first came back
    assert limiter.rate == pytest.approx(40 * rl.BETA) and limiter.throttles == 1
    assert limiter._reserve() == pytest.approx(1.0)  # but the pause runs from the later one
    clock.now += 2.0
    limiter.observe(429, None)  # after the pause: a new signal
    assert limiter.rate == pytest.approx(40 * rl.BETA**2) and limiter.throttles == 2


def test_the_restart_after_a_pause_is_jittered_within_one_interval(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes throttled by one wave do not all start again at the same instant: the
    first slot after Retry-After is at a random point of the cut rate's first interval,
    never before Retry-After."""
    firsts = []
    for draw in (0.0, 0.5, 0.999):
        monkeypatch.setattr(rl, "_random", lambda draw=draw: draw)
        limiter = RateLimiter(40)
        limiter.observe(429, 1.0)
        firsts.append(limiter._reserve())
    interval = 1 / (40 * rl.BETA)
    assert firsts == pytest.approx([1.0, 1.0 + 0.5 * interval, 1.0 + 0.999 * interval])


def test_503_with_retry_after_is_a_throttle_and_other_errors_are_not(clock: Clock) -> None:
    limiter = RateLimiter(40)
    for status, retry_after in [(503, None), (500, None), (502, None), (None, None), (400, None)]:
        limiter.observe(status, retry_after)
    assert limiter.rate == 40 and limiter.throttles == 0
    limiter.observe(503, 2.0)
    assert limiter.rate == pytest.approx(40 * rl.BETA)
    assert limiter._reserve() == pytest.approx(2.0)


def test_success_probes_back_up_never_above_the_cap(clock: Clock) -> None:
    limiter = RateLimiter(50)
    limiter.observe(429, 1.0)
    clock.now += 1.0  # the pause
    rates = []
    for _ in range(60):
        clock.now += 0.5
        limiter.observe(202, None)
        rates.append(limiter.rate)
    assert rates == sorted(rates)
    assert rates[1] - rates[0] < 0.5  # slowly right after the cut: the share just measured
    assert rates[-1] == 50  # back at the cap within 30 s of calm
    assert max(rates) <= 50


def test_the_probe_speeds_up_the_longer_the_calm(clock: Clock) -> None:
    """From a deep cut (a fleet's share) a process left alone reaches the cap in well under
    the 90 s a constant increase of cap/100 per second would take."""
    limiter = RateLimiter(50, min_per_second=5)
    limiter._rate = 5.0
    limiter.observe(429, 0.0)  # at the floor now; calm from here
    assert limiter.rate == 5
    steps = []
    for _ in range(30):
        before = limiter.rate
        clock.now += 1.0
        limiter.observe(202, None)
        if limiter.rate < 50:
            steps.append(limiter.rate - before)
    assert steps == sorted(steps)  # convex until the cap
    assert limiter.rate == 50


def test_no_answer_and_server_errors_do_not_grow_the_rate(clock: Clock) -> None:
    limiter = RateLimiter(50)
    limiter.observe(429, None)
    clock.now += 10
    for status in (None, 500, 503, 504):
        limiter.observe(status, None)
    assert limiter.rate == pytest.approx(50 * rl.BETA)


def test_a_fixed_limiter_honours_retry_after_and_keeps_its_rate(clock: Clock) -> None:
    limiter = RateLimiter(20, adaptive=False)
    limiter.observe(429, 3.0)
    assert limiter.rate == 20 and limiter.throttles == 0
    assert limiter._reserve() == pytest.approx(3.0)


def test_the_rate_never_falls_below_its_floor(clock: Clock) -> None:
    limiter = RateLimiter(50, min_per_second=2)
    for _ in range(20):
        clock.now += 5
        send(limiter, clock, 5, 0.01)
        limiter.observe(429, None)
    assert limiter.rate == 2


def test_slots_that_came_during_a_blocked_loop_are_spread_again(clock: Clock) -> None:
    """Three requests hold slots 20 ms apart; the event loop is blocked for 100 ms and all
    three wake at once. The first goes; the others re-reserve at the rate's interval instead
    of going as a burst into a bucket that may be empty."""
    limiter = RateLimiter(50)
    held = [limiter._reserve_slot() for _ in range(3)]
    assert [wait for wait, _ in held] == pytest.approx([0, 0.02, 0.04])
    clock.now += 0.1
    assert limiter._may_go(held[0][1])
    assert not limiter._may_go(held[1][1])
    assert limiter._reserve() == pytest.approx(0.02)  # one interval after the first went
    with_burst = RateLimiter(50, burst=5)  # a burst allowed: nothing spread
    tickets = [with_burst._reserve_slot() for _ in range(3)]
    assert all(with_burst._may_go(epoch) for _, epoch in tickets)


def test_after_fork_keeps_what_was_learnt_with_a_fresh_lock(clock: Clock) -> None:
    limiter = RateLimiter(50)
    limiter.observe(429, None)
    child = limiter.after_fork()
    assert child is not limiter and child._lock is not limiter._lock
    assert child.per_second == 50 and child.rate == limiter.rate


# -- a fleet against one bucket, simulated on the fake clock -----------------------------


def simulate_fleet(
    clock: Clock, processes: int, requests: int, quota: float, concurrency: int = 4
) -> tuple[int, list[float], float]:
    """``processes`` limiters at the cap, ``requests`` each, ``concurrency`` in flight each,
    against a token bucket of ``quota`` (burst ``quota``) that answers 202 after 50 ms and
    429 with ``Retry-After: 1`` at once; a 429 is retried after its Retry-After, as the
    retry policy does. Returns the 429s, the rates of the limiters cut by the first wave
    (half a second after its first 429), and the seconds until the last request was
    accepted."""
    from bench.sink import TokenBucket

    start = clock.now
    bucket = TokenBucket(quota, quota, now=start)
    limiters = [RateLimiter(quota) for _ in range(processes)]
    left = [requests] * processes
    events: list[tuple[float, int, int, str, int]] = []  # (time, order, process, what, epoch)
    order = 0

    def at(when: float, process: int, what: str, epoch: int = 0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, process, what, epoch))

    for process in range(processes):
        for _ in range(concurrency):
            at(start + 0.001 * process, process, "reserve")
    throttled, last = 0, start
    after_wave: list[float] = []
    while events:
        clock.now, _, process, what, epoch = heapq.heappop(events)
        limiter = limiters[process]
        if what == "reserve":  # a worker wants to send (acquire: reserve, sleep, check)
            wait, epoch = limiter._reserve_slot()
            at(clock.now + max(0.0, wait), process, "wake", epoch)
        elif what == "wake":
            if not limiter._may_go(epoch):
                at(clock.now, process, "reserve")
                continue
            limiter._went()
            if bucket.take(clock.now) > 0:
                throttled += 1
                at(clock.now + 0.001, process, "429")
            else:
                at(clock.now + 0.05, process, "202")
        elif what == "429":
            limiter.observe(429, 1.0)
            if throttled == 1:
                at(clock.now + 0.5, process, "sample")
            at(clock.now + 1.0, process, "reserve")  # the retry, after Retry-After
        elif what == "sample":
            after_wave = [lim.rate for lim in limiters if lim.throttles]
        else:
            limiter.observe(202, None)
            last = clock.now
            left[process] -= 1
            if left[process] >= concurrency:
                at(clock.now, process, "reserve")
    assert left == [0] * processes
    return throttled, after_wave, last - start


def test_a_fleet_that_starts_together_learns_its_share_in_one_wave(clock: Clock) -> None:
    """8 processes at the whole quota start together against one bucket (the bench's fleet
    run, without the noise of a machine): one wave of 429s, one per process, cuts each
    process it reaches to near its share (halving needed three waves: 400 -> 200 -> 100 ->
    50; a process the wave missed goes on alone while the others pause), and the work is
    done at about the quota's pace."""
    quota = 50.0
    throttled, cut, seconds = simulate_fleet(clock, 8, 50, quota)
    assert len(cut) >= 6
    assert all(0.8 * quota / 8 <= rate <= 1.3 * quota / 8 for rate in cut), cut
    assert throttled <= 12  # 8 in the first wave; a few as the fleet probes
    assert 400 / seconds / quota >= 0.93, seconds  # the bench's share of the quota


def test_a_lone_process_at_the_quota_is_never_throttled(clock: Clock) -> None:
    throttled, _, seconds = simulate_fleet(clock, 1, 300, 50.0)
    assert throttled == 0
    assert 300 / seconds / 50 >= 0.99


# -- properties ------------------------------------------------------------------------------

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
        st.tuples(st.just("send"), st.integers(1, 30)),
        st.tuples(
            st.just("answer"),
            st.sampled_from([202, 207, 400, 429, 500, 503, None]),
            st.one_of(st.none(), st.floats(0.0, 120.0)),
        ),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    steps=_steps,
    cap=st.floats(0.5, 500.0),
    draw=st.floats(0.0, 0.999),
)
def test_the_rate_stays_within_its_bounds_and_retry_after_is_honoured(
    steps: list[tuple[object, ...]], cap: float, draw: float
) -> None:
    """Whatever the server answers, and whenever: the rate stays within [floor, cap]; a
    throttle never raises it and a success never lowers it; after a throttle no slot is
    given before its Retry-After (up to MAX_PAUSE) has passed."""
    fake = Clock()
    saved = rl._clock, rl._random
    rl._clock, rl._random = fake, lambda: draw
    try:
        limiter = RateLimiter(cap)
        not_before = -1.0
        for step in steps:
            before = limiter.rate
            if step[0] == "wait":
                fake.now += float(step[1])  # type: ignore[arg-type]
            elif step[0] == "send":
                for _ in range(int(step[1])):  # type: ignore[call-overload]
                    limiter._went()
                    fake.now += 1 / limiter.rate
            else:
                status, retry_after = step[1], step[2]
                assert status is None or isinstance(status, int)
                assert retry_after is None or isinstance(retry_after, float)
                limiter.observe(status, retry_after)
                if rl.is_throttle(status, retry_after):
                    assert limiter.rate <= before
                    not_before = max(not_before, fake.now + min(rl.MAX_PAUSE, retry_after or 0))
                elif status is not None:
                    assert limiter.rate >= before
            assert limiter.min_per_second <= limiter.rate <= cap
            if not_before > fake.now:
                assert fake.now + limiter._reserve() >= not_before - 1e-9
    finally:
        rl._clock, rl._random = saved


def test_a_slot_reserved_before_a_throttle_waits_for_retry_after() -> None:
    """A request already waiting for its slot when a 429 arrives does not go at its slot:
    it waits for Retry-After like every other (real time; lower bounds only)."""
    limiter = RateLimiter(4)  # slots 0.25 s apart
    limiter.acquire()  # the first slot, at once
    went: list[float] = []

    def second() -> None:
        limiter.acquire()  # its slot is 0.25 s away
        went.append(time.monotonic())

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.05)
    throttled_at = time.monotonic()
    limiter.observe(429, 0.6)
    thread.join(10)
    assert went and went[0] - throttled_at >= 0.55


class Before(RateLimiter):
    """The limiter before issue 9: a fixed rate that ignores what the server says."""

    def observe(self, status: int | None, retry_after: float | None) -> None:
        pass


def test_uncoordinated_clients_share_a_quota_with_few_429s() -> None:
    """Four clients, each with its own limiter at the whole quota, against one 40 requests/s
    bucket: limits that ignore the server get many 429s, adaptive ones few (measured: 22-25
    and 5-7); every event arrives both ways."""

    async def fleet(adaptive: bool, url: str, prefix: str) -> list[RateLimiter]:
        limiters = [RateLimiter(40) if adaptive else Before(40) for _ in range(4)]
        policy = RetryPolicy(max_retries=20, total_timeout=60)

        async def one(n: int, limiter: RateLimiter) -> None:
            events = [wire_event(id=f"{prefix}-{n}-{i}") for i in range(40)]
            async with AsyncClient(
                "fleet-token", base_url=url, rate_limit=limiter, retry=policy
            ) as client:
                result = await client.send(events, batch_size=1, concurrency=4)
            assert result.accepted == 40, result

        await asyncio.gather(*(one(n, lim) for n, lim in enumerate(limiters)))
        return limiters

    counts = {}
    for adaptive in (False, True):
        with SinkProcess(quota=40, latency=0.02, track_ids=True) as sink:
            before = sink.stats()
            asyncio.run(fleet(adaptive, sink.url, f"a{adaptive}"))
            spent = sink.stats() - before
        assert spent.distinct == 160  # none lost
        counts[adaptive] = spent.throttled
    assert counts[False] >= 15
    assert counts[True] <= counts[False] / 2
