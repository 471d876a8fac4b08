"""The fan-out on its own: fairness, limits, retries, stopping, the single writer.

The API and the store are small in-memory stand-ins for the scheduler's own Protocols (the real
client and store are exercised end to end in test_cli.py).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from crawler.errors import (
    AuthError,
    BadBodyError,
    EndpointUnreachableError,
    ImageNotFoundError,
    InternalError,
    PermanentApiError,
    TransientApiError,
)
from crawler.models import (
    ImageResponse,
    ImageRows,
    ImagesPage,
    JsonObject,
    Outcome,
    Target,
    TargetPage,
    TargetResult,
)
from crawler.retry import RetryPolicy
from crawler.scheduler import (
    BATCH_QUERY_BUDGET_BYTES,
    PAGE_SIZE,
    Pacing,
    Scheduler,
    SchedulerConfig,
)


class MemoryStore:
    """The run's targets and results in lists, paged like the real store."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = sorted(set(targets))
        self.results: dict[Target, TargetResult] = {}
        self.batches: list[int] = []
        self.hundred_written = asyncio.Event()

    def pending(self) -> dict[str, int]:
        return dict(Counter(t.region_id for t in self.targets if t not in self.results))

    async def pending_targets(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> list[Target]:
        page = [
            t
            for t in self.targets
            if t.region_id == region_id
            and t not in self.results
            and (after_image_id is None or t.image_id > after_image_id)
        ]
        return page[:limit]

    async def write_results(self, run_id: int, results: Sequence[TargetResult]) -> None:
        self.batches.append(len(results))
        for result in results:
            self.results[result.target] = result
        if len(self.results) >= 100:
            self.hundred_written.set()


class FakeApi:
    """Answers from a script per image id; records concurrency per region and call order.

    Ids in `absent` do not exist: describeImages leaves them out, describeImage says 404.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        script: dict[str, list[Exception]] | None = None,
        absent: frozenset[str] = frozenset(),
    ):
        self.latency_s = latency_s
        self.script = script or {}
        self.absent = absent
        self.batches: list[list[str]] = []
        self.calls: list[Target] = []
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    async def describe_image(
        self, region_id: str, image_id: str, *, known_digest: bytes | None = None
    ) -> ImageResponse:
        self.calls.append(Target(region_id, image_id))
        self.in_flight[region_id] += 1
        self.peak[region_id] = max(self.peak[region_id], self.in_flight[region_id])
        try:
            await asyncio.sleep(self.latency_s)
            errors = self.script.get(image_id)
            if errors:
                raise errors.pop(0)
            if image_id in self.absent:
                raise ImageNotFoundError("no such image", http_status=404, error_status="NOT_FOUND")
            return ImageResponse({"imageId": image_id}, request_id="r" * 32)
        finally:
            self.in_flight[region_id] -= 1

    async def describe_images(
        self, region_id: str, *, ids: Sequence[str], page_size: int
    ) -> ImagesPage:
        assert len(ids) <= page_size == 100
        self.batches.append(list(ids))
        images = [{"imageId": image_id} for image_id in ids if image_id not in self.absent]
        return ImagesPage(images, len(images), request_id="b" * 32)


def normalise(region_id: str, image: JsonObject) -> ImageRows:
    return ImageRows({"region_id": region_id, "image_id": image["imageId"]})


def targets(regions: dict[str, int]) -> list[Target]:
    return [Target(r, f"img-{r[3]}{n:05d}") for r, count in regions.items() for n in range(count)]


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def scheduler(api: FakeApi, store: MemoryStore, **config: object) -> Scheduler:
    pacing = Pacing(sleep=no_sleep, rng=random.Random(0))
    return Scheduler(SchedulerConfig(**config), api, store, normalise, pacing=pacing)  # type: ignore[arg-type]


async def test_every_target_gets_exactly_one_outcome() -> None:
    store = MemoryStore(targets({"cn-north-1": 700, "cn-east-2": 300}))
    api = FakeApi()
    stats = await scheduler(api, store, concurrency=8).run(1, store.pending())
    assert len(store.results) == 1000
    assert stats.fetched == 1000
    assert len(api.calls) == len(set(api.calls)) == 1000


async def test_regions_are_interleaved_so_none_waits_for_another() -> None:
    store = MemoryStore(targets({"cn-north-1": 400, "cn-east-1": 400, "cn-south-1": 400}))
    api = FakeApi()
    await scheduler(api, store, concurrency=3, per_region_concurrency=3).run(1, store.pending())
    first = [t.region_id for t in api.calls[:30]]
    assert Counter(first) == {"cn-north-1": 10, "cn-east-1": 10, "cn-south-1": 10}


async def test_the_per_region_limit_holds_even_with_spare_workers() -> None:
    store = MemoryStore(targets({"cn-north-1": 300, "cn-east-1": 300}))
    api = FakeApi(latency_s=0.001)
    await scheduler(api, store, concurrency=20, per_region_concurrency=4).run(1, store.pending())
    assert api.peak["cn-north-1"] <= 4
    assert api.peak["cn-east-1"] <= 4


async def test_a_slow_region_does_not_starve_a_fast_one() -> None:
    store = MemoryStore(targets({"cn-north-1": 40, "cn-east-1": 400}))

    class SlowNorth(FakeApi):
        async def describe_image(
            self, region_id: str, image_id: str, *, known_digest: bytes | None = None
        ) -> ImageResponse:
            if region_id == "cn-north-1":
                await asyncio.sleep(0.05)
            return await super().describe_image(region_id, image_id)

    api = SlowNorth()
    await scheduler(api, store, concurrency=8, per_region_concurrency=4).run(1, store.pending())
    east_done_at = max(i for i, t in enumerate(api.calls) if t.region_id == "cn-east-1")
    north_done_at = max(i for i, t in enumerate(api.calls) if t.region_id == "cn-north-1")
    assert east_done_at < north_done_at  # the fast region finished while the slow one trickled


async def test_outcomes_follow_the_error_types() -> None:
    store = MemoryStore([Target("cn-north-1", f"img-{c}") for c in "abc"])
    script: dict[str, list[Exception]] = {
        "img-a": [TransientApiError("503", http_status=503)] * 2,
        "img-b": [ImageNotFoundError("gone", http_status=404, error_status="NOT_FOUND")],
        "img-c": [TransientApiError("503", http_status=503, request_id="rid")] * 9,
    }
    stats = await scheduler(FakeApi(script=script), store, retry=RetryPolicy(3, 0.1, 1.0)).run(
        1, store.pending()
    )
    by_id = {t.image_id: r for t, r in store.results.items()}
    assert (by_id["img-a"].outcome, by_id["img-a"].attempts) == (Outcome.FETCHED, 3)
    assert (by_id["img-b"].outcome, by_id["img-b"].error_status) == (Outcome.MISSING, "NOT_FOUND")
    assert (by_id["img-c"].outcome, by_id["img-c"].attempts) == (Outcome.FAILED, 3)
    assert by_id["img-c"].request_id == "rid"
    assert (stats.requests, stats.retries) == (3 + 1 + 3, 2 + 0 + 2)


async def test_an_auth_error_stops_the_run_before_more_requests_go_out() -> None:
    many = targets({"cn-north-1": 5000})
    store = MemoryStore(many)
    script: dict[str, list[Exception]] = {
        t.image_id: [AuthError("rejected", http_status=401)] for t in many
    }
    api = FakeApi(latency_s=0.001, script=script)
    with pytest.raises(AuthError):
        await scheduler(api, store, concurrency=16, per_region_concurrency=16).run(
            1, store.pending()
        )
    assert len(api.calls) <= 16


async def test_stop_abandons_what_is_in_flight_and_keeps_what_was_written() -> None:
    store = MemoryStore(targets({"cn-north-1": 5000}))
    api = FakeApi(latency_s=0.002)
    crawl = scheduler(api, store, concurrency=16)
    task = asyncio.create_task(crawl.run(1, store.pending()))
    await asyncio.wait_for(store.hundred_written.wait(), 10)
    crawl.stop()
    stats = await asyncio.wait_for(task, 5)
    assert 100 <= len(store.results) < 5000
    assert stats.done >= len(store.results)


async def test_results_are_written_in_batches_not_one_by_one() -> None:
    store = MemoryStore(targets({"cn-north-1": 3 * PAGE_SIZE}))
    await scheduler(FakeApi(), store, concurrency=64).run(1, store.pending())
    assert sum(store.batches) == 3 * PAGE_SIZE
    assert max(store.batches) > 1


async def test_a_trickle_of_results_is_gathered_into_fewer_transactions() -> None:
    # One result every ~5 ms: without the writer's gather each would be its own transaction.
    store = MemoryStore(targets({"cn-north-1": 60}))
    await scheduler(FakeApi(latency_s=0.005), store, concurrency=1).run(1, store.pending())
    assert sum(store.batches) == 60
    assert len(store.batches) < 30


class WaitingForWritesFeed:
    """The end of a claim feed: one page of targets; then, while their results are not all
    written, nothing but this process's own writes left (`after_writes`) and a retry an hour
    away; then done."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.pages = 0

    async def next_page(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> TargetPage:
        self.pages += 1
        if self.pages == 1:
            return TargetPage(list(self.store.targets), exhausted=False)
        if len(self.store.results) < len(self.store.targets):
            return TargetPage([], exhausted=False, short=True, retry_in_s=3600, after_writes=True)
        return TargetPage([], exhausted=True, short=True)

    def crawled(self, result: TargetResult) -> None:
        pass


async def test_a_feed_waiting_for_this_processs_writes_is_asked_again_as_one_ends() -> None:
    store = MemoryStore(targets({"cn-north-1": 3}))
    feed = WaitingForWritesFeed(store)
    pacing = Pacing(sleep=no_sleep, rng=random.Random(0))
    crawl = Scheduler(SchedulerConfig(concurrency=4), FakeApi(), store, normalise, pacing=pacing,
                      feed=feed).run(1, store.pending())  # fmt: skip
    await asyncio.wait_for(crawl, 20)  # asked again only after retry_in_s, it would take an hour
    assert len(store.results) == 3 and feed.pages == 3


async def test_batches_hold_100_ids_of_one_region_and_confirm_absent_ones() -> None:
    many = targets({"cn-north-1": 250, "cn-east-1": 130})
    absent = frozenset(t.image_id for t in many[::25])
    store = MemoryStore(many)
    api = FakeApi(absent=absent)
    stats = await scheduler(api, store, strategy="batch").run(1, store.pending())
    assert sorted(len(batch) for batch in api.batches) == [30, 50, 100, 100, 100]
    for batch in api.batches:
        assert len({image_id[4] for image_id in batch}) == 1  # one region per call
    assert {t.image_id for t in api.calls} == absent  # only absent ids were asked one by one
    by_id = {t.image_id: r for t, r in store.results.items()}
    assert all(by_id[i].outcome is Outcome.MISSING for i in absent)
    assert all(by_id[i].attempts == 2 for i in absent)  # the batch, then the confirmation
    assert stats.fetched == 380 - len(absent)
    assert stats.requests == 5 + len(absent)


async def test_a_batch_keeps_its_url_under_the_gateway_limit() -> None:
    long_ids = [Target("cn-north-1", "img-" + f"{n:03d}" + "x" * 61) for n in range(300)]
    store = MemoryStore(long_ids)
    api = FakeApi()
    await scheduler(api, store, strategy="batch").run(1, store.pending())
    for batch in api.batches:
        query = "&".join(f"ids.{n}={image_id}" for n, image_id in enumerate(batch, 1))
        assert len(query) <= BATCH_QUERY_BUDGET_BYTES
    assert max(len(batch) for batch in api.batches) < 100
    assert sum(len(batch) for batch in api.batches) == 300


class BrokenWriterStore(MemoryStore):
    """A store whose writer fails with a bug (not a StoreError) on its first batch."""

    async def write_results(self, run_id: int, results: Sequence[TargetResult]) -> None:
        raise RuntimeError("injected writer fault")


async def test_a_writer_that_dies_ends_the_run_instead_of_hanging_it() -> None:
    # Far more targets than the results queue holds: with the writer dead, workers would block.
    store = BrokenWriterStore(targets({"cn-north-1": 10_000}))
    scheduler = Scheduler(SchedulerConfig(concurrency=8), FakeApi(), store, normalise)
    with pytest.raises(InternalError, match=r"writer.*RuntimeError: injected writer fault"):
        await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    assert scheduler.stats.done < 10_000


async def test_an_exception_in_one_target_stays_with_that_target() -> None:
    store = MemoryStore(targets({"cn-north-1": 300}))
    poisoned = store.targets[7].image_id

    def fragile(region_id: str, image: JsonObject) -> ImageRows:
        if image["imageId"] == poisoned:
            raise KeyError("a bug in the normaliser")
        return normalise(region_id, image)

    api = FakeApi(script={store.targets[9].image_id: [ZeroDivisionError("a bug in the client")]})
    scheduler = Scheduler(SchedulerConfig(concurrency=4), api, store, fragile)
    stats = await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    assert (stats.fetched, stats.failed) == (298, 2)
    failed = {r.target.image_id: r for r in store.results.values() if r.outcome is Outcome.FAILED}
    assert set(failed) == {poisoned, store.targets[9].image_id}
    assert {r.error_status for r in failed.values()} == {"INTERNAL_ERROR"}
    assert "KeyError" in (failed[poisoned].error_message or "")
    assert "ZeroDivisionError" in (failed[store.targets[9].image_id].error_message or "")


class MismatchingApi(FakeApi):
    """describeImage answers for another image; describeImages adds entries nobody asked for."""

    async def describe_image(
        self, region_id: str, image_id: str, *, known_digest: bytes | None = None
    ) -> ImageResponse:
        return ImageResponse({"imageId": "img-someoneelse"}, request_id=None)

    async def describe_images(
        self, region_id: str, *, ids: Sequence[str], page_size: int
    ) -> ImagesPage:
        images: list[JsonObject] = [{"imageId": ["not", "a", "string"]}, {"imageId": "img-x"}]
        images += [{"imageId": image_id} for image_id in ids[1:]]
        return ImagesPage(images, len(images), request_id=None)


@pytest.mark.parametrize("strategy", ["single", "batch"])
async def test_an_answer_for_another_image_is_an_id_mismatch(strategy: str) -> None:
    store = MemoryStore(targets({"cn-north-1": 250}))
    scheduler = Scheduler(
        SchedulerConfig(concurrency=4, strategy=strategy), MismatchingApi(), store, normalise
    )
    stats = await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    failed = [r for r in store.results.values() if r.outcome is Outcome.FAILED]
    # Single: every answer names another image. Batch: the first id of each batch is absent, and
    # its own describeImage names another image; the stray entries are ignored.
    assert len(failed) == (250 if strategy == "single" else 3)
    assert {r.error_status for r in failed} == {"ID_MISMATCH"}
    assert all(r.rows is None for r in failed)
    assert stats.fetched == 250 - len(failed)


async def test_an_unusable_batch_answer_falls_back_to_one_call_per_id() -> None:
    class PoisonedPage(FakeApi):
        async def describe_images(
            self, region_id: str, *, ids: Sequence[str], page_size: int
        ) -> ImagesPage:
            self.batches.append(list(ids))
            raise BadBodyError("images is not a list", http_status=200, error_status="BAD_BODY")

    store = MemoryStore(targets({"cn-north-1": 150}))
    api = PoisonedPage()
    scheduler = Scheduler(SchedulerConfig(concurrency=4, strategy="batch"), api, store, normalise)
    stats = await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    assert stats.fetched == 150
    assert len(api.batches) == 2  # each batch asked once, not retried max_attempts times
    assert len(api.calls) == 150
    assert stats.retries == 150


async def test_consecutive_connection_failures_with_no_answer_stop_the_run() -> None:
    refused = TransientApiError("refused", error_status="CONNECTION_ERROR")
    store = MemoryStore(targets({"cn-north-1": 5000}))
    api = FakeApi(script={t.image_id: [refused] * 10 for t in store.targets})
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    scheduler = Scheduler(
        SchedulerConfig(concurrency=64), api, store, normalise, pacing=Pacing(sleep=no_sleep)
    )
    with pytest.raises(EndpointUnreachableError, match=r"^endpoint unreachable: refused$"):
        await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    assert 64 <= scheduler.stats.requests < 64 + 64 + 1


async def test_connection_failures_after_an_answer_do_not_stop_the_run() -> None:
    refused = TransientApiError("refused", error_status="CONNECTION_ERROR")
    store = MemoryStore(targets({"cn-north-1": 200}))
    script = {t.image_id: [refused] for t in store.targets[1:]}
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.001)
    scheduler = Scheduler(
        SchedulerConfig(concurrency=1, retry=policy), FakeApi(script=script), store, normalise
    )
    stats = await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    assert stats.fetched == 200


async def test_bulk_failures_are_summarised_in_a_warning_at_most_every_30_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]

    class SlowFailures(FakeApi):
        async def describe_image(
            self, region_id: str, image_id: str, *, known_digest: bytes | None = None
        ) -> ImageResponse:
            now[0] += 1.0  # each answer takes a second of the fake clock
            status = "BUSY" if image_id.endswith("0") else "QUOTA_EXCEEDED"
            raise PermanentApiError("refused", http_status=429, error_status=status)

    store = MemoryStore(targets({"cn-north-1": 100}))
    pacing = Pacing(clock=lambda: now[0])
    scheduler = Scheduler(
        SchedulerConfig(concurrency=1), SlowFailures(), store, normalise, pacing=pacing
    )
    with caplog.at_level("WARNING", logger="crawler.scheduler"):
        await asyncio.wait_for(scheduler.run(1, store.pending()), timeout=30)
    warnings = [r.getMessage() for r in caplog.records if "targets failed" in r.getMessage()]
    assert warnings[0] == "1 targets failed since the run began: BUSY 1"
    assert warnings[1] == "30 targets failed in the last 30 s: QUOTA_EXCEEDED 27, BUSY 3"
    assert len(warnings) == 4  # 100 failures over 100 s of the fake clock
