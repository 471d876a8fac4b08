"""Read-only access for `crawler runs`, `sql`, `check`, `tables`, the metrics file and
`--resume --dry-run`: connections on which writes fail."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.errors import QueryError, StoreError
from crawler.models import RunStatus
from crawler.store.database import _FAILURES, _parse_url, _reason, _translated, database_name
from crawler.store.dialects import dialect_for
from crawler.store.summaries import RunSummary
from crawler.store.timestamps import parse_utc


def _readonly_connection(url: str) -> AbstractAsyncContextManager[AsyncConnection]:
    parsed = _parse_url(url)
    return dialect_for(parsed).readonly_connection(parsed)


def _query_error(url: str, database: str, exc: DBAPIError) -> StoreError:
    reason = _reason(exc)
    if dialect_for(_parse_url(url)).is_readonly_violation(exc):
        return QueryError(
            f"crawler sql is read-only: the statement would change {database} ({reason});"
            " only SELECT and other reads are allowed"
        )
    return QueryError(f"query failed on database {database}: {reason}")


async def query_readonly(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one SQL statement over a read-only connection.

    Returns:
        The column names and the rows (both empty for a statement that returns no rows).

    Raises:
        StoreError: the database does not exist, the statement would write (`crawler sql is
            read-only: ...`), or the database rejects it (its message is kept).
    """
    name = database_name(url)
    try:
        async with _readonly_connection(url) as conn:
            result = await conn.exec_driver_sql(sql)
            if not result.returns_rows:
                return [], []
            return list(result.keys()), [tuple(row) for row in result.all()]
    except DBAPIError as exc:
        raise _query_error(url, name, exc) from exc
    except _FAILURES as exc:
        raise StoreError(f"cannot query database {name}: {_reason(exc)}") from exc


async def recent_runs(url: str, *, limit: int) -> list[RunSummary]:
    """The newest `limit` runs, newest first, read over a read-only connection.

    Raises:
        StoreError: the database does not exist or has no crawl_runs table (not migrated).
    """
    name = database_name(url)
    runs = schema.crawl_runs
    statement = select(runs).order_by(runs.c.run_id.desc()).limit(limit)
    with _translated(name, "list runs"):
        async with _readonly_connection(url) as conn:
            result = await conn.execute(statement)
            return [RunSummary.from_row(row) for row in result.mappings().all()]


# --- read-only queries for planning and monitoring (`--resume --dry-run`, metrics, check, tables)

_UNFINISHED = (str(RunStatus.RUNNING), str(RunStatus.INTERRUPTED))


def _database_missing(url: str) -> bool:
    """True for an SQLite file that does not exist yet (a server database is never "missing")."""
    parsed = _parse_url(url)
    return parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file()


async def unfinished_run_pending(url: str, run_id: int | None) -> tuple[int, dict[str, int]] | None:
    """The run `--resume` would finish (RUN_ID if running, interrupted or failed, else the latest
    running or interrupted run) and its pending targets per region; None when there is no such
    run (or no database yet)."""
    if _database_missing(url):
        return None
    runs, targets, results = schema.crawl_runs, schema.crawl_targets, schema.crawl_results
    if run_id is None:
        find = select(func.max(runs.c.run_id)).where(runs.c.status.in_(_UNFINISHED))
    else:
        statuses = (*_UNFINISHED, str(RunStatus.FAILED))
        find = select(runs.c.run_id).where(runs.c.run_id == run_id, runs.c.status.in_(statuses))
    no_result = ~exists().where(
        results.c.run_id == targets.c.run_id,
        results.c.region_id == targets.c.region_id,
        results.c.image_id == targets.c.image_id,
    )
    with _translated(database_name(url), "find an unfinished run"):
        async with _readonly_connection(url) as conn:
            found = (await conn.execute(find)).scalar()
            if found is None:
                return None
            pending = (
                select(targets.c.region_id, func.count())
                .where(targets.c.run_id == found, no_result)
                .group_by(targets.c.region_id)
            )
            rows = (await conn.execute(pending)).all()
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
    with _translated(database_name(url), "read the latest success"):
        async with _readonly_connection(url) as conn:
            success = (await conn.execute(latest)).first()
            present, missing = (await conn.execute(sizes)).one()
    run_id = int(success[0]) if success else None
    finished = parse_utc(str(success[1])) if success and success[1] is not None else None
    return MonitoringFacts(run_id, finished, int(present or 0), int(missing or 0))


def _tables_and_views(connection: Any) -> list[tuple[str, str]]:
    inspector = inspect(connection)
    found = [(name, "table") for name in inspector.get_table_names()]
    found += [(name, "view") for name in inspector.get_view_names()]
    return sorted((name, kind) for name, kind in found if not name.startswith("sqlite_"))


async def table_counts(url: str) -> list[tuple[str, str, int]]:
    """(name, `table` or `view`, rows) of every table and view but SQLite's own, by name."""
    counted: list[tuple[str, str, int]] = []
    with _translated(database_name(url), "count the rows of each table"):
        async with _readonly_connection(url) as conn:
            for table, kind in await conn.run_sync(_tables_and_views):
                quoted = '"' + table.replace('"', '""') + '"'
                rows = (await conn.exec_driver_sql(f"SELECT COUNT(*) FROM {quoted}")).scalar()
                counted.append((table, kind, int(rows or 0)))
    return counted
