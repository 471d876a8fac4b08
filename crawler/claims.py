"""Claims: several worker processes, on any number of hosts, crawling one run (PostgreSQL).

CONTRACT.md §9. Every process crawling a run on PostgreSQL, the coordinator as well as each
`crawl --join` worker, takes its targets through claims rather than by paging `crawl_targets`:

- A **claim** takes up to N open targets of one region with `FOR UPDATE SKIP LOCKED`, so two
  workers never block on, or take, the same rows. Each claimed row's `claims` counter goes up by
  one: that number is the claim's **fencing token**. The row records the worker
  (`lease_owner`) and when the lease lapses (`lease_expires_at`, the server's clock, so hosts'
  clocks do not matter).
- A worker **renews** all its leases in one statement while it has work in flight.
- A **completion** is accepted only if the row still carries the worker's token and an open lease:
  the fencing UPDATE runs in the same transaction as the inventory rows (see `fence_results`), so
  a result is either written together with the end of its lease or not at all. A worker that was
  paused past its lease (a zombie) finds its token superseded once another worker took the target,
  and its late results are dropped.
- A done target keeps its token and owner and has `lease_expires_at` NULL; a lapsed or released
  lease can be claimed again. Release (on SIGINT/SIGTERM) sets the expiry to `-infinity`.

A target is open when never claimed (`claims = 0`) or leased (`lease_expires_at` set); partial
indexes from migration 0003 keep claims and renewals to the open rows only.

Lessons from job queues built the same way: procrastinate's jobs stayed `doing` forever after a
worker died (#307, #1518) because nothing expired them: here every lease expires by itself.
pgqueuer ran jobs twice when heartbeats were rarer than the timeout (#430, #674): here a lease is
renewed every third of `lease_s`, and even a double claim cannot double a result, because the
completion is fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crawler.errors import StoreError
from crawler.models import Target, TargetPage, TargetResult
from crawler.reconnect import once_more_if_lost

log = logging.getLogger(__name__)

# How often, as a fraction of the lease, a worker with work in flight renews its leases: three
# renewals may fail or be late before a lease lapses.
RENEW_FRACTION = 1 / 3

_OPEN = "(t.claims = 0 OR t.lease_expires_at IS NOT NULL)"
# No anti-join with crawl_results: on PostgreSQL every result is written by a fenced completion,
# which closes the lease in the same transaction, so "open" already means "no result yet". (An
# anti-join here was planned as a scan of the region's results per candidate row while the
# table's statistics were young: 36 ms per claim of 100 at 5,000 results.)
_CLAIMABLE = "(t.claims = 0 OR t.lease_expires_at < clock_timestamp())"

CLAIM_SQL = f"""
WITH picked AS (
    SELECT t.run_id, t.region_id, t.image_id,
           -- the worker whose lease lapsed (not one that handed its claims back: '-infinity')
           CASE WHEN t.lease_expires_at > '-infinity' THEN t.lease_owner END AS lapsed_owner
      FROM crawl_targets AS t
     WHERE t.run_id = %(run_id)s AND t.region_id = %(region_id)s AND t.image_id > %(after)s
       AND {_OPEN} AND {_CLAIMABLE}
     ORDER BY t.image_id
     LIMIT %(limit)s
       FOR UPDATE OF t SKIP LOCKED
)
UPDATE crawl_targets AS t
   SET claims = t.claims + 1,
       lease_owner = %(owner)s,
       lease_expires_at = clock_timestamp() + make_interval(secs => %(lease_s)s)
  FROM picked AS p
 WHERE t.run_id = p.run_id AND t.region_id = p.region_id AND t.image_id = p.image_id
