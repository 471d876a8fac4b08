"""One rate budget per access key, shared through PostgreSQL by every host crawling with it.

CONTRACT.md §3 `[crawl] rate_limit_per_s` and the API's per-minute answers hold per access key,
not per process: N hosts with one key must together keep to them (issue 13). The budget is one
`rate_budgets` row per key (keyed by a hash of the access key, which never reaches the database):

- `next_free_s` is a virtual clock, the generic cell rate algorithm: a reservation of n sends at
  rate r moves it to max(it, now) + n/r and the caller waits until the old value. One UPDATE per
  reservation, no polling, and callers on any host end up spaced exactly 1/r apart. Times are the
  database server's (`clock_timestamp()`), so the hosts' own clocks do not matter.
- `held_until_s` is set when an answer says the key's minute is spent (`x-jdcloud-remaining-minute`
  at or below what is in flight, or a 429 `HTTP_RATE_LIMIT_EXCEEDED`): every host holds its
  requests until then, not only the one that saw the answer.

To keep round trips off the hot path a process reserves a small slice of sends at once (a tenth
of a second's worth, at least one) and spends it locally, spaced at the rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from crawler.errors import StoreError
from crawler.reconnect import once_more_if_lost

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A reservation covers this much time's worth of sends.
SLICE_S = 0.1
# How long a host trusts its last look at the shared hold before it looks again.
HOLD_CHECK_S = 0.5

# Library failures that end the run as "the database is unusable" (StoreError, exit 3).
_FAILURES = (SQLAlchemyError, OSError)

RESERVE_SQL = """
INSERT INTO rate_budgets AS b (key_id, next_free_s)
VALUES (%(key_id)s, extract(epoch FROM clock_timestamp()) + %(span_s)s)
ON CONFLICT (key_id) DO UPDATE
   SET next_free_s = greatest(b.next_free_s, extract(epoch FROM clock_timestamp()))
                     + %(span_s)s
RETURNING next_free_s - %(span_s)s - extract(epoch FROM clock_timestamp()),
          held_until_s - extract(epoch FROM clock_timestamp())
"""

HOLD_SQL = """
INSERT INTO rate_budgets AS b (key_id, held_until_s)
VALUES (%(key_id)s, extract(epoch FROM clock_timestamp()) + %(hold_s)s)
ON CONFLICT (key_id) DO UPDATE
   SET held_until_s = greatest(b.held_until_s, EXCLUDED.held_until_s)
"""

READ_HOLD_SQL = """
SELECT held_until_s - extract(epoch FROM clock_timestamp()) FROM rate_budgets
 WHERE key_id = %(key_id)s
"""


def key_id(access_key: str) -> str:
    """How the budget row names an access key: a SHA-256 prefix, never the key itself."""
    return hashlib.sha256(access_key.encode()).hexdigest()[:32]


class SharedRate:
    """`rate_per_s` sends per second for this key across every host (0 means no cap).

    Has the same `acquire()` as `crawler.pacing.TokenBucket`, which it replaces on PostgreSQL.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        access_key: str,
        rate_per_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate_per_s = rate_per_s
        self._engine = engine
        self._key_id = key_id(access_key)
        self._clock = clock
        self._sleep = sleep
        self._slice = max(1, math.floor(rate_per_s * SLICE_S)) if rate_per_s > 0 else 0
        # Local send times (this process's monotonic clock) already reserved and not yet used.
        self._next_at = 0.0
        self._left = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for this request's place in the key's shared schedule."""
        if self.rate_per_s <= 0:
            return
        async with self._lock:  # one reservation at a time; the others take its sends
            if self._left == 0:
                wait_s = await self._reserve()
                self._next_at = self._clock() + wait_s
                self._left = self._slice
            send_at = self._next_at
            self._next_at += 1.0 / self.rate_per_s
            self._left -= 1
        delay_s = send_at - self._clock()
        if delay_s > 0:
            await self._sleep(delay_s)

    async def _reserve(self) -> float:
        span_s = self._slice / self.rate_per_s
        params = {"key_id": self._key_id, "span_s": span_s}

        # Made twice (the COMMIT got through, its answer did not), a reservation only leaves a
        # slice of the shared budget unspent: slower for a moment, never faster than the rate.
        async def reserve() -> Any:
            async with self._engine.begin() as conn:
                return (await conn.exec_driver_sql(RESERVE_SQL, params)).one()

        try:
            row = await once_more_if_lost(reserve, "reserve from the shared rate budget")
        except _FAILURES as exc:  # the database is gone: the run ends, it does not hang
            raise StoreError(f"cannot reserve from the shared rate budget: {exc}") from exc
        return max(0.0, float(row[0]), float(row[1]))


class SharedHold:
    """The key's per-minute budget across hosts: a hold any host can set and every host obeys."""

    def __init__(
        self, engine: AsyncEngine, access_key: str, *, clock: Clock = time.monotonic
    ) -> None:
        self._engine = engine
        self._key_id = key_id(access_key)
        self._clock = clock
        self._checked_at = -math.inf
        self._held_until = -math.inf

    async def wait_s(self) -> float:
        """Seconds this host must still hold its requests (0 when free), looked up at most
        every `HOLD_CHECK_S`."""
        now = self._clock()
        if now - self._checked_at >= HOLD_CHECK_S:
            self._checked_at = now
            try:
                left = await once_more_if_lost(self._read_hold, "read the shared rate budget")
            except _FAILURES as exc:
                raise StoreError(f"cannot read the shared rate budget: {exc}") from exc
            self._held_until = now + float(left) if left is not None else -math.inf
        return max(0.0, self._held_until - now)

    async def _read_hold(self) -> Any:
        async with self._engine.connect() as conn:
            return (await conn.exec_driver_sql(READ_HOLD_SQL, {"key_id": self._key_id})).scalar()

    async def hold(self, hold_s: float) -> None:
        """Tell every host to hold this key's requests for `hold_s`."""
        self._held_until = max(self._held_until, self._clock() + hold_s)
        params = {"key_id": self._key_id, "hold_s": hold_s}

        async def write() -> None:
            async with self._engine.begin() as conn:
                await conn.exec_driver_sql(HOLD_SQL, params)

        try:
            await once_more_if_lost(write, "write the shared rate budget")
        except _FAILURES as exc:
            raise StoreError(f"cannot write the shared rate budget: {exc}") from exc
