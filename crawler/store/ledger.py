"""The run ledger: `Store`, what a crawl writes through.

`Store.open` migrates the database and opens it; the store records runs and their targets, hands
out pending targets page by page, has each batch of outcomes written by `crawler.store.writer` in
a single transaction, and closes runs (`crawler.store.closing`). All of it is SQLAlchemy Core;
what is one database's own comes from its `crawler.store.dialects` module.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Select,
    Update,
    and_,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crawler import schema
from crawler.errors import RunNotFoundError, StoreError
from crawler.models import Change, RunStatus, Target, TargetResult
from crawler.store.closing import accept_held_run, close_run, close_shared_run, read_run
from crawler.store.database import _parse_url, _translated, database_name
from crawler.store.dialects import Dialect, dialect_for
from crawler.store.history import change_counts
from crawler.store.migrate import upgrade
from crawler.store.retention import Pruned, prune_runs
from crawler.store.statements import _WriteStatements
from crawler.store.summaries import RunSummary
from crawler.store.timestamps import format_utc, utc_now
from crawler.store.versions import MissingGuard
from crawler.store.writer import _Batch

# Targets inserted per executemany by create_run: bounded memory for any number of targets.
TARGETS_CHUNK = 10_000
# A run that ends with one of these marks its missing images (or is held by the guard).
_DEFAULT_GUARD = MissingGuard()

log = logging.getLogger(__name__)

# Given a write transaction and a batch of results, the results that may be written.
Fence = Callable[[AsyncConnection, Sequence[TargetResult]], Awaitable[Sequence[TargetResult]]]


class Store:
    """The inventory database of one crawl: open with `Store.open`, end with `close`."""

    def __init__(
        self, engine: AsyncEngine, dialect: Dialect, name: str, clock: Callable[[], datetime]
    ) -> None:
        """Use `Store.open`, which migrates the database first."""
        self._engine = engine
        self._dialect = dialect
        self._writer = dialect.writer(engine)
        self._name = name
        self._clock = clock
        self._statements = _WriteStatements.compile(dialect, engine.dialect)

    def __repr__(self) -> str:
        return f"Store({self._name!r})"

    @property
    def engine(self) -> AsyncEngine:
        """The store's engine, for the claims and the shared rate budget of a multi-worker run."""
        return self._engine

    @property
    def shared(self) -> bool:
        """Whether several worker processes may crawl one run here (a server, not a file)."""
        return self._dialect.name != "sqlite"

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], datetime] = utc_now) -> Store:
        """Migrate the database at `url` to the newest schema, then open it.

        Args:
            url: an SQLAlchemy URL such as `sqlite+aiosqlite:///inventory.db`.
            clock: the UTC time for the run bookkeeping columns.

        Raises:
            StoreError: the database cannot be migrated or opened.
        """
        parsed = _parse_url(url)
        name = database_name(parsed)
        dialect = dialect_for(parsed)
        # A brand-new SQLite file gets the head schema from the generated script, without Alembic.
        await asyncio.to_thread(upgrade, url, load_schema=True)
        with _translated(name, "open the store"):
            engine = dialect.create_engine(parsed)
            try:
                async with engine.connect() as conn:  # fail here, not in the first batch
                    await conn.exec_driver_sql("SELECT 1")
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine, dialect, name, clock)

    async def close(self) -> None:
        """Close every connection (on SQLite the WAL is checkpointed as the last one closes)."""
        with _translated(self._name, "close the store"):
            await self._engine.dispose()

    async def create_run(self, targets: Iterable[Target], *, strategy: str) -> int:
        """Record a new run and its targets, streamed in chunks, in one transaction.

        A pair given twice is stored once. If iterating `targets` raises (a bad targets file),
        nothing of the run is left in the database and the error propagates unchanged.

        Returns:
            The new run's id.
        """
        with _translated(self._name, "create a run"):
            async with self._writer.begin() as conn:
                run_id = await self._insert_run(conn, strategy)
                await self._insert_targets(conn, run_id, targets)
                await conn.execute(_count_targets(run_id))
        return run_id

    async def _insert_run(self, conn: AsyncConnection, strategy: str) -> int:
        values = {
            "started_at": format_utc(self._clock()),
            "status": str(RunStatus.RUNNING),
            "strategy": strategy,
        }
        result = await conn.execute(insert(schema.crawl_runs).values(values))
        run_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        assert isinstance(run_id, int)
        return run_id

    async def _insert_targets(
        self, conn: AsyncConnection, run_id: int, targets: Iterable[Target]
    ) -> None:
        statement = self._statements.target_insert
        iterator = iter(targets)
        while chunk := [
            (run_id, target.region_id, target.image_id)
            for target in itertools.islice(iterator, TARGETS_CHUNK)
        ]:
            await statement.run_many(conn, chunk)

    async def latest_unfinished_run(self) -> int | None:
        """The newest run whose status is `running` or `interrupted`, if any."""
        with _translated(self._name, "find an unfinished run"):
            async with self._engine.connect() as conn:
                result = await conn.execute(_latest_unfinished())
                run_id = result.scalar()
        return None if run_id is None else int(run_id)

    async def latest_running_run(self) -> int | None:
        """The newest run whose status is `running`: the one `crawl --join` joins."""
        runs = schema.crawl_runs
        statement = select(func.max(runs.c.run_id)).where(runs.c.status == str(RunStatus.RUNNING))
        with _translated(self._name, "find a running run"):
            async with self._engine.connect() as conn:
                run_id = (await conn.execute(statement)).scalar()
        return None if run_id is None else int(run_id)

    async def run_status(self, run_id: int) -> RunStatus | None:
        """The run's status, None when there is no such run."""
        runs = schema.crawl_runs
        with _translated(self._name, f"read run {run_id}"):
            async with self._engine.connect() as conn:
                status = (
                    await conn.execute(select(runs.c.status).where(runs.c.run_id == run_id))
                ).scalar()
        return None if status is None else RunStatus(status)

    async def leave_shared_run(
        self,
        run_id: int,
        *,
        requests: int,
        retries: int,
        may_finish: bool,
        guard: MissingGuard = _DEFAULT_GUARD,
    ) -> tuple[RunSummary, bool]:
        """One worker of a shared run is done: add its requests and retries, and finish the run
        if it is still `running` and every target has its result (and `may_finish`): with its
        counts and its missing marks behind the mass-deletion `guard`, as `finish_run` does.

        Several workers may get here at once; the run's row is locked first, so exactly one
        of them finds it running and finishes it.

        Returns:
            The run's row afterwards, and whether this call finished the run.
        """
        with _translated(self._name, f"finish run {run_id}"):
            async with self._writer.begin() as conn:
                return await close_shared_run(
                    conn, self._name, run_id, now=self._clock, requests=requests,
                    retries=retries, may_finish=may_finish, guard=guard,
                )  # fmt: skip

    async def reopen_run(self, run_id: int) -> None:
        """Set a run back to `running` for `--resume`, clearing its finish time and message.

        Raises:
            StoreError: there is no such run.
        """
        values = {"status": str(RunStatus.RUNNING), "finished_at": None, "message": None}
        runs = schema.crawl_runs
        with _translated(self._name, f"reopen run {run_id}"):
            async with self._writer.begin() as conn:
                result = await conn.execute(
                    update(runs).where(runs.c.run_id == run_id).values(values)
                )
        if result.rowcount == 0:
            raise RunNotFoundError(f"database {self._name} has no run {run_id} to resume")

    async def pending_counts(self, run_id: int) -> dict[str, int]:
        """Region id to the number of the run's targets that have no result yet."""
        targets = schema.crawl_targets
        statement = (
            select(targets.c.region_id, func.count())
            .where(targets.c.run_id == run_id, _no_result())
            .group_by(targets.c.region_id)
        )
        with _translated(self._name, f"count pending targets of run {run_id}"):
            async with self._engine.connect() as conn:
                rows = await _fetch(conn, statement)
        return {str(region): int(count) for region, count in rows}

    async def pending_targets(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> list[Target]:
        """The next page of the run's targets in `region_id` without a result, by image id.

        Args:
            run_id: the run.
            region_id: the region.
            after_image_id: the last image id of the previous page, None for the first page.
            limit: the page size.
        """
        targets, images = schema.crawl_targets, schema.images
        # With each target the digest of the answer its image's rows were made from, so that
        # the same answer again needs no parsing (`crawler.client.answer_digest`).
        stored = and_(
            images.c.region_id == targets.c.region_id, images.c.image_id == targets.c.image_id
        )
        statement = (
            select(targets.c.image_id, images.c.answer_digest)
            .select_from(targets.outerjoin(images, stored))
            .where(
                targets.c.run_id == run_id,
                targets.c.region_id == region_id,
                targets.c.image_id > (after_image_id or ""),
                _no_result(),
            )
            .order_by(targets.c.image_id)
            .limit(limit)
        )
        with _translated(self._name, f"read pending targets of run {run_id}"):
            async with self._engine.connect() as conn:
                rows = await _fetch(conn, statement)
        return [
            Target(region_id, str(image_id), None if digest is None else bytes(digest))
            for image_id, digest in rows
        ]

    async def write_results(
        self, run_id: int, results: Sequence[TargetResult], *, fence: Fence | None = None
    ) -> int:
        """Write a batch of outcomes in one transaction; returns how many were written.

        `fetched`: the image row is upserted (first_seen_at kept, last_seen_at and last_run_id
        set, missing_since cleared) and its disks, attachments and tags replaced. `missing`:
        missing_since is set where it is not yet; nothing is deleted. `failed`: the image's rows
        are left alone. Every outcome is upserted into crawl_results.

        `fence`, when given, runs first in the same transaction and returns the results that may
        be written (a worker's claims: only those it still holds, `crawler.claims`); the rest are
        dropped, so a result and the end of its claim commit together or not at all.

        Raises:
            StoreError: the batch could not be written; none of it was.
        """
        if not results:
            return 0
        try:
            return await self._write(run_id, results, fence)
        except StoreError as exc:
            if not _disconnected(exc):
                raise
        # The server ended the session (a restart, or a paused worker's idle transaction cut
        # off): nothing of the batch was committed, so it is written again on a new connection.
        # Had the COMMIT itself got through, the fence refuses the repeat; without one the
        # upserts write the same rows.
        log.warning("lost the connection to %s while writing; writing the batch again", self._name)
        return await self._write(run_id, results, fence)

    async def _write(
        self, run_id: int, results: Sequence[TargetResult], fence: Fence | None
    ) -> int:
        with _translated(self._name, f"write {len(results)} results of run {run_id}"):
            async with self._writer.begin() as conn:
                if fence is not None:
                    results = await fence(conn, results)
                await _Batch.build(self._statements, run_id, results).write(conn)
        return len(results)

    async def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        requests: int,
        retries: int,
        message: str | None = None,
        guard: MissingGuard = _DEFAULT_GUARD,
    ) -> RunSummary:
        """Close a run: its status, finish time, outcome counts and request totals.

        A run that ends `succeeded` or `partial` also marks missing the images it newly found
        missing, all at once, unless `guard` holds them back: then it ends `held` instead,
        marks none, and its message says how many and how to apply them.

        Args:
            run_id: the run.
            status: the final status.
            requests: requests sent in this session, added to the run's earlier sessions.
            retries: retries in this session, likewise added.
            message: why the run failed or stopped; never a secret.
            guard: the mass-deletion guard's settings.

        Raises:
            StoreError: there is no such run, or it cannot be written.
        """
        with _translated(self._name, f"finish run {run_id}"):
            async with self._writer.begin() as conn:
                return await close_run(
                    conn, self._name, run_id, status, now=self._clock, requests=requests,
                    retries=retries, message=message, guard=guard,
                )  # fmt: skip

    async def accept_run(self, run_id: int) -> tuple[RunSummary, int]:
        """Apply the missing marks the guard held back for a `held` run, which then ends
        `succeeded` (or `partial`, with failed targets). Images fetched by a later run since
        are not marked.

        Returns:
            The run's new summary and how many images were marked missing.

        Raises:
            CrawlerError: the run is not `held`.
            StoreError: there is no such run, or it cannot be written.
        """
        with _translated(self._name, f"accept run {run_id}"):
            async with self._writer.begin() as conn:
                return await accept_held_run(conn, self._name, run_id, now=self._clock)

    async def prune(self, keep_runs: int, *, vacuum: bool = False) -> Pruned:
        """Delete the `crawl_targets` and `crawl_results` of all but the newest `keep_runs`
        runs (never of an unfinished or held run); `crawl_runs` and the history stay.

        Args:
            keep_runs: how many of the newest runs keep their rows; 0 keeps every run's.
            vacuum: then give the freed space back to the file system.
        """
        with _translated(self._name, "prune old runs"):
            async with self._writer.begin() as conn:
                pruned = await prune_runs(conn, keep_runs)
            if vacuum:
                await self._dialect.vacuum(self._engine)
        return pruned

    async def change_counts(self, run_id: int) -> dict[Change, int]:
        """How many images run `run_id` added, removed, restored and changed (zeros included)."""
        with _translated(self._name, f"count the changes of run {run_id}"):
            async with self._engine.connect() as conn:
                return await change_counts(conn, run_id)

    async def settings(self) -> dict[str, Any]:
        """The connection settings in force, as a store connection sees them (on SQLite the
        PRAGMAs journal_mode, synchronous, foreign_keys, busy_timeout): for diagnostics."""
        with _translated(self._name, "read the connection settings"):
            async with self._engine.connect() as conn:
                return await self._dialect.settings(conn)

    async def run_summary(self, run_id: int) -> RunSummary:
        """The run's `crawl_runs` row.

        Raises:
            StoreError: there is no such run.
        """
        with _translated(self._name, f"read run {run_id}"):
            async with self._engine.connect() as conn:
                return await read_run(conn, self._name, run_id)


def _no_result() -> ColumnElement[bool]:
    targets, results = schema.crawl_targets, schema.crawl_results
    return ~exists().where(
        results.c.run_id == targets.c.run_id,
        results.c.region_id == targets.c.region_id,
        results.c.image_id == targets.c.image_id,
    )


def _disconnected(exc: StoreError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)


def _count_targets(run_id: int) -> Update:
    runs, targets = schema.crawl_runs, schema.crawl_targets
    count = select(func.count()).where(targets.c.run_id == run_id).scalar_subquery()
    return update(runs).where(runs.c.run_id == run_id).values(targets_total=count)


def _latest_unfinished() -> Select[tuple[Any]]:
    runs = schema.crawl_runs
    unfinished = (str(RunStatus.RUNNING), str(RunStatus.INTERRUPTED))
    return select(func.max(runs.c.run_id)).where(runs.c.status.in_(unfinished))


async def _fetch(conn: AsyncConnection, statement: Executable) -> list[tuple[Any, ...]]:
    result = await conn.execute(statement)
    return [tuple(row) for row in result]
