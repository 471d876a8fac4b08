"""How a run is closed: its outcome counts, its missing marks behind the mass-deletion guard,
and accepting the marks a `held` run was refused.

Each function works inside the caller's write transaction (`crawler.store.ledger.Store` opens
it and translates library errors), so a run's counts, marks and status change together or not
at all. `now` gives the UTC time for the bookkeeping columns, read when it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.errors import CrawlerError, RunNotFoundError, StoreError
from crawler.models import Outcome, RunStatus
from crawler.store.retention import forget_targets
from crawler.store.summaries import RunSummary
from crawler.store.timestamps import format_utc
from crawler.store.versions import MissingGuard, apply_missing, missing_counts

Clock = Callable[[], datetime]

# Only a run that ended without losing its way marks images missing.
_MARKING_STATUSES = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)


async def close_run(
    conn: AsyncConnection,
    database: str,
    run_id: int,
    status: RunStatus,
    *,
    now: Clock,
    requests: int,
    retries: int,
    message: str | None,
    guard: MissingGuard,
) -> RunSummary:
    """`Store.finish_run`'s work: see there."""
    runs = schema.crawl_runs
    if status in _MARKING_STATUSES:
        status, message = await _mark_missing(conn, run_id, guard, status, message, now)
        await forget_targets(conn, run_id)
    counts = await _outcome_counts(conn, run_id)
    values = {
        "status": str(status),
        "finished_at": format_utc(now()),
        **{str(outcome): counts.get(outcome, 0) for outcome in Outcome},
        # A resumed run adds this session's work to the earlier sessions'.
        "requests": runs.c.requests + requests,
        "retries": runs.c.retries + retries,
        "message": message,
    }
    result = await conn.execute(update(runs).where(runs.c.run_id == run_id).values(values))
    if result.rowcount == 0:
        raise StoreError(f"database {database} has no run {run_id} to finish")
    return await read_run(conn, database, run_id)


async def close_shared_run(
    conn: AsyncConnection,
    database: str,
    run_id: int,
    *,
    now: Clock,
    requests: int,
    retries: int,
    may_finish: bool,
    guard: MissingGuard,
) -> tuple[RunSummary, bool]:
    """`Store.leave_shared_run`'s work: see there."""
    runs = schema.crawl_runs
    locked = select(runs.c.status).where(runs.c.run_id == run_id).with_for_update()
    status = (await conn.execute(locked)).scalar()
    if status is None:
        raise StoreError(f"database {database} has no run {run_id} to finish")
    values: dict[str, Any] = {
        "requests": runs.c.requests + requests,
        "retries": runs.c.retries + retries,
    }
    finishing = (
        may_finish and status == RunStatus.RUNNING and not await _has_open_target(conn, run_id)
    )
    if finishing:
        counts = await _outcome_counts(conn, run_id)
        final = RunStatus.PARTIAL if counts.get(Outcome.FAILED) else RunStatus.SUCCEEDED
        final, message = await _mark_missing(conn, run_id, guard, final, None, now)
        # The run's crawl_targets stay (unlike close_run's): they hold who claimed and
        # completed each target, and how often it was taken over; a late worker's fenced
        # completion finds its token gone either way. Retention drops them.
        values |= {
            "status": str(final),
            "finished_at": format_utc(now()),
            **{str(outcome): counts.get(outcome, 0) for outcome in Outcome},
            "message": message,
        }
    await conn.execute(update(runs).where(runs.c.run_id == run_id).values(values))
    return await read_run(conn, database, run_id), finishing


async def accept_held_run(
    conn: AsyncConnection, database: str, run_id: int, *, now: Clock
) -> tuple[RunSummary, int]:
    """`Store.accept_run`'s work: see there."""
    runs = schema.crawl_runs
    before = await read_run(conn, database, run_id)
    if before.status is not RunStatus.HELD:
        raise CrawlerError(
            f"run {run_id} is {before.status}, not held: it has no missing marks to accept"
        )
    marked = await apply_missing(conn, run_id, format_utc(now()))
    status = RunStatus.PARTIAL if before.failed else RunStatus.SUCCEEDED
    values = {"status": str(status), "message": f"accepted: {marked:,} marked missing"}
    await conn.execute(update(runs).where(runs.c.run_id == run_id).values(values))
    return await read_run(conn, database, run_id), marked


async def read_run(conn: AsyncConnection, database: str, run_id: int) -> RunSummary:
    """The run's `crawl_runs` row.

    Raises:
        RunNotFoundError: there is no such run.
    """
    runs = schema.crawl_runs
    result = await conn.execute(runs.select().where(runs.c.run_id == run_id))
    row = result.mappings().first()
    if row is None:
        raise RunNotFoundError(f"database {database} has no run {run_id}")
    return RunSummary.from_row(row)


async def _mark_missing(
    conn: AsyncConnection,
    run_id: int,
    guard: MissingGuard,
    status: RunStatus,
    message: str | None,
    now: Clock,
) -> tuple[RunStatus, str | None]:
    counts = await missing_counts(conn, run_id)
    if guard.holds(counts.newly_missing, counts.present_before):
        held = guard.held_message(run_id, counts)
        return RunStatus.HELD, held if message is None else f"{message}; {held}"
    await apply_missing(conn, run_id, format_utc(now()))
    return status, message


async def _has_open_target(conn: AsyncConnection, run_id: int) -> bool:
    """Whether a target of the shared run `run_id` is still open: never claimed, or leased.

    A shared run's results are written only by fenced completions, which close the target's
    lease in the same transaction (`crawler.claims`), so "open" is "no result yet". Asked this
    way the partial index `ix_crawl_targets_open` (migration 0003) answers it; the anti-join
    with crawl_results was planned, on a table whose statistics were younger than the run, as a
    scan of the results per target: 1.75 s of a 7 s crawl of 10,000 targets.
    """
    targets = schema.crawl_targets
    statement = (
        select(targets.c.image_id)
        .where(
            targets.c.run_id == run_id,
            or_(targets.c.claims == 0, targets.c.lease_expires_at.is_not(None)),
        )
        .limit(1)
    )
    return (await conn.execute(statement)).first() is not None


async def _outcome_counts(conn: AsyncConnection, run_id: int) -> dict[str, int]:
    results = schema.crawl_results
    statement = (
        select(results.c.outcome, func.count())
        .where(results.c.run_id == run_id)
        .group_by(results.c.outcome)
    )
    return {str(outcome): int(count) for outcome, count in await conn.execute(statement)}
