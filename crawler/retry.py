"""The retry policy of CONTRACT.md §5, built on tenacity.

Which errors are retried is decided by type alone: `TransientApiError` (and so `RateLimitedError`)
is retried, everything else is final. Waits are exponential with full jitter and honour the
server's `Retry-After`, but no single wait ever exceeds `max_backoff_s`, whatever `Retry-After`
says: one target then takes at most `max_attempts x (timeout_s + max_backoff_s)`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from crawler.errors import ApiError, RateLimitedError, TransientApiError

if TYPE_CHECKING:  # tenacity itself is imported by the first retry (start-up, see `_retry`)
    import tenacity

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
RetryHook = Callable[[ApiError, int, float], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one target is retried."""

    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Attempted(Generic[T]):
    """What came of retrying one call: a value or the last error, and the attempts it took."""

    value: T | None
    error: ApiError | None
    attempts: int


def backoff_s(policy: RetryPolicy, attempt: int, error: ApiError, rng: random.Random) -> float:
    """The wait before attempt `attempt + 1`: full jitter, at least the server's Retry-After, and
    never more than `max_backoff_s` (a gateway asking for an hour would park a worker for it)."""
    if _minute_spent(error):
        # The key's per-minute budget is spent; the scheduler's budget gate holds every request
        # until a new window opens, so backing off on top of it would only add idle time.
        return rng.uniform(0.0, policy.initial_backoff_s)
    ceiling_s = min(policy.max_backoff_s, policy.initial_backoff_s * 2.0 ** (attempt - 1))
    wait_s = rng.uniform(0.0, ceiling_s)
    if error.retry_after_s is not None:
        wait_s = max(wait_s, min(error.retry_after_s, policy.max_backoff_s))
    return wait_s


def _minute_spent(error: ApiError) -> bool:
    return (
        isinstance(error, RateLimitedError)
        and error.retry_after_s is None
        and error.remaining_minute is not None
        and error.remaining_minute <= 0
    )


class Retrier:
    """Runs a coroutine factory under the policy, reporting each retry to `on_retry`."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> Attempted[T]:
        """Call `attempt` until it succeeds, fails for good, or attempts run out."""
        # Fast path: most calls succeed (or fail for good) at once, and building tenacity's
        # machinery for them cost a tenth of the crawl's CPU in profiles. Tenacity takes over only
        # from the first retry on, so the policy itself stays tenacity's.
        try:
            return Attempted(await attempt(), None, 1)
        except TransientApiError as error:
            if self.policy.max_attempts <= 1:
                return Attempted(None, error, 1)
            first_error: ApiError = error
        except ApiError as error:
            return Attempted(None, error, 1)
        wait_s = backoff_s(self.policy, 1, first_error, self._rng)
        if self._on_retry is not None:
            self._on_retry(first_error, 1, wait_s)
        await self._sleep(wait_s)
        return await self._retry(attempt)

    async def _retry(self, attempt: Callable[[], Awaitable[T]]) -> Attempted[T]:
        """Attempts 2..max_attempts under tenacity, numbered as the whole call's attempts."""
        attempts = 1

        async def counted() -> T:
            nonlocal attempts
            attempts += 1
            return await attempt()

        # Imported here, by the run's first retry: a crawl with none never loads it (~5 ms).
        import tenacity

        # A fresh AsyncRetrying per call: tenacity keeps per-call state on the instance.
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.policy.max_attempts - 1),
            retry=tenacity.retry_if_exception_type(TransientApiError),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._report,
            reraise=True,
        )
        try:
            value: T = await retrying(counted)
        except ApiError as error:
            return Attempted(None, error, attempts)
        return Attempted(value, None, attempts)

    # Tenacity numbers from the first attempt it made itself, which is the call's second.
    def _wait(self, state: tenacity.RetryCallState) -> float:
        return backoff_s(self.policy, state.attempt_number + 1, _error_of(state), self._rng)

    def _report(self, state: tenacity.RetryCallState) -> None:
        if self._on_retry is not None:
            wait_s = state.upcoming_sleep
            self._on_retry(_error_of(state), state.attempt_number + 1, wait_s)


def _error_of(state: tenacity.RetryCallState) -> ApiError:
    assert state.outcome is not None  # tenacity only waits after an attempt has an outcome
    error = state.outcome.exception()
    assert isinstance(error, ApiError)  # only TransientApiError is retried
    return error
