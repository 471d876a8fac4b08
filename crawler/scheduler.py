"""Bounded fan-out of one run's pending targets over a fixed set of workers.

Shape of a run:

    feeder ──pages──▶ a lane per region ──▶ N workers ──▶ results queue ──▶ writer
    (store)            (round-robin pick,     (retry,       (bounded)         (one transaction
                        adaptive limit)        pacing)                         per batch)

Workers never outnumber `concurrency`, lanes hold at most a few pages, and the results queue is
bounded, so memory does not grow with the number of targets. The scheduler sees the API client
and the store only through the small Protocols below.

What goes wrong with one target stays with it: any exception while a target is fetched, checked
or normalised becomes that target's `failed` outcome (`INTERNAL_ERROR` naming the exception type,
the traceback logged), and an answer for another image than the one asked for is `ID_MISMATCH`.
What goes wrong with the run ends it: rejected credentials, a writer that cannot write (then no
worker waits on the full results queue: all are cancelled), or an endpoint that has given nothing
but transport failures since the run began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from crawler.errors import (
    ApiError,
    AuthError,
    BadBodyError,
    CrawlerError,
    EndpointUnreachableError,
    ImageNotFoundError,
    InternalError,
    NormaliseError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)
from crawler.models import (
    FetchedImage,
    ImageResponse,
    ImageRows,
    ImagesPage,
    JsonObject,
    KnownAnswer,
    Outcome,
    Target,
    TargetPage,
    TargetResult,
    UnchangedAnswer,
)
from crawler.normalise import scrub_text
from crawler.pacing import AdaptiveLimit, MinuteBudget, TokenBucket, Waiters
from crawler.retry import Retrier, RetryPolicy

log = logging.getLogger(__name__)

PAGE_SIZE = 512
# describeImages takes at most 100 ids, and the gateway refuses URLs over 8 KB (414): the ids'
# share of the query is kept under this, leaving room for the endpoint, path and pageSize.
BATCH_MAX_IDS = 100
BATCH_QUERY_BUDGET_BYTES = 7000
RESULTS_QUEUE_SIZE = 2048
WRITE_BATCH_MAX = 1000
# When the last batch was small, the writer waits this long after the next batch's first result
# to gather more. A transaction costs the same fixed work (BEGIN, seven statements, COMMIT, a WAL
# append, a thread hand-over per statement) whatever its size; without the wait a crawl bound by
# latency commits one to eight results at a time and spends ~40 % more CPU on the same work. A
# fast crawl's batches are already large, and it does not wait. A SIGKILL loses at most this much
# more of what was fetched (resume fetches it again).
WRITE_GATHER_S = 0.05
WRITE_GATHER_BELOW = 64
# While no answer at all has come in, this many consecutive connection failures (refused, DNS,
# TLS), or one per worker if there are more workers, mean the endpoint is dead: every worker's
# first attempt has failed, and ~40 minutes of retries would follow.
UNREACHABLE_AFTER_MIN = 50
# Targets failing in bulk are visible: one WARNING at most this often, counting by error_status.
FAILURE_WARNING_EVERY_S = 30.0
_MESSAGE_MAX_CHARS = 300


class _UnusableBatch(PermanentApiError):
    """A describeImages answer unusable as a whole: its ids are asked one by one instead."""


class ImageApi(Protocol):
    """What the scheduler needs of the API client."""

    async def describe_image(
        self, region_id: str, image_id: str, *, known_digest: bytes | None = None
    ) -> ImageResponse | KnownAnswer: ...

    async def describe_images(
        self, region_id: str, *, ids: Sequence[str], page_size: int
    ) -> ImagesPage: ...


class RunStore(Protocol):
    """What the scheduler needs of the store."""

    async def pending_targets(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> list[Target]: ...

    async def write_results(self, run_id: int, results: Sequence[TargetResult]) -> object: ...


class TargetFeed(Protocol):
    """Where the scheduler's lanes get their targets: the store's pages, or claims."""

    async def next_page(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> TargetPage: ...

    def crawled(self, result: TargetResult) -> None:
        """A target from this feed has its outcome (it is on its way to the writer)."""


class StorePages:
    """The single-process feed: the run's pending targets, page by page from the store."""

    def __init__(self, store: RunStore) -> None:
        self._store = store

    async def next_page(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> TargetPage:
        """The next page after `after_image_id`; a short page is the region's last."""
        page = await self._store.pending_targets(
            run_id, region_id, after_image_id=after_image_id, limit=limit
        )
        short = len(page) < limit
        return TargetPage(page, exhausted=short, short=short)

    def crawled(self, result: TargetResult) -> None:
        """Nothing to do: the store knows a target is done once its result is written."""


class SendGate(Protocol):
    """A cap on requests per second (`pacing.TokenBucket`, or one shared by many hosts)."""

    async def acquire(self) -> None: ...


class KeyHold(Protocol):
    """The access key's per-minute budget as other processes crawling with the key see it."""

    async def wait_s(self) -> float: ...

    async def hold(self, hold_s: float) -> None: ...


# Checks and encodes an image; its rows may be built now, or later by the store.
Normaliser = Callable[[str, JsonObject], ImageRows | FetchedImage]


class Metered(Protocol):
    """An answer that may carry the key's remaining per-minute budget."""

    @property
    def remaining_minute(self) -> int | None: ...


AnswerT = TypeVar("AnswerT", bound=Metered)
UtcClock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The knobs of one run's fan-out."""

    concurrency: int = 64
    per_region_concurrency: int = 32
    rate_limit_per_s: float = 0.0
    strategy: str = "single"  # or "batch": describeImages with up to 100 ids per call
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(slots=True)
class CrawlStats:
    """Live counters, read by the progress display and the summary."""

    total: int = 0
    fetched: int = 0
    missing: int = 0
    failed: int = 0
    requests: int = 0
    retries: int = 0

    @property
    def done(self) -> int:
        """Targets with an outcome so far."""
        return self.fetched + self.missing + self.failed

    def count(self, outcome: Outcome) -> None:
        """Add one outcome."""
        if outcome is Outcome.FETCHED:
            self.fetched += 1
        elif outcome is Outcome.MISSING:
            self.missing += 1
        else:
            self.failed += 1


@dataclass(slots=True)
class Lane:
    """One region's queue of pending targets and its adaptive limit."""

    region_id: str
    limit: AdaptiveLimit
    queue: deque[Target] = field(default_factory=deque)
    cursor: str | None = None
    exhausted: bool = False
    dry: bool = False  # the feed had no more for now (a batch may then go out short)
    after_writes: bool = False  # the feed waits for this process's writes (`TargetPage`)

    @property
    def finished(self) -> bool:
        """No target is queued and the store has no more."""
        return self.exhausted and not self.queue


@dataclass(frozen=True, slots=True)
class Pacing:
    """Injected time and randomness, so tests can watch backoff without waiting."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    utc_now: UtcClock = lambda: datetime.now(UTC)
    rng: random.Random = field(default_factory=random.Random)


class Scheduler:
    """Crawls every pending target of one run, writing outcomes through the store."""

    def __init__(
        self,
        config: SchedulerConfig,
        api: ImageApi,
        store: RunStore,
        normalise: Normaliser,
        *,
        pacing: Pacing | None = None,
        feed: TargetFeed | None = None,
        rate: SendGate | None = None,
        key_hold: KeyHold | None = None,
    ) -> None:
        """Args beyond the obvious ones (all default to this process alone):
        feed: where targets come from (default: the store's pending pages).
        rate: the requests-per-second cap (default: `rate_limit_per_s` for this process).
        key_hold: a per-minute hold shared with other processes using the same key.
        """
        self.config = config
        self.stats = CrawlStats()
        self._api = api
        self._store = store
        self._normalise = normalise
        self._pacing = pacing or Pacing()
        self._budget = MinuteBudget(clock=self._pacing.clock, sleep=self._pacing.sleep)
        self._bucket: SendGate = rate or TokenBucket(
            config.rate_limit_per_s, clock=self._pacing.clock, sleep=self._pacing.sleep
        )
        self._feed: TargetFeed = feed or StorePages(store)
        self._key_hold = key_hold
        self._key_held_until = 0.0
        self._retrier = Retrier(
            config.retry, sleep=self._pacing.sleep, rng=self._pacing.rng, on_retry=self._on_retry
        )
        self._lanes: list[Lane] = []
        self._next_lane = 0
        self._idle_workers = Waiters()
        self._feeder_wanted = asyncio.Event()
        self._results: asyncio.Queue[TargetResult | None] = asyncio.Queue(RESULTS_QUEUE_SIZE)
        self._stopping = False
        self._first_answer = asyncio.Event()
        self._first_sent = False
        self._fatal: CrawlerError | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._answered = False
        self._unreachable_count = 0
        self._unreachable_first: ApiError | None = None
        self._unreachable_after = max(UNREACHABLE_AFTER_MIN, config.concurrency)
        self._failures: Counter[str] = Counter()
        self._failures_since = -math.inf

    async def run(self, run_id: int, pending: dict[str, int]) -> CrawlStats:
        """Crawl the run's pending targets (`pending`: region to count) until done or stopped.

        Raises:
            AuthError: the credentials were rejected; no further request was sent.
            StoreError: a batch of results could not be written.
            EndpointUnreachableError: nothing but connection failures since the run began.
            InternalError: the writer or the feeder failed with an unexpected exception (a bug).
        """
        self.stats.total = sum(pending.values())
        self._lanes = [self._lane(region) for region in sorted(pending) if pending[region]]
        writer = asyncio.create_task(self._guard(self._write_loop(run_id), "writer"), name="writer")
        feeder = asyncio.create_task(self._guard(self._feed_loop(run_id), "feeder"), name="feeder")
        self._workers = [
            asyncio.create_task(self._work(), name=f"worker-{n}")
            for n in range(self.config.concurrency)
        ]
        try:
            outcomes = await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            await self._end_writer(writer)
        if self._failures:  # the tail since the last WARNING, so the log's counts add up
            self._report_failures(logging.INFO, self._pacing.clock())
        _raise_unexpected(outcomes)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    async def _end_writer(self, writer: asyncio.Task[None]) -> None:
        """Hand the writer its end mark and wait for it: it drains the queue, unless it dies."""
        if not writer.done():
            # A writer that dies while the queue is full would leave this put waiting for ever.
            end = asyncio.ensure_future(self._results.put(None))
            await asyncio.wait({end, writer}, return_when=asyncio.FIRST_COMPLETED)
            end.cancel()
        await writer

    def stop(self) -> None:
        """Stop promptly: no new request starts, requests in flight are abandoned (resumable)."""
        self._stopping = True
        for task in self._workers:
            task.cancel()

    def _lane(self, region_id: str) -> Lane:
        limit = AdaptiveLimit(self.config.per_region_concurrency, clock=self._pacing.clock)
        return Lane(region_id, limit)

    async def _feed_loop(self, run_id: int) -> None:
        while not all(lane.exhausted for lane in self._lanes):
            retry_in_s: float | None = None
            for lane in self._lanes:
                if not lane.exhausted and len(lane.queue) < PAGE_SIZE // 2:
                    wait_s = await self._refill(run_id, lane)
                    if wait_s is not None:
                        retry_in_s = wait_s if retry_in_s is None else min(retry_in_s, wait_s)
            self._feeder_wanted.clear()
            if retry_in_s is None:
                await self._feeder_wanted.wait()
            else:  # a feed of claims may have more later (leases held elsewhere may lapse)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._feeder_wanted.wait(), retry_in_s)

    async def _refill(self, run_id: int, lane: Lane) -> float | None:
        page = await self._feed.next_page(
            run_id, lane.region_id, after_image_id=lane.cursor, limit=PAGE_SIZE
        )
        lane.queue.extend(page.targets)
        lane.exhausted = page.exhausted
        lane.after_writes = page.after_writes
        if page.short is not None:
            lane.dry = page.short
        if page.targets:
            lane.cursor = page.targets[-1].image_id
        self._idle_workers.wake(len(page.targets) if page.targets else len(self._idle_workers))
        return page.retry_in_s

    async def _next_targets(self) -> tuple[Lane, list[Target]] | None:
        """The next target (or batch) in region round-robin order, from a region with room."""
        while not self._stopping:
            picked = self._pick()
            if picked is not None:
                return picked
            if all(lane.finished for lane in self._lanes):
                self._idle_workers.wake(len(self._idle_workers))
                return None
            await self._idle_workers.park()
        return None

    def _pick(self) -> tuple[Lane, list[Target]] | None:
        count = len(self._lanes)
        for offset in range(count):
            lane = self._lanes[(self._next_lane + offset) % count]
            if self._ready(lane):
                self._next_lane = (self._next_lane + offset + 1) % count
                if len(lane.queue) <= PAGE_SIZE // 2:
                    self._feeder_wanted.set()
                return lane, self._take(lane)
        return None

    def _ready(self, lane: Lane) -> bool:
        if not lane.queue or not lane.limit.has_capacity():
            return False
        # A batch waits for a full load unless the region has no more: fewer, fuller calls.
        return (
            self.config.strategy != "batch"
            or lane.exhausted
            or lane.dry
            or len(lane.queue) >= BATCH_MAX_IDS
        )

    def _take(self, lane: Lane) -> list[Target]:
        if self.config.strategy != "batch":
            return [lane.queue.popleft()]
        batch: list[Target] = []
        budget = BATCH_QUERY_BUDGET_BYTES
        while lane.queue and len(batch) < BATCH_MAX_IDS:
            cost = len(lane.queue[0].image_id) + len("ids.100=&")
            if cost > budget:
                break
            budget -= cost
            batch.append(lane.queue.popleft())
        return batch

    async def _work(self) -> None:
        while (picked := await self._next_targets()) is not None:
            lane, targets = picked
            if self.config.strategy == "batch":
                results = await self._crawl_batch_safely(lane, targets)
            else:
                results = [await self._crawl_safely(lane, targets[0])]
            for result in results:
                self._count(result)
                self._feed.crawled(result)
                await self._results.put(result)

    def _count(self, result: TargetResult) -> None:
        self.stats.count(result.outcome)
        if result.outcome is not Outcome.FAILED:
            return
        self._failures[result.error_status or "UNKNOWN"] += 1
        now = self._pacing.clock()
        if now - self._failures_since < FAILURE_WARNING_EVERY_S:
            return
        self._report_failures(logging.WARNING, now)
        self._failures_since = now

    def _report_failures(self, level: int, now: float) -> None:
        """Log the failures counted since the last report, by error_status, and reset them."""
        since = (
            "since the run began"
            if math.isinf(self._failures_since)
            else f"in the last {now - self._failures_since:.0f} s"
        )
        counts = ", ".join(f"{status} {n}" for status, n in self._failures.most_common())
        log.log(level, "%d targets failed %s: %s", sum(self._failures.values()), since, counts)
        self._failures.clear()

    async def _crawl_safely(
        self, lane: Lane, target: Target, *, earlier_attempts: int = 0
    ) -> TargetResult:
        """`_crawl`, with any unexpected exception made the target's own failure."""
        try:
            return await self._crawl(lane, target, earlier_attempts=earlier_attempts)
        except Exception as exc:  # a bug must not kill the worker
            return self._internal_error(target, exc, max(1, earlier_attempts))

    async def _crawl_batch_safely(self, lane: Lane, targets: list[Target]) -> list[TargetResult]:
        try:
            return await self._crawl_batch(lane, targets)
        except Exception as exc:  # per-target faults are caught further in
            return [self._internal_error(target, exc, 1) for target in targets]

    def _internal_error(self, target: Target, exc: Exception, attempts: int) -> TargetResult:
        what = f"{target.region_id}/{target.image_id}"
        log.error("internal error while crawling %s", what, exc_info=exc)
        message = f"{what}: internal error (a bug, please report): {type(exc).__name__}: {exc}"
        return TargetResult(
            target, Outcome.FAILED, attempts, self._pacing.utc_now(),
            error_status="INTERNAL_ERROR", error_message=_shorten(message),
        )  # fmt: skip

    async def _crawl(
        self, lane: Lane, target: Target, *, earlier_attempts: int = 0
    ) -> TargetResult:
        attempted = await self._retrier.call(lambda: self._attempt(lane, target))
        attempts = earlier_attempts + attempted.attempts
        response = attempted.value
        if isinstance(response, KnownAnswer):
            return self._unchanged(target, response, attempts)
        if response is not None:
            return self._fetched(
                target, response.image, attempts, response.request_id, response.answer_digest
            )
        assert attempted.error is not None
        return self._unfetched(target, attempted.error, attempts)

    async def _crawl_batch(self, lane: Lane, targets: list[Target]) -> list[TargetResult]:
        """One describeImages call for up to 100 targets of a region.

        An id absent from a successful answer is confirmed with its own describeImage before it
        is called missing, so `missing` means exactly what it means in the single strategy.
        """
        ids = [target.image_id for target in targets]
        attempted = await self._retrier.call(lambda: self._attempt_batch(lane, ids))
        page = attempted.value
        if page is None:
            assert attempted.error is not None
            return await self._batch_failed(lane, targets, attempted.error, attempted.attempts)
        found = _requested_images(lane.region_id, ids, page)
        results = []
        for target in targets:
            image = found.get(target.image_id)
            if image is None:
                results.append(
                    await self._crawl_safely(lane, target, earlier_attempts=attempted.attempts)
                )
            else:
                results.append(self._fetched(target, image, attempted.attempts, page.request_id))
        return results

    async def _batch_failed(
        self, lane: Lane, targets: list[Target], error: ApiError, attempts: int
    ) -> list[TargetResult]:
        if isinstance(error, TransientApiError):  # retries exhausted: as in the single strategy
            return [self._unfetched(target, error, attempts) for target in targets]
        # A permanent refusal of the batch (a 400 or 414), or an answer unusable as a whole, says
        # nothing about each image: one poisoned entry must not fail 99 healthy ids.
        log.warning("describeImages gave no usable answer (%s); asking image by image", error)
        results = []
        for target in targets:
            self.stats.retries += 1
            results.append(await self._crawl_safely(lane, target, earlier_attempts=attempts))
        return results

    async def _attempt(self, lane: Lane, target: Target) -> ImageResponse | KnownAnswer:
        digest = target.answer_digest
        if digest is None:  # nothing stored to recognise (and an API without digests works)
            return await self._send(
                lane, lambda: self._api.describe_image(target.region_id, target.image_id)
            )
        return await self._send(
            lane,
            lambda: self._api.describe_image(
                target.region_id, target.image_id, known_digest=digest
            ),
        )

    async def _attempt_batch(self, lane: Lane, ids: list[str]) -> ImagesPage:
        # pageSize is always the maximum: the API pages an ids query too (default 20).
        try:
            return await self._send(
                lane,
                lambda: self._api.describe_images(lane.region_id, ids=ids, page_size=BATCH_MAX_IDS),
            )
        except BadBodyError as error:
            # Asking the same batch again would likely get the same poisoned answer.
            raise _UnusableBatch(
                error.message, http_status=error.http_status, error_status=error.error_status,
                request_id=error.request_id, remaining_minute=error.remaining_minute,
            ) from error  # fmt: skip

    async def _send(self, lane: Lane, call: Callable[[], Awaitable[AnswerT]]) -> AnswerT:
        """One request under every limit: the first-answer gate, key budget, rate cap, region."""
        await self._wait_for_first_answer()
        await self._wait_for_key_hold()
        await self._budget.acquire()
        await self._bucket.acquire()
        await lane.limit.acquire()
        self.stats.requests += 1
        congested = False
        try:
            answer = await call()
        except ApiError as error:
            congested = isinstance(error, RateLimitedError) or error.http_status == 503
            self._budget.observe(error.remaining_minute)
            if isinstance(error, AuthError):
                self._abort(error)
            self._watch_endpoint(error)
            if not isinstance(error, AuthError):
                await self._share_key_hold()
            raise
        finally:
            lane.limit.release(congested=congested)
            self._idle_workers.wake()
            self._first_answer.set()
        self._answered = True
        self._budget.observe(answer.remaining_minute)
        await self._share_key_hold()
        return answer

    async def _wait_for_key_hold(self) -> None:
        """Hold while another process crawling with this key found its minute spent."""
        if self._key_hold is None:
            return
        while (wait_s := await self._key_hold.wait_s()) > 0:
            await self._pacing.sleep(wait_s)

    async def _share_key_hold(self) -> None:
        """Tell the other processes on this key when this one found its minute spent."""
        hold_s = self._budget.held_for_s
        if self._key_hold is None or hold_s <= 0:
            return
        until = self._pacing.clock() + hold_s
        if until > self._key_held_until:  # once per new hold, not once per answer
            self._key_held_until = until
            await self._key_hold.hold(hold_s)

    def _watch_endpoint(self, error: ApiError) -> None:
        """Stop the run when the endpoint has given nothing but connection failures."""
        if error.http_status is not None:
            self._answered = True
        if self._answered or error.error_status != "CONNECTION_ERROR":
            return  # a timeout is no answer either, but a slow server is not a dead one
        self._unreachable_count += 1
        if self._unreachable_first is None:
            self._unreachable_first = error
        if self._unreachable_count >= self._unreachable_after:
            first = self._unreachable_first.message
            self._abort(EndpointUnreachableError(f"endpoint unreachable: {first}"))

    async def _wait_for_first_answer(self) -> None:
        """The run's first request goes alone; the rest wait for its answer.

        A wrong secret or endpoint then costs one request instead of one per worker.
        """
        if self._first_answer.is_set():
            return
        if self._first_sent:
            await self._first_answer.wait()
        self._first_sent = True

    def _unchanged(self, target: Target, answer: KnownAnswer, attempts: int) -> TargetResult:
        """The answer is the one the image's stored rows were made from: nothing to check."""
        rows = UnchangedAnswer(
            target.region_id, target.image_id, answer.digest, answer.body, answer.parse,
            self._normalise,
        )  # fmt: skip
        return TargetResult(
            target, Outcome.FETCHED, attempts, self._pacing.utc_now(), http_status=200,
            request_id=answer.request_id, rows=rows, answer_digest=answer.digest,
        )  # fmt: skip

    def _fetched(
        self,
        target: Target,
        image: JsonObject,
        attempts: int,
        request_id: str | None,
        answer_digest: bytes | None = None,
    ) -> TargetResult:
        now = self._pacing.utc_now()
        answered_id = image.get("imageId")
        if answered_id != target.image_id:
            # Storing it under either id would overwrite or misfile an image: neither is touched.
            shown = (
                repr(answered_id) if isinstance(answered_id, str) else type(answered_id).__name__
            )
            message = (
                f"{target.region_id}/{target.image_id}: the answer is for image "
                f"{_shorten(shown, 80)}, not the one asked for"
            )
            return TargetResult(
                target, Outcome.FAILED, attempts, now, http_status=200,
                error_status="ID_MISMATCH", error_message=message, request_id=request_id,
            )  # fmt: skip
        try:
            rows = self._normalise(target.region_id, image)
        except NormaliseError as error:
            return TargetResult(
                target, Outcome.FAILED, attempts, now, http_status=200,
                error_status="NORMALISE_ERROR", error_message=str(error), request_id=request_id,
            )  # fmt: skip
        except Exception as exc:  # a normaliser bug stays with its target
            return self._internal_error(target, exc, attempts)
        return TargetResult(
            target, Outcome.FETCHED, attempts, now, http_status=200, request_id=request_id,
            rows=rows, answer_digest=answer_digest,
        )  # fmt: skip

    def _unfetched(self, target: Target, error: ApiError, attempts: int) -> TargetResult:
        outcome = Outcome.MISSING if isinstance(error, ImageNotFoundError) else Outcome.FAILED
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s/%s %s: %s", target.region_id, target.image_id, outcome, error)
        return TargetResult(
            target, outcome, attempts, self._pacing.utc_now(),
            http_status=error.http_status, error_status=error.error_status,
            error_message=error.message, request_id=error.request_id,
        )  # fmt: skip

    def _abort(self, error: CrawlerError) -> None:
        if self._fatal is None:
            self._fatal = error
            log.error("stopping the run: %s", error)
        self.stop()

    async def _guard(self, loop: Awaitable[None], name: str) -> None:
        """Runs the feeder or writer; if it fails in any way, the run stops rather than hangs."""
        try:
            await loop
        except CrawlerError as error:
            self._abort(error)
        except Exception as exc:  # a bug here must end the run, not hang it
            log.error("the %s failed", name, exc_info=exc)
            detail = _shorten(f"{type(exc).__name__}: {exc}")
            self._abort(
                InternalError(f"internal error in the {name} (a bug, please report): {detail}")
            )

    def _on_retry(self, error: ApiError, attempt: int, wait_s: float) -> None:
        self.stats.retries += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("attempt %d failed (%s), retrying in %.2f s", attempt, error, wait_s)

    async def _write_loop(self, run_id: int) -> None:
        """The single writer: batches whatever results have arrived into one transaction."""
        finished = False
        last_size = 0
        while not finished:
            batch: list[TargetResult] = []
            item = await self._results.get()
            if item is not None and last_size < WRITE_GATHER_BELOW:
                await asyncio.sleep(WRITE_GATHER_S)
            while item is not None:
                batch.append(item)
                if len(batch) >= WRITE_BATCH_MAX or self._results.empty():
                    break
                item = self._results.get_nowait()
            finished = item is None
            last_size = len(batch)
            if batch:
                await self._store.write_results(run_id, batch)
                if any(lane.after_writes for lane in self._lanes):
                    self._feeder_wanted.set()  # a region may be done now: no need to wait


def _requested_images(
    region_id: str, ids: Sequence[str], page: ImagesPage
) -> dict[str, JsonObject]:
    """The page's entries by id, for the ids asked for only.

    An entry for an id not asked for (or with a non-string imageId) is ignored and counted in the
    log; an id answered twice is left out, so that its own describeImage settles it.
    """
    requested = set(ids)
    found: dict[str, JsonObject] = {}
    repeated: set[str] = set()
    ignored = 0
    for image in page.images:
        image_id = image.get("imageId")
        if not isinstance(image_id, str) or image_id not in requested:
            ignored += 1
        elif image_id in found:
            repeated.add(image_id)
        else:
            found[image_id] = image
    for image_id in repeated:
        del found[image_id]
    if ignored or repeated:
        log.warning(
            "describeImages %s: ignored %d entries for ids not asked for and %d ids answered "
            "twice (of %d asked for)", region_id, ignored, len(repeated), len(ids),
        )  # fmt: skip
    return found


def _shorten(text: str, limit: int = _MESSAGE_MAX_CHARS) -> str:
    """A message made fit to store: short, and valid UTF-8 whatever an exception carried."""
    text = scrub_text(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _raise_unexpected(outcomes: Sequence[object]) -> None:
    """Re-raise the first worker exception that is not a cancellation (a bug, not an outcome)."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome
