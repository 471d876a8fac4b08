"""Read-only queries for planning and monitoring: `--resume --dry-run`, metrics, check, tables.

Each opens a read-only connection (`crawler.store.readers`) and asks through SQLAlchemy Core or
the inspector, so they read any backend the dialects serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, func, inspect, select, table
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.models import RunStatus
from crawler.store.database import _parse_url, _translated, database_name
from crawler.store.dialects import dialect_for
from crawler.store.readers import _readonly_connection
from crawler.store.timestamps import parse_utc

_UNFINISHED = (str(RunStatus.RUNNING), str(RunStatus.INTERRUPTED))


def _database_file_exists(url: str) -> bool:
    """False for an SQLite file not created yet; a server's database is asked instead."""
    parsed = _parse_url(url)
    path = dialect_for(parsed).database_file(parsed)
    if path is None:
        return parsed.get_backend_name() != "sqlite"  # PostgreSQL: see `_has_runs_table`
    return path.is_file()


def _has_runs_table(conn: Connection) -> bool:
    return inspect(conn).has_table("crawl_runs")


async def _fetch(conn: AsyncConnection, statement: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await conn.execute(statement)]


async def unfinished_run_pending(url: str, run_id: int | None) -> tuple[int, dict[str, int]] | None:
    """The run `--resume` would finish (RUN_ID if running, interrupted or failed, else the latest
    running or interrupted run) and its pending targets per region; None when there is no such
    run (or no database yet)."""
    if not _database_file_exists(url):
        return None
    name = database_name(url)
    runs, targets, results = schema.crawl_runs, schema.crawl_targets, schema.crawl_results
    if run_id is None:
        find = select(func.max(runs.c.run_id)).where(runs.c.status.in_(_UNFINISHED))
    else:
        statuses = (*_UNFINISHED, str(RunStatus.FAILED))
        find = select(runs.c.run_id).where(runs.c.run_id == run_id, runs.c.status.in_(statuses))
    with _translated(name, "find an unfinished run"):
        async with _readonly_connection(url) as conn:
            if not await conn.run_sync(_has_runs_table):  # a server database not migrated yet
                return None
            found = (await conn.execute(find)).scalar()
            if found is None:
                return None
            no_result = ~exists().where(
                results.c.run_id == targets.c.run_id,
                results.c.region_id == targets.c.region_id,
                results.c.image_id == targets.c.image_id,
            )
            pending = (
                select(targets.c.region_id, func.count())
                .where(targets.c.run_id == found, no_result)
                .group_by(targets.c.region_id)
            )
            rows = await _fetch(conn, pending)
    return int(found), {str(region): int(count) for region, count in rows}


@dataclass(frozen=True, slots=True)
class MonitoringFacts:
    """What the metrics file and `crawler check` read from the database."""

    last_success_run_id: int | None  # the latest `succeeded` run
    last_success_at: datetime | None  # its finished_at
    images_present: int
    images_missing: int


async def monitoring_facts(url: str) -> MonitoringFacts:
    """The latest success and the inventory's size, over a read-only connection.

    Raises:
        StoreError: the database does not exist or is not migrated.
    """
    name = database_name(url)
    runs, images = schema.crawl_runs, schema.images
    latest = (
        select(runs.c.run_id, runs.c.finished_at)
        .where(runs.c.status == str(RunStatus.SUCCEEDED))
        .order_by(runs.c.run_id.desc())
        .limit(1)
    )
    sizes = select(
        func.count() - func.count(images.c.missing_since), func.count(images.c.missing_since)
    )
    with _translated(name, "read the latest success"):
        async with _readonly_connection(url) as conn:
            successes = await _fetch(conn, latest)
            counts = await _fetch(conn, sizes)
    present, missing = counts[0]
    run_id = int(successes[0][0]) if successes else None
    finished = parse_utc(str(successes[0][1])) if successes else None
    return MonitoringFacts(run_id, finished, int(present or 0), int(missing or 0))


def _tables_and_views(conn: Connection) -> list[tuple[str, str]]:
    inspector = inspect(conn)
    found = [(name, "table") for name in inspector.get_table_names()]
    found += [(name, "view") for name in inspector.get_view_names()]
    return sorted(found)


async def table_counts(url: str) -> list[tuple[str, str, int]]:
    """(name, `table` or `view`, rows) of every table and view but the database's own, by name."""
    name = database_name(url)
    counted: list[tuple[str, str, int]] = []
    with _translated(name, "count the rows of each table"):
        async with _readonly_connection(url) as conn:
            for found, kind in await conn.run_sync(_tables_and_views):
                rows = (await conn.execute(select(func.count()).select_from(table(found)))).scalar()
                counted.append((found, kind, int(rows or 0)))
    return counted
