"""Retention: old runs lose their `crawl_targets` and `crawl_results`; runs and history stay.

`[retention] keep_runs` is applied at the end of every crawl and by `crawler prune`. A run that is
unfinished (it may be resumed) or held (it may be accepted, which reads its results) keeps its rows
whatever its age.

A run that finished (`succeeded`, `partial` or `held`) has a result for every target, so its
`crawl_results` rows list its targets: its `crawl_targets` rows are dropped then
(`forget_targets`), which keeps about a fifth of a run's rows off the disk for every kept run.
`crawl_targets` holds the targets of runs that can still be resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.models import RunStatus

# Never pruned: a run that may still be resumed, and one whose missing marks may be accepted.
KEPT_STATUSES = (RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.HELD)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune deleted."""

    run_ids: tuple[int, ...]
    targets: int
    results: int


async def forget_targets(conn: AsyncConnection, run_id: int) -> None:
    """Drop a finished run's `crawl_targets`: its `crawl_results` name every one of them."""
    targets = schema.crawl_targets
    await conn.execute(delete(targets).where(targets.c.run_id == run_id))


async def prune_runs(conn: AsyncConnection, keep_runs: int) -> Pruned:
    """Delete the targets and results of every run but the newest `keep_runs` (0: none) and
    those with a status in `KEPT_STATUSES`."""
    if keep_runs <= 0:
        return Pruned((), 0, 0)
    runs, targets, results = schema.crawl_runs, schema.crawl_targets, schema.crawl_results
    newest = select(runs.c.run_id).order_by(runs.c.run_id.desc()).limit(keep_runs)
    candidates = select(runs.c.run_id).where(
        runs.c.run_id.not_in(newest.scalar_subquery()),
        runs.c.status.not_in([str(status) for status in KEPT_STATUSES]),
        or_(
            exists().where(targets.c.run_id == runs.c.run_id),
            exists().where(results.c.run_id == runs.c.run_id),
        ),
    )
    run_ids = tuple(sorted(int(run_id) for run_id in (await conn.execute(candidates)).scalars()))
    if not run_ids:
        return Pruned((), 0, 0)
    gone_targets = await conn.execute(delete(targets).where(targets.c.run_id.in_(run_ids)))
    gone_results = await conn.execute(delete(results).where(results.c.run_id.in_(run_ids)))
    return Pruned(run_ids, int(gone_targets.rowcount), int(gone_results.rowcount))