RETURNING t.image_id, t.claims, p.lapsed_owner,
          -- the digest of the answer the image's rows were made from, so that the same answer
          -- again is not parsed (as the store's pages read it: `crawler.client.answer_digest`).
          -- One probe of images' primary key per claimed row, made only for the rows claimed;
          -- with images empty (a first crawl) each probe ends at an empty index's root page.
          (SELECT i.answer_digest FROM images AS i
            WHERE i.region_id = t.region_id AND i.image_id = t.image_id) AS answer_digest
"""

# The database sessions of a worker whose lease lapsed, by the application_name the PostgreSQL
# dialect gives every crawler connection ("crawler pid PID on HOST"; "crawler crawl ..." is a
# coordinator's lock session, which is left alone: the server frees it when its host is gone).
TERMINATE_SQL = """
SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity AS a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
   AND a.application_name = %(application_name)s
"""

# Rows locked by another transaction are skipped, never waited for: the worker's own writer
# fencing them (they are being completed), or another worker taking a lapsed lease over. A plain
# UPDATE waited for the writer's row locks while the writer's fence waited for the renewal's, in
# the other order: a deadlock, which the server broke by failing the writer's batch (exit 3).
RENEW_SQL = """
WITH mine AS (
    SELECT t.run_id, t.region_id, t.image_id
      FROM crawl_targets AS t
     WHERE t.lease_owner = %(owner)s AND t.lease_expires_at IS NOT NULL
       AND t.run_id = %(run_id)s
       FOR UPDATE OF t SKIP LOCKED
)
UPDATE crawl_targets AS t
   SET lease_expires_at = clock_timestamp() + make_interval(secs => %(lease_s)s)
  FROM mine AS m
 WHERE t.run_id = m.run_id AND t.region_id = m.region_id AND t.image_id = m.image_id
"""

RELEASE_SQL = """
UPDATE crawl_targets SET lease_expires_at = '-infinity'
 WHERE lease_owner = %(owner)s AND lease_expires_at IS NOT NULL AND run_id = %(run_id)s
"""

# A completion ends its leases in two statements. The first looks each target up by its primary
# key and locks it if it still carries this worker's token and lease (FOR UPDATE: under READ
# COMMITTED a row changed meanwhile, by a renewal, is checked again as it is now); the second,
# with a snapshot that sees those rows as locked, ends their leases by ctid. As one UPDATE ...
# FROM unnest(...) the planner, on the run's new rows without statistics, hash-joined the batch
# with a bitmap scan of all this worker's entries in `ix_crawl_targets_leased` and of the run's
# in the primary key, dead row versions included (every claim and fence adds one): ~7 ms per
# fence of 150 over a run of 10,000 and ~11 ms over 40,000, the costliest statement of a crawl
# (582 of 2,072 ms of the server's statement time per 10,000 targets, pg_stat_statements); by
# key, 2.2-2.9 ms at either size. (FOR UPDATE also keeps the planner from flattening the LATERAL
# lookup into that join.)
FENCE_LOCK_SQL = """
SELECT k.ctid::text
  FROM unnest(%(regions)s::text[], %(images)s::text[], %(tokens)s::int[])
       AS c(region_id, image_id, token)
 CROSS JOIN LATERAL (
       SELECT x.ctid FROM crawl_targets AS x
        WHERE x.run_id = %(run_id)s AND x.region_id = c.region_id AND x.image_id = c.image_id
          AND x.claims = c.token AND x.lease_owner = %(owner)s AND x.lease_expires_at IS NOT NULL
          FOR UPDATE OF x
 ) AS k
"""
FENCE_SQL = """
UPDATE crawl_targets SET lease_expires_at = NULL WHERE ctid = ANY (%(rows)s::tid[])
RETURNING region_id, image_id
"""

OUTLOOK_SQL = f"""
SELECT count(*) FILTER (WHERE {_CLAIMABLE}),
       count(*) FILTER (WHERE t.lease_expires_at >= clock_timestamp()
                          AND t.lease_owner IS DISTINCT FROM %(owner)s),
       extract(epoch FROM min(t.lease_expires_at) FILTER (
           WHERE t.lease_expires_at >= clock_timestamp()) - clock_timestamp())
  FROM crawl_targets AS t
 WHERE t.run_id = %(run_id)s AND t.region_id = %(region_id)s AND {_OPEN}
"""


def worker_name() -> str:
    """This process as a lease owner: host, pid and a random part (pids repeat across hosts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Outlook:
    """What is left of one region of a run, as another worker sees it.

    Attributes:
        claimable: targets that may be claimed now (never claimed, or their lease lapsed).
        leased_elsewhere: targets under a live lease of another worker.
        next_expiry_s: seconds until the soonest live lease lapses, None without any.
    """

    claimable: int
    leased_elsewhere: int
    next_expiry_s: float | None

    @property
    def finished(self) -> bool:
        """Nothing to claim and nobody else holding anything: this region is done."""
        return self.claimable == 0 and self.leased_elsewhere == 0


class Claims:
    """One worker's claims on one run: the SQL of claiming, renewing, fencing and releasing.

    The token of every target claimed and not yet written is kept here, so `fence_results`
    can check it. `in_flight` counts the claimed targets not yet crawled (queued or being
    requested), which sizes the next claim; results waiting for the writer keep their lease but
    no longer take a slot.
    """

    def __init__(self, run_id: int, *, lease_s: float, owner: str | None = None) -> None:
        self.run_id = run_id
        self.lease_s = lease_s
        self.owner = owner or worker_name()
        self.refused = 0
        self.reclaimed = 0
        self._tokens: dict[Target, int] = {}
        self._in_hand: set[Target] = set()
        # `_in_hand` counted by region, so a claim can be sized to the region's share.
        self._in_region: dict[str, int] = {}
        # The tokens the last completion was fenced with, for `settle`.
        self._fenced: dict[Target, int] = {}
        # Workers whose lapsed leases this one took over, and those whose sessions it ended.
        self.taken_from: set[str] = set()
        self.ended: set[str] = set()

    @property
    def in_flight(self) -> int:
        """Targets claimed by this worker and not yet crawled."""
        return len(self._in_hand)

    def in_flight_in(self, region_id: str) -> int:
        """Targets of `region_id` claimed by this worker and not yet crawled."""
        return self._in_region.get(region_id, 0)

    @property
    def held(self) -> int:
        """Targets claimed by this worker whose results are not yet written (leases to renew)."""
        return len(self._tokens)

    def holds_in(self, region_id: str) -> bool:
        """Whether this worker has a claim in `region_id` whose result is not yet written."""
        return any(target.region_id == region_id for target in self._tokens)

    def crawled(self, target: Target) -> None:
        """`target` has its outcome; its slot is free, its lease lasts until the write."""
        self._hand_back(target)

    def _hand_back(self, target: Target) -> None:
        if target in self._in_hand:
            self._in_hand.remove(target)
            self._in_region[target.region_id] -= 1

    def _params(self, **more: object) -> dict[str, object]:
        return {"run_id": self.run_id, "owner": self.owner, "lease_s": self.lease_s, **more}

    async def claim(
        self, conn: AsyncConnection, region_id: str, limit: int, *, after: str = ""
    ) -> list[Target]:
        """Claim up to `limit` open targets of `region_id` with image ids after `after`, in
        image id order, in the caller's transaction; rows other workers are claiming at the same
        moment are skipped.

        `after` lets a worker go on from where its last claim ended instead of stepping over
        every target done since the run began (their index entries stay until a vacuum);
        whoever finds nothing after it looks again from the start, for lapsed leases.
        """
        return self.keep(region_id, await self.claimed_rows(conn, region_id, limit, after=after))

    async def claimed_rows(
        self, conn: AsyncConnection, region_id: str, limit: int, *, after: str = ""
    ) -> list[Any]:
        """The claim of `claim` without keeping it: its rows for `keep`, once committed (a
        claim whose transaction was lost with its connection was rolled back)."""
        if limit <= 0:
            return []
        result = await conn.exec_driver_sql(
            CLAIM_SQL, self._params(region_id=region_id, limit=limit, after=after)
        )
        return list(result.all())

    def keep(self, region_id: str, rows: Sequence[Any]) -> list[Target]:
        """Hold the claimed `rows` of `region_id`: their tokens, slots and lapsed owners; each
        target carries its image's stored answer digest, as a page of the store's does."""
        claimed = set()
        for image_id, token, previous_owner, digest in rows:
            target = Target(region_id, str(image_id), None if digest is None else bytes(digest))
            self._tokens[target] = int(token)
            if target not in self._in_hand:
                self._in_hand.add(target)
                self._in_region[region_id] = self._in_region.get(region_id, 0) + 1
            if int(token) > 1:
                self.reclaimed += 1
                if previous_owner and previous_owner != self.owner:
                    self.taken_from.add(str(previous_owner))
            claimed.add(target)
        return sorted(claimed)

    async def end_sessions_of_lapsed_owners(self, conn: AsyncConnection) -> int:
        """End the database sessions of the workers whose lapsed leases this one took over.

        A worker paused in the middle of a write (SIGSTOP, a frozen VM) keeps its transaction
        and row locks, and the server's idle_in_transaction_session_timeout does not apply while
        a pipelined statement is still open; the rows it locked (an image, the run's row) would
        stall everyone else. Its claims are gone anyway: ending its sessions rolls its
        transaction back, and when it wakes up its late results are refused.
        """
        ended = 0
        for owner in sorted(self.taken_from - self.ended):
            if owner.count(":") < 2:
                continue  # not a `worker_name()`
            host, pid, _ = owner.rsplit(":", 2)
            name = f"crawler pid {pid} on {host}"[:63]
            result = await conn.exec_driver_sql(TERMINATE_SQL, {"application_name": name})
            ended += int(result.scalar() or 0)
            self.ended.add(owner)
        return ended

    async def outlook(self, conn: AsyncConnection, region_id: str) -> Outlook:
        """What remains of `region_id` for this run, besides this worker's own leases."""
        result = await conn.exec_driver_sql(OUTLOOK_SQL, self._params(region_id=region_id))
        row: Any = result.one()
        expiry = None if row[2] is None else max(0.0, float(row[2]))
        return Outlook(int(row[0]), int(row[1]), expiry)

    async def renew(self, conn: AsyncConnection) -> int:
        """Extend every live lease of this worker by `lease_s`; returns how many. A lease whose
        row another transaction holds locked (this worker's writer completing it) is skipped:
        it is being ended, or is renewed at the next tick, with two thirds of its time left."""
        result = await conn.exec_driver_sql(RENEW_SQL, self._params())
        return int(result.rowcount)

    async def release(self, conn: AsyncConnection) -> int:
        """Hand every unfinished claim back to the pool at once (a clean stop)."""
        result = await conn.exec_driver_sql(RELEASE_SQL, self._params())
        self._tokens.clear()
        self._in_hand.clear()
        self._in_region.clear()
        return int(result.rowcount)

    async def fence_results(
        self, conn: AsyncConnection, results: Sequence[TargetResult]
    ) -> list[TargetResult]:
        """End the leases of `results` that still carry this worker's token, in the caller's
        transaction, and return just those: the rest were taken over and must not be written.

        A result for a target this worker never claimed is refused as well.
        """
        known = [result for result in results if result.target in self._tokens]
        self._fenced = {result.target: self._tokens[result.target] for result in known}
        accepted: set[tuple[str, str]] = set()
        if known:
            params = self._params(
                regions=[result.target.region_id for result in known],
                images=[result.target.image_id for result in known],
                tokens=[self._tokens[result.target] for result in known],
            )
            locked = [row for (row,) in await conn.exec_driver_sql(FENCE_LOCK_SQL, params)]
            rows: list[Any] = []
            if locked:
                ended = await conn.exec_driver_sql(FENCE_SQL, {"rows": locked})
                rows = list(ended.all())
            accepted = {(str(region), str(image)) for region, image in rows}
        kept = [r for r in results if (r.target.region_id, r.target.image_id) in accepted]
        return kept

    def settle(self, results: Sequence[TargetResult], accepted: int) -> None:
        """After the completion's transaction committed: forget the tokens, count refusals.

        Only the claim the completion was fenced with is forgotten: a refused late result's
        target may have been claimed again by this worker meanwhile (another worker took it over,
        then handed it back), and that newer claim is still to be crawled and written. Forgetting
        it too left its lease held and its result refused, so the run could not finish.
        """
        for result in results:
            target = result.target
            used = self._fenced.pop(target, None)
            if used is not None and self._tokens.get(target) == used:
                del self._tokens[target]
                self._hand_back(target)
        refused = len(results) - accepted
        if refused:
            self.refused += refused
            log.warning(
                "%d late results of run %d refused: their targets were taken over by another"
                " worker after this one's lease lapsed",
                refused,
                self.run_id,
            )


# While other workers hold leases of a region and nothing is claimable, look again this often:
# their targets end in a result (the region is done) or their leases lapse (claim them).
POLL_S = 0.5
# While this worker's slots are full, the scheduler asks again after this long (no round trip).
FULL_RETRY_S = 0.05
# While nothing is left in a region but this worker's own results on their way to the database,
# the scheduler asks again as each write ends (`TargetPage.after_writes`), and at the latest
# after this long: the region is done as soon as they are written. With POLL_S here a crawl's
# end waited ~0.5 s after its last write (0.49 s from the last answer to the scheduler's end on
# PostgreSQL, against 0.02-0.04 s on SQLite; benchmarks/loop_waits.py); polling every 50 ms
# alone, 45-90 ms.
OWN_WRITES_POLL_S = 0.05


class ClaimFeed:
    """The scheduler's `TargetFeed` on PostgreSQL: each page is a claim sized to free slots.

    `capacity` is how many claimed, uncrawled targets this worker may hold: a multiple of its
    concurrency (times 100 for the batch strategy, whose claims are whole describeImages batches
    of one region), so the next targets are queued before slots free up. `region_capacity` is
    one region's share of it, the same multiple of `per_region_concurrency`: a region can keep
    no more slots busy than that, so the rest of the capacity is left to the other regions.
    Before it, the first region short of targets took the whole capacity, one region at a time
    was crawled, and with the default `per_region_concurrency = 32` a 64-slot worker had at most
    32 requests in flight (0.57x SQLite at 20 ms, 4 regions; README, PostgreSQL crawl).

    A region's claim is made once at least half of its share is free, so a busy worker claims in
    batches rather than one target per round trip (claims of a quarter of the concurrency left
    workers waiting on the feeder: 641 against 1,119 requests/s at 20 ms and 64 in flight).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        claims: Claims,
        *,
        capacity: int,
        batch_size: int = 1,
        region_capacity: int | None = None,
    ) -> None:
        self._engine = engine
        self._claims = claims
        self._capacity = max(capacity, batch_size)
        share = self._capacity if region_capacity is None else region_capacity
        self._region_capacity = min(self._capacity, max(share, batch_size))
        self._batch_size = batch_size

    def _wanted(self, region_id: str, limit: int) -> int:
        """How many targets of `region_id` to claim now: what fits in this worker's free slots
        and the region's free share, in whole batches; 0 to wait for more to free up."""
        claims = self._claims
        free = min(
            self._capacity - claims.in_flight,
            self._region_capacity - claims.in_flight_in(region_id),
        )
        want = min(limit, free) // self._batch_size * self._batch_size
        threshold = max(self._batch_size, self._region_capacity // 2)
        # Not under the threshold while anything is in hand, in any region: with 4 regions a
        # region with nothing in hand claimed every slot freed elsewhere, one or two targets at a
        # time (861 claims per 10,000 targets instead of ~60).
        if want <= 0 or (want < threshold and claims.in_flight > 0):
            return 0
        return want

    async def next_page(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> TargetPage:
        """Claim what fits; say whether the region is done, or when to look again."""
        assert run_id == self._claims.run_id
        want = self._wanted(region_id, limit)
        if want <= 0:
            return TargetPage([], exhausted=False, retry_in_s=FULL_RETRY_S)
        with translated("claim targets"):
            rows, outlook = await once_more_if_lost(
                lambda: self._claim(region_id, want, after_image_id), "claim targets"
            )
        claimed = self._claims.keep(region_id, rows)
        await self._end_lapsed_sessions()
        if outlook is None:  # all it wanted
            return TargetPage(claimed, exhausted=False, short=False)
        if claimed:
            return TargetPage(claimed, exhausted=False, short=True, retry_in_s=POLL_S)
        if outlook.finished and not self._claims.holds_in(region_id):
            return TargetPage([], exhausted=True, short=True)
        # Nothing to claim, but this worker's own results for the region are not all written:
        # one refused (its lease lapsed and another worker took the target, then gave it back or
        # died) leaves the target open, and with nobody else left this worker must claim it.
        if outlook.finished:  # only this worker's own results are left, and they are being written
            return TargetPage(
                [], exhausted=False, short=True, retry_in_s=OWN_WRITES_POLL_S, after_writes=True
            )
        retry_s = POLL_S
        if outlook.claimable == 0 and outlook.next_expiry_s is not None:
            retry_s = min(POLL_S, outlook.next_expiry_s + 0.01)
        return TargetPage([], exhausted=False, short=True, retry_in_s=retry_s)

    async def _claim(
        self, region_id: str, want: int, after_image_id: str | None
    ) -> tuple[list[Any], Outlook | None]:
        """One claim transaction: the claimed rows, and the region's outlook if they are fewer
        than `want` (None when full). Kept only once committed: see `Claims.claimed_rows`."""
        async with self._engine.begin() as conn:
            rows = await self._claims.claimed_rows(
                conn, region_id, want, after=after_image_id or ""
            )
            if len(rows) < want and after_image_id:  # the rest of the region, from the top
                rows += await self._claims.claimed_rows(conn, region_id, want - len(rows))
            if len(rows) == want:
                return rows, None
            return rows, await self._claims.outlook(conn, region_id)

    async def _end_lapsed_sessions(self) -> None:
        if not self._claims.taken_from - self._claims.ended:
            return
        with translated("end the sessions of workers whose leases lapsed"):
            try:
                async with self._engine.begin() as conn:
                    ended = await self._claims.end_sessions_of_lapsed_owners(conn)
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
                    raise
                raise StoreError(_refused_message(self._engine, exc)) from exc
        if ended:
            log.warning("ended %d database sessions of workers whose leases lapsed", ended)

    def crawled(self, result: TargetResult) -> None:
        """Free the target's slot for the next claim."""
        self._claims.crawled(result.target)


# SQLSTATE insufficient_privilege: pg_terminate_backend on a session of a role this one lacks.
_INSUFFICIENT_PRIVILEGE = "42501"


def _refused_message(engine: AsyncEngine, exc: DBAPIError) -> str:
    """Why ending a lapsed worker's sessions was refused, and what to do about it (README)."""
    role = engine.url.username or "this role"
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return (
        f"cannot end the database sessions of a worker whose leases lapsed: the server refused"
        f" ({reason}). Connect every host as the same database role, or"
        f" GRANT pg_signal_backend TO {role}; the claims this worker took over are handed back"
    )


async def keep_renewed(engine: AsyncEngine, claims: Claims) -> None:
    """Renew this worker's leases every third of `lease_s` while it has any; runs until cancelled.

    A renewal that fails (the database is briefly unreachable) is logged and tried again at the
    next tick: the leases still have two thirds of their time to run.
    """
    interval_s = claims.lease_s * RENEW_FRACTION
    while True:
        await asyncio.sleep(interval_s)
        if claims.held == 0:
            continue
        try:
            async with engine.begin() as conn:
                await claims.renew(conn)
        except _FAILURES as exc:
            log.warning("could not renew the leases of run %d: %s", claims.run_id, exc)


async def release_claims(engine: AsyncEngine, claims: Claims) -> None:
    """Give back what this worker still holds (a clean stop); failures only cost `lease_s`."""
    try:
        async with engine.begin() as conn:
            released = await claims.release(conn)
    except _FAILURES as exc:
        log.warning("could not release the claims of run %d: %s", claims.run_id, exc)
        return
    if released:
        log.info("returned %d claimed targets of run %d to the pool", released, claims.run_id)


_FAILURES = (SQLAlchemyError, OSError)


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Library failures as StoreError (the run ends, exit 3), once, here."""
    try:
        yield
    except _FAILURES as exc:
        raise StoreError(f"cannot {doing}: {exc}") from exc
