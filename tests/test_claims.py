"""Claims, leases, fencing and the shared rate budget on a real PostgreSQL (crawler.claims,
crawler.budget), driven directly: two `Claims` on one run stand for two worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from crawler.budget import READ_HOLD_SQL, SharedHold, SharedRate
from crawler.claims import CLAIM_SQL, OWN_WRITES_POLL_S, POLL_S, ClaimFeed, Claims
from crawler.errors import ImageNotFoundError
from crawler.models import Outcome, Target, TargetResult
from crawler.scheduler import Scheduler, SchedulerConfig
from crawler.store import Store

REGION = "cn-north-1"


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(postgres_url)
    try:
        yield opened
    finally:
        await opened.close()


async def new_run(store: Store, count: int) -> int:
    targets = [Target(REGION, f"img-{n:04d}") for n in range(count)]
    return await store.create_run(targets, strategy="single")


async def claim(store: Store, claims: Claims, limit: int) -> list[Target]:
    async with store.engine.begin() as conn:
        return await claims.claim(conn, REGION, limit)


def failed(target: Target) -> TargetResult:
    return TargetResult(target, Outcome.FAILED, 1, datetime.now(UTC), error_status="TEST")


async def complete(store: Store, run_id: int, claims: Claims, targets: list[Target]) -> int:
    results = [failed(target) for target in targets]
    written = await store.write_results(run_id, results, fence=claims.fence_results)
    claims.settle(results, written)
    return written


async def test_two_workers_claim_disjoint_targets(store: Store) -> None:
    run_id = await new_run(store, 8)
    first, second = Claims(run_id, lease_s=30), Claims(run_id, lease_s=30)
    mine, theirs = await claim(store, first, 5), await claim(store, second, 5)
    assert len(mine) == 5 and len(theirs) == 3
    assert not set(mine) & set(theirs)
    assert await claim(store, second, 5) == []  # everything is leased


async def test_a_lapsed_lease_is_taken_over_and_the_late_result_refused(store: Store) -> None:
    run_id = await new_run(store, 3)
    slow, fast = Claims(run_id, lease_s=1), Claims(run_id, lease_s=30)
    taken = await claim(store, slow, 3)
    await asyncio.sleep(1.2)  # past the lease, unrenewed
    again = await claim(store, fast, 3)
    assert again == taken and fast.reclaimed == 3
    assert await complete(store, run_id, slow, taken) == 0  # the zombie's: refused
    assert slow.refused == 3
    assert await complete(store, run_id, fast, again) == 3
    assert (await store.pending_counts(run_id)) == {}


async def test_a_late_refusal_keeps_the_workers_newer_claim_of_the_same_target(
    store: Store,
) -> None:
    """A paused worker's lease lapses, another worker takes the target and hands it back, the
    first claims it again; its late result (old token) is refused, and the newer claim stays
    held until its own result is written: the run can finish."""
    run_id = await new_run(store, 1)
    paused, other = Claims(run_id, lease_s=1), Claims(run_id, lease_s=30)
    (target,) = await claim(store, paused, 1)
    late = [failed(target)]
    await asyncio.sleep(1.2)
    assert await claim(store, other, 1) == [target]
    async with store.engine.begin() as conn:
        assert await other.release(conn) == 1
    async with store.engine.begin() as conn:
        kept = await paused.fence_results(conn, late)  # fenced with token 1 ...
    assert await claim(store, paused, 1) == [target]  # ... while token 3 is claimed
    paused.settle(late, len(kept))
    assert kept == [] and paused.refused == 1
    assert paused.held == 1 and paused.holds_in(REGION)
    assert await complete(store, run_id, paused, [target]) == 1
    assert paused.held == 0 and (await store.pending_counts(run_id)) == {}


async def test_renewal_keeps_a_lease_and_release_frees_it_at_once(store: Store) -> None:
    run_id = await new_run(store, 2)
    holder, other = Claims(run_id, lease_s=1), Claims(run_id, lease_s=30)
    taken = await claim(store, holder, 2)
    for _ in range(3):
        await asyncio.sleep(0.4)
        async with store.engine.begin() as conn:
            assert await holder.renew(conn) == 2
    assert await claim(store, other, 2) == []  # 1.2 s later, still held
    async with store.engine.begin() as conn:
        assert await holder.release(conn) == 2
    assert await claim(store, other, 2) == taken


async def test_renewal_skips_what_the_writer_is_completing_instead_of_waiting(
    store: Store,
) -> None:
    """The writer's transaction has fenced one target (its row locked until COMMIT): the
    renewal, on another connection, renews the other lease at once rather than queueing behind
    it (waiting there, while the fence waited for the renewal's locks, was a deadlock)."""
    run_id = await new_run(store, 2)
    holder = Claims(run_id, lease_s=30)
    first, _ = await claim(store, holder, 2)
    async with store.engine.begin() as writer:
        assert await holder.fence_results(writer, [failed(first)])  # row locked, uncommitted

        async def renew() -> int:
            async with store.engine.begin() as conn:
                return await holder.renew(conn)

        assert await asyncio.wait_for(renew(), timeout=10) == 1


async def test_a_fence_behind_a_renewal_accepts_the_renewed_lease(store: Store) -> None:
    """A renewal holds the row locks of this worker's leases (uncommitted) while the writer
    fences them: the fence waits, then ends the leases as the renewal left them (the rows'
    newer versions), refusing none of them."""
    run_id = await new_run(store, 3)
    holder = Claims(run_id, lease_s=30)
    taken = await claim(store, holder, 3)
    results = [failed(target) for target in taken]
    async with store.engine.begin() as renewal:
        assert await holder.renew(renewal) == 3  # rows locked and updated, not committed

        async def fence() -> int:
            written = await store.write_results(run_id, results, fence=holder.fence_results)
            holder.settle(results, written)
            return written

        fencing = asyncio.create_task(fence())
        await asyncio.sleep(0.5)
        assert not fencing.done()  # waiting for the renewal's row locks
    assert await asyncio.wait_for(fencing, timeout=10) == 3
    assert holder.refused == 0 and holder.held == 0
    assert (await store.pending_counts(run_id)) == {}


async def test_a_fence_accepts_only_current_leases_of_its_own(store: Store) -> None:
    """Of one batch: a target claimed by this worker (accepted), one of another worker, one
    whose result this worker wrote already, one it never claimed; only the first is written."""
    run_id = await new_run(store, 4)
    mine, other = Claims(run_id, lease_s=30), Claims(run_id, lease_s=30)
    first, done = await claim(store, mine, 2)
    (theirs,) = await claim(store, other, 1)
    assert await complete(store, run_id, mine, [done]) == 1
    mine._tokens[done] = 1  # as if still held: its lease has ended all the same
    mine._tokens[theirs] = 1  # the same token as the other worker's claim
    stranger = Target(REGION, "img-0003")  # never claimed
    assert await complete(store, run_id, mine, [first, theirs, done, stranger]) == 1
    assert mine.refused == 3
    assert await complete(store, run_id, other, [theirs]) == 1


async def test_the_feed_waits_for_other_workers_leases_then_reports_the_region_done(
    store: Store,
) -> None:
    run_id = await new_run(store, 4)
    other = Claims(run_id, lease_s=30)
    held = await claim(store, other, 4)
    feed = ClaimFeed(store.engine, Claims(run_id, lease_s=30), capacity=4)
    page = await feed.next_page(run_id, REGION, after_image_id=None, limit=512)
    assert page.targets == [] and not page.exhausted and page.retry_in_s is not None
    await complete(store, run_id, other, held)
    page = await feed.next_page(run_id, REGION, after_image_id=None, limit=512)
    assert page.targets == [] and page.exhausted


async def test_a_region_left_with_only_this_workers_writes_is_looked_at_again_soon(
    store: Store,
) -> None:
    """The worker's own results are the last of the region, crawled and not yet written: the
    feed asks again as each write ends, or after OWN_WRITES_POLL_S, not POLL_S, and the region
    is done once they are."""
    run_id = await new_run(store, 3)
    mine = Claims(run_id, lease_s=30)
    feed = ClaimFeed(store.engine, mine, capacity=3)
    page = await feed.next_page(run_id, REGION, after_image_id=None, limit=512)
    assert len(page.targets) == 3
    for target in page.targets:
        feed.crawled(failed(target))
    last = page.targets[-1].image_id
    waiting = await feed.next_page(run_id, REGION, after_image_id=last, limit=512)
    assert waiting.targets == [] and not waiting.exhausted
    assert waiting.retry_in_s == OWN_WRITES_POLL_S < POLL_S and waiting.after_writes
    await complete(store, run_id, mine, page.targets)
    done = await feed.next_page(run_id, REGION, after_image_id=last, limit=512)
    assert done.targets == [] and done.exhausted


async def test_a_claim_takes_one_regions_share_and_leaves_the_rest_to_the_others(
    store: Store,
) -> None:
    """With `per_region_concurrency` under the concurrency one region cannot use every slot: the
    first region's claim takes its share only, and the next region gets the rest at once (the
    first region took the whole capacity, so one region at a time was crawled)."""
    regions = ("cn-east-1", "cn-north-1")
    run_id = await store.create_run(
        [Target(region, f"img-{n:04d}") for region in regions for n in range(10)],
        strategy="single",
    )
    mine = Claims(run_id, lease_s=30)
    feed = ClaimFeed(store.engine, mine, capacity=8, region_capacity=4)
    east = await feed.next_page(run_id, regions[0], after_image_id=None, limit=512)
    north = await feed.next_page(run_id, regions[1], after_image_id=None, limit=512)
    assert [len(east.targets), len(north.targets)] == [4, 4]
    assert mine.in_flight_in(regions[0]) == mine.in_flight_in(regions[1]) == 4
    cursor = east.targets[-1].image_id
    feed.crawled(failed(east.targets[0]))  # 1 of the region's 4 free: under half, no claim
    page = await feed.next_page(run_id, regions[0], after_image_id=cursor, limit=512)
    assert page.targets == [] and page.retry_in_s is not None
    feed.crawled(failed(east.targets[1]))  # half its share free: claimed again
    page = await feed.next_page(run_id, regions[0], after_image_id=cursor, limit=512)
    assert [target.image_id for target in page.targets] == ["img-0004", "img-0005"]
    assert mine.in_flight == 8 and mine.in_flight_in(regions[0]) == 4


class GatedApi:
    """describeImage that answers only once `slots` requests are in flight at once (after the
    run's first request, which goes alone): a worker that cannot fill its slots times out."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.in_flight = 0
        self.first = True
        self.gate = asyncio.Event()
        self.regions_at_gate: set[str] = set()

    async def describe_image(self, region_id: str, image_id: str) -> Any:
        self.in_flight += 1
        try:
            if not self.first and not self.gate.is_set():
                self.regions_at_gate.add(region_id)
                if self.in_flight >= self.slots:
                    self.gate.set()
                await asyncio.wait_for(self.gate.wait(), timeout=20)
            self.first = False
            raise ImageNotFoundError("no such image", http_status=404, error_status="NOT_FOUND")
        finally:
            self.in_flight -= 1

    async def describe_images(self, region_id: str, *, ids: Any, page_size: int) -> Any:
        raise AssertionError("the single strategy only")


async def test_a_worker_fills_its_slots_from_several_regions_at_once(store: Store) -> None:
    """Concurrency 4, two regions, `per_region_concurrency` 2, claims 8 ahead as `crawl` makes
    them: 4 requests are in flight at once, 2 per region (before the per-region share it was
    at most 2, one region at a time, and this test waited out the API's 20 s gate)."""
    regions = ("cn-east-1", "cn-north-1")
    run_id = await store.create_run(
        [Target(region, f"img-{n:04d}") for region in regions for n in range(60)],
        strategy="single",
    )
    claims = Claims(run_id, lease_s=30)
    feed = ClaimFeed(store.engine, claims, capacity=8 * 4, region_capacity=8 * 2)

    class Fenced:
        async def pending_targets(self, *args: Any, **kwargs: Any) -> list[Target]:
            raise AssertionError("a shared run's targets come from claims")

        async def write_results(self, run_id: int, results: Any) -> int:
            written = await store.write_results(run_id, results, fence=claims.fence_results)
            claims.settle(results, written)
            return written

    api = GatedApi(slots=4)
    config = SchedulerConfig(concurrency=4, per_region_concurrency=2)
    scheduler = Scheduler(config, api, Fenced(), lambda *_: None, feed=feed)  # type: ignore[arg-type]
    stats = await asyncio.wait_for(scheduler.run(run_id, dict.fromkeys(regions, 60)), 60)
    assert api.gate.is_set() and api.regions_at_gate == set(regions)
    assert stats.missing == 120 and stats.failed == 0
    assert (await store.pending_counts(run_id)) == {}


async def test_hosts_sharing_a_key_are_spaced_by_one_schedule(store: Store) -> None:
    waits: list[float] = []

    async def record(delay_s: float) -> None:
        waits.append(delay_s)  # measured, not slept: the schedule lives in the database

    hosts = [
        SharedRate(store.engine, "AK-SHARED", 10.0, sleep=record),
        SharedRate(store.engine, "AK-SHARED", 10.0, sleep=record),
    ]
    for turn in range(20):
        await hosts[turn % 2].acquire()
    # 20 sends at 10/s from two hosts: one schedule 0.1 s apart, ~1.9 s for the last one.
    assert len(waits) >= 18
    assert 1.6 <= max(waits) <= 2.1
    alone = SharedRate(store.engine, "AK-OTHER", 10.0, sleep=record)
    waits.clear()
    await alone.acquire()
    assert waits == []  # another key has a budget of its own


async def test_a_spent_minute_seen_by_one_host_holds_the_others(store: Store) -> None:
    seen, other = SharedHold(store.engine, "AK"), SharedHold(store.engine, "AK")
    assert await other.wait_s() == 0
    await seen.hold(5.0)
    other_fresh = SharedHold(store.engine, "AK")
    assert 4.0 <= await other_fresh.wait_s() <= 5.0
    row = await store.engine.connect()
    try:
        keys = (await row.exec_driver_sql("SELECT key_id FROM rate_budgets")).scalars().all()
    finally:
        await row.close()
    assert keys and all("AK" not in key for key in keys)  # a hash, never the key


# --- a worker whose database session the server ends under it ----------------------------------


def end_session_at(engine: AsyncEngine, url: str, sql: str, *, before: bool) -> list[int]:
    """Have the server end the session that runs `sql`, just before or just after it runs,
    the first time (as a take-over's pg_terminate_backend or the idle-in-transaction timeout
    ends a paused worker's session): the ended backends' pids, filled in as it happens."""
    ended: list[int] = []
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def end(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement != sql or ended:
            return
        pid = conn.connection.driver_connection.info.backend_pid
        with admin.connect() as other:  # waits (up to 10 s) until that backend is gone
            assert other.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 10000)").scalar()
        ended.append(pid)

    moment = "before_cursor_execute" if before else "after_cursor_execute"
    event.listen(engine.sync_engine, moment, end)
    return ended


async def test_a_claim_whose_session_the_server_ended_is_made_again_on_a_new_connection(
    store: Store, postgres_url: str
) -> None:
    """The session is ended between the claim and the rest of its transaction: the claim was
    rolled back with it, and the feed claims again on a new connection instead of failing (a
    worker woken from a pause went on or died of exit 3 by where the pause had caught it)."""
    run_id = await new_run(store, 4)
    mine = Claims(run_id, lease_s=30)
    feed = ClaimFeed(store.engine, mine, capacity=8)
    ended = end_session_at(store.engine, postgres_url, CLAIM_SQL, before=False)
    page = await feed.next_page(run_id, REGION, after_image_id=None, limit=512)
    assert len(ended) == 1
    assert page.targets == [Target(REGION, f"img-{n:04d}") for n in range(4)]
    assert mine.in_flight == mine.held == 4
    async with store.engine.connect() as conn:
        rows = await conn.exec_driver_sql("SELECT claims, lease_owner FROM crawl_targets")
        assert sorted(rows.all()) == [(1, mine.owner)] * 4  # the lost claim left nothing
    assert await complete(store, run_id, mine, page.targets) == 4


async def test_a_look_at_the_hold_whose_session_the_server_ended_is_made_again(
    store: Store, postgres_url: str
) -> None:
    seen, other = SharedHold(store.engine, "AK"), SharedHold(store.engine, "AK")
    await seen.hold(5.0)
    ended = end_session_at(store.engine, postgres_url, READ_HOLD_SQL, before=True)
    assert 4.0 <= await other.wait_s() <= 5.0
    assert len(ended) == 1
