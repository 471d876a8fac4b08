"""How fast to send: adaptive per-region concurrency, the per-minute key budget, a rate cap.

Pure asyncio, no I/O. Each limiter wakes exactly one waiter per freed slot, so a thousand idle
workers do not stampede on every response.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Waiters:
    """A FIFO of parked coroutines, woken one at a time."""

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    async def park(self) -> None:
        """Wait until `wake` picks this waiter."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    def wake(self, count: int = 1) -> None:
        """Wake up to `count` waiters that are still waiting."""
        while count > 0 and self._queue:
            future = self._queue.popleft()
            if not future.done():
                future.set_result(None)
                count -= 1


class AdaptiveLimit:
    """Requests in flight for one region, halved on congestion and regrown on success (AIMD).

    A burst of 429/503 answers arrives within one round trip; halving at most once per
    `cooldown_s` makes such a burst count as one signal instead of collapsing the limit to 1.
    """

    def __init__(self, maximum: int, *, clock: Clock = time.monotonic, cooldown_s: float = 1.0):
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._last_decrease_at = -cooldown_s
        self._waiters = Waiters()

    def has_capacity(self) -> bool:
        """True when a new request may start now (waiting retries go first)."""
        return self.in_flight < int(self.limit) and not self._waiters

    async def acquire(self) -> None:
        """Take a slot, waiting while the region is at its limit."""
        while self.in_flight >= int(self.limit):
            await self._waiters.park()
        self.in_flight += 1

    def release(self, *, congested: bool) -> None:
        """Give the slot back, adjusting the limit by how the request went."""
        self.in_flight -= 1
        if congested:
            self._decrease()
        elif self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
        if self.in_flight < int(self.limit):
            self._waiters.wake()

    def _decrease(self) -> None:
        now = self._clock()
        if now - self._last_decrease_at >= self._cooldown_s:
            self.limit = max(1.0, self.limit / 2.0)
            self._last_decrease_at = now


class MinuteBudget:
    """Spends the access key's per-minute budget (`x-jdcloud-remaining-minute`) without overdrawing.

    While the last answer says requests remain, requests flow. Once the budget is spent (the
    remaining count is no larger than what is already in flight), new
    requests wait and one probe is let through at growing intervals until an answer shows a fresh
    window; so a limit is used fully but never hammered. A rate-limit 429 carries the header
    with 0, which spends the budget the same way.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        first_probe_s: float = 1.0,
        max_probe_s: float = 4.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._first_probe_s = first_probe_s
        self._max_probe_s = max_probe_s
        self._probe_s = first_probe_s
        self._remaining: int | None = None
        self._in_flight = 0
        self._probe_at = 0.0
        self._probing = False

    @property
    def exhausted(self) -> bool:
        """True while the budget is spent and requests are being held back."""
        return self._remaining is not None and self._remaining <= self._in_flight

    @property
    def held_for_s(self) -> float:
        """While the budget is spent: seconds until the next probe may go; else 0."""
        if not self.exhausted:
            return 0.0
        return max(0.0, self._probe_at - self._clock())

    async def acquire(self) -> None:
        """Wait until a request may be sent under the key's budget."""
        while self.exhausted:
            now = self._clock()
            if now >= self._probe_at and not self._probing:
                self._probing = True
                break
            await self._sleep(max(0.01, self._probe_at - now))
        self._in_flight += 1

    def observe(self, remaining: int | None) -> None:
        """Record one answer's `x-jdcloud-remaining-minute` (None when it had none).

        Only the header counts: a 429 without it (a throttle with `Retry-After`) is the retry
        policy's and the region limit's business, not a sign that the key's minute is spent.
        """
        self._in_flight -= 1
        self._probing = False
        if remaining is None:
            return
        self._remaining = remaining
        if remaining > self._in_flight:
            self._probe_s = self._first_probe_s
        else:
            self._probe_at = self._clock() + self._probe_s
            self._probe_s = min(self._max_probe_s, self._probe_s * 2.0)


class TokenBucket:
    """The optional client-side cap on requests per second (0 means none)."""

    def __init__(
        self, rate_per_s: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ):
        self.rate_per_s = rate_per_s
        # A tenth of a second's worth of burst keeps the pace smooth without a lock-step.
        self._capacity = max(1.0, rate_per_s / 10.0)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._updated_at = clock()

    async def acquire(self) -> None:
        """Take one token, waiting for it if the bucket is empty.

        Each caller reserves its token at once (the count may go negative) and sleeps for its
        own place in line, so concurrent callers are spaced without polling.
        """
        if self.rate_per_s <= 0:
            return
        now = self._clock()
        elapsed_s = now - self._updated_at
        self._tokens = min(self._capacity, self._tokens + elapsed_s * self.rate_per_s) - 1.0
        self._updated_at = now
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate_per_s)
