"""The retry policy: what is retried, how long it waits, how attempts are counted."""

from __future__ import annotations

import random

import pytest

from crawler.errors import (
    ApiError,
    AuthError,
    ImageNotFoundError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)
from crawler.retry import Retrier, RetryPolicy, backoff_s


class Sleeps:
    """An injected sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Script:
    """An attempt that raises the scripted errors in turn, then returns 'ok'."""

    def __init__(self, *errors: ApiError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def transient(**fields: object) -> TransientApiError:
    return TransientApiError("503 from upstream", http_status=503, **fields)  # type: ignore[arg-type]


async def test_transient_errors_are_retried_until_success() -> None:
    sleeps, script = Sleeps(), Script(transient(), transient())
    attempted = await Retrier(RetryPolicy(6, 0.5, 60.0), sleep=sleeps).call(script)
    assert (attempted.value, attempted.error, attempted.attempts) == ("ok", None, 3)
    assert len(sleeps.waits) == 2


@pytest.mark.parametrize(
    "error",
    [
        PermanentApiError("400", http_status=400),
        ImageNotFoundError("404", http_status=404),
        AuthError("401", http_status=401),
    ],
)
async def test_permanent_errors_are_not_retried(error: ApiError) -> None:
    sleeps, script = Sleeps(), Script(error)
    attempted = await Retrier(RetryPolicy(), sleep=sleeps).call(script)
    assert attempted.error is error
    assert attempted.attempts == 1
    assert sleeps.waits == []


async def test_attempts_stop_at_max_attempts_with_the_last_error() -> None:
    errors = [transient(request_id=f"r{n}") for n in range(10)]
    sleeps, script = Sleeps(), Script(*errors)
    attempted = await Retrier(RetryPolicy(4, 0.5, 60.0), sleep=sleeps).call(script)
    assert script.calls == 4
    assert attempted.attempts == 4
    assert attempted.error is errors[3]
    assert len(sleeps.waits) == 3


async def test_waits_are_full_jitter_under_an_exponential_cap() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(8, 0.5, 4.0)
    retrier = Retrier(policy, sleep=sleeps, rng=random.Random(1))
    await retrier.call(Script(*[transient() for _ in range(7)]))
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert len(sleeps.waits) == len(ceilings)
    for wait, ceiling in zip(sleeps.waits, ceilings, strict=True):
        assert 0.0 <= wait <= ceiling


class TopOfRange(random.Random):
    """An rng whose jitter always lands on the ceiling, so each wait shows its attempt number."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_each_wait_doubles_from_the_first_retry_up_to_the_cap() -> None:
    sleeps = Sleeps()
    retrier = Retrier(RetryPolicy(8, 0.5, 4.0), sleep=sleeps, rng=TopOfRange())
    await retrier.call(Script(*[transient() for _ in range(7)]))
    assert sleeps.waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(("max_attempts", "calls"), [(1, 1), (2, 2)])
async def test_small_attempt_budgets_are_kept(max_attempts: int, calls: int) -> None:
    sleeps, script = Sleeps(), Script(*[transient() for _ in range(5)])
    attempted = await Retrier(RetryPolicy(max_attempts, 0.5, 4.0), sleep=sleeps).call(script)
    assert (script.calls, attempted.attempts) == (calls, calls)
    assert isinstance(attempted.error, TransientApiError)
    assert len(sleeps.waits) == calls - 1


async def test_a_permanent_error_after_a_retry_ends_the_call() -> None:
    final = PermanentApiError("400", http_status=400)
    sleeps, script = Sleeps(), Script(transient(), final)
    attempted = await Retrier(RetryPolicy(6, 0.5, 4.0), sleep=sleeps).call(script)
    assert (attempted.error, attempted.attempts, len(sleeps.waits)) == (final, 2, 1)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(3)
    waits = [backoff_s(RetryPolicy(6, 1.0, 60.0), 3, transient(), rng) for _ in range(2000)]
    assert min(waits) < 0.2
    assert max(waits) > 3.8
    assert all(0 <= wait <= 4.0 for wait in waits)


async def test_retry_after_is_a_floor_on_the_wait() -> None:
    sleeps = Sleeps()
    limited = RateLimitedError("429", http_status=429, retry_after_s=7.5)
    await Retrier(RetryPolicy(3, 0.1, 10.0), sleep=sleeps).call(Script(limited))
    assert sleeps.waits == [7.5]


@pytest.mark.parametrize("retry_after_s", [61.0, 86400.0, 1e300])
def test_no_wait_exceeds_max_backoff_whatever_retry_after_says(retry_after_s: float) -> None:
    error = RateLimitedError("429", http_status=429, retry_after_s=retry_after_s)
    policy = RetryPolicy(6, 0.5, 60.0)
    waits = [backoff_s(policy, attempt, error, random.Random(attempt)) for attempt in range(1, 7)]
    assert waits == [60.0] * 6
    short = RetryPolicy(6, 0.01, 0.05)
    assert backoff_s(short, 1, error, random.Random(0)) == 0.05


async def test_each_retry_is_reported_with_its_wait() -> None:
    seen: list[tuple[int, float]] = []
    sleeps = Sleeps()
    retrier = Retrier(
        RetryPolicy(3, 0.5, 60.0),
        sleep=sleeps,
        on_retry=lambda error, attempt, wait_s: seen.append((attempt, wait_s)),
    )
    await retrier.call(Script(transient(), transient()))
    assert [attempt for attempt, _ in seen] == [1, 2]
    assert [wait for _, wait in seen] == sleeps.waits


def test_a_spent_minute_budget_gets_only_a_short_wait() -> None:
    spent = RateLimitedError("429 minute limit", http_status=429, remaining_minute=0)
    waits = [backoff_s(RetryPolicy(6, 0.5, 60.0), 5, spent, random.Random(n)) for n in range(50)]
    assert max(waits) <= 0.5  # the budget gate, not the backoff, waits for the next window
