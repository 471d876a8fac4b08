"""Adaptive region limits, the per-minute key budget and the client-side rate cap."""

from __future__ import annotations

import asyncio

from crawler.pacing import AdaptiveLimit, MinuteBudget, TokenBucket


class FakeTime:
    """A clock that only moves when the injected sleep is awaited."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_a_limit_halves_once_per_burst_and_regrows_on_success() -> None:
    time = FakeTime()
    limit = AdaptiveLimit(32, clock=time.clock, cooldown_s=1.0)
    for _ in range(10):  # a burst of 503s inside one cooldown counts once
        await limit.acquire()
        limit.release(congested=True)
    assert limit.limit == 16
    time.now += 1.5
    await limit.acquire()
    limit.release(congested=True)
    assert limit.limit == 8
    for _ in range(600):  # additive increase: about limit/1 successes per step up
        await limit.acquire()
        limit.release(congested=False)
    assert limit.limit == 32


async def test_a_limit_never_drops_below_one() -> None:
    time = FakeTime()
    limit = AdaptiveLimit(4, clock=time.clock, cooldown_s=0.0)
    for _ in range(10):
        await limit.acquire()
        limit.release(congested=True)
    assert limit.limit == 1


async def test_a_full_limit_parks_the_next_acquirer_until_a_release() -> None:
    limit = AdaptiveLimit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert not limit.has_capacity()
    limit.release(congested=False)
    await asyncio.wait_for(waiter, 1.0)
    assert limit.in_flight == 1


async def test_the_budget_lets_requests_through_while_the_minute_has_room() -> None:
    time = FakeTime()
    budget = MinuteBudget(clock=time.clock, sleep=time.sleep)
    for remaining in (999, 500, 10):
        await budget.acquire()
        budget.observe(remaining)
    assert time.sleeps == []


async def test_a_spent_budget_holds_requests_and_probes_at_growing_intervals() -> None:
    time = FakeTime()
    budget = MinuteBudget(clock=time.clock, sleep=time.sleep, first_probe_s=1.0, max_probe_s=4.0)
    await budget.acquire()
    budget.observe(0)  # the window is spent
    probe_times = []
    for _ in range(4):
        await budget.acquire()
        probe_times.append(time.now)
        budget.observe(0)  # the probe is refused by a 429 saying 0 remain: still spent
    assert probe_times == [1.0, 3.0, 7.0, 11.0]  # waits of 1, 2, 4, then capped at 4
    await budget.acquire()
    budget.observe(600)  # a new window
    assert not budget.exhausted
    before = time.now
    await budget.acquire()
    assert time.now == before


async def test_an_answer_without_the_header_changes_nothing() -> None:
    budget = MinuteBudget()
    await budget.acquire()
    budget.observe(None)  # e.g. a throttling 429 with only a Retry-After
    assert not budget.exhausted


async def test_the_rate_cap_spaces_requests() -> None:
    time = FakeTime()
    bucket = TokenBucket(10.0, clock=time.clock, sleep=time.sleep)
    for _ in range(21):
        await bucket.acquire()
    assert 1.9 <= time.now <= 2.1  # 10 per second, after a one-token burst


async def test_a_zero_rate_cap_never_waits() -> None:
    time = FakeTime()
    bucket = TokenBucket(0.0, clock=time.clock, sleep=time.sleep)
    for _ in range(1000):
        await bucket.acquire()
    assert time.sleeps == []
